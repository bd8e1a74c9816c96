"""Logical-axis activation constraints that fail loudly on names missing from the rules, and
dropping the partitioning boxes of parameter trees."""

from typing import Sequence

import flax.linen as nn
import jax
from flax.core import meta


def constrain(x, names: Sequence[str | None]):
    """Constrains `x` to the mesh axes the active rules give its logical `names`.

    A no-op outside a mesh (`jax.set_mesh`); an unknown name raises instead of replicating.
    """
    return nn.with_logical_constraint(
        x, tuple(names), fallback=nn.spmd.RulesFallback.RAISE_ERROR
    )


def strip_partitioning(tree):
    """`tree` with its flax partitioning boxes replaced by their values. Unlike `nn.unbox` this
    applies no sharding constraint, so it is safe on abstract values and outside a trace."""
    is_box = lambda leaf: isinstance(leaf, meta.AxisMetadata)  # noqa: E731
    return jax.tree.map(lambda leaf: leaf.value if is_box(leaf) else leaf, tree, is_leaf=is_box)
