"""Logical-to-mesh axis rules and the shardings of a (boxed) train state."""

from typing import Any, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh

Rules = Sequence[tuple[str, Any]]


def rules_from_config(rules_config) -> tuple[tuple[str, Any], ...]:
    """Config rules are (logical name, mesh axis | tuple of axes | None) pairs."""
    return tuple((str(name), tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules_config)


def logical_names_of(boxed_tree) -> set[str]:
    """Every logical axis name used by the LogicallyPartitioned leaves of a tree."""
    names: set[str] = set()
    leaves = jax.tree.leaves(boxed_tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    for leaf in leaves:
        if isinstance(leaf, nn.LogicallyPartitioned):
            names.update(name for name in leaf.names if name is not None)
    return names


def assert_rules_cover(boxed_tree, rules: Rules) -> None:
    """Raises if a parameter uses a logical axis name the rules do not mention."""
    known = {name for name, _ in rules}
    missing = sorted(logical_names_of(boxed_tree) - known)
    if missing:
        raise ValueError(
            f"sharding rules have no entry for logical axes {missing}; add them to config.sharding_rules"
        )


def assert_divisible(boxed_tree, mesh: Mesh, rules: Rules) -> None:
    """Fails early, naming the parameter and axis, when a sharded dimension does not divide."""
    rule_map = dict(rules)
    flat = jax.tree_util.tree_flatten_with_path(
        boxed_tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )[0]
    for path, leaf in flat:
        if not isinstance(leaf, nn.LogicallyPartitioned):
            continue
        for dim, name in zip(leaf.value.shape, leaf.names):
            axes = rule_map.get(name)
            if axes is None:
                continue
            axes = (axes,) if isinstance(axes, str) else axes
            size = 1
            for axis in axes:
                size *= mesh.shape[axis]
            if dim % size:
                raise ValueError(
                    f"parameter {jax.tree_util.keystr(path, simple=True, separator='/')} has "
                    f"dimension {dim} on logical axis {name!r}, which does not divide mesh axes "
                    f"{axes} of total size {size}"
                )


def mesh_partition_specs(boxed_tree, rules: Rules):
    """Mesh PartitionSpecs of every leaf from its logical axis names; unnamed leaves are replicated."""
    return nn.logical_to_mesh(nn.get_partition_spec(boxed_tree), rules)
