"""Logical-axis activation constraints that fail loudly on names missing from the rules."""

from typing import Sequence

import flax.linen as nn


def constrain(x, names: Sequence[str | None]):
    """Constrains `x` to the mesh axes the active rules give its logical `names`.

    A no-op outside a mesh (`jax.set_mesh`); an unknown name raises instead of replicating.
    """
    return nn.with_logical_constraint(
        x, tuple(names), fallback=nn.spmd.RulesFallback.RAISE_ERROR
    )
