"""Matches an official PyTorch state dict against the parameters a Flax model expects.

Shared by the weight converters: each supplies, per parameter path, the torch key, the torch
shape and the layout conversion; this module pairs them up and names every problem at once.
"""

import dataclasses
from collections.abc import Callable, Mapping

import jax
import numpy as np
from flax import traverse_util

from titok_var.sharding.logical import strip_partitioning


@dataclasses.dataclass
class Match:
    params: dict  # flat {path tuple: float32 array} of the keys that matched
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def nothing_matched(self) -> bool:
        return not self.params and not self.mismatched and bool(self.missing)

    def problems(self, limit: int = 20) -> str:
        return "; ".join(
            describe(kind, items, limit)
            for kind, items in (("missing keys", self.missing), ("unexpected keys", self.unexpected),
                                ("mis-shaped keys", self.mismatched))
            if items
        )

    def nested_params(self) -> dict:
        return traverse_util.unflatten_dict(self.params)


def describe(kind: str, items: list[str], limit: int = 20) -> str:
    more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"{len(items)} {kind}: {', '.join(items[:limit])}{more}"


def match_state_dict(
    state_dict: Mapping[str, np.ndarray],
    param_shapes: Mapping[tuple, tuple],
    torch_key: Callable[[tuple], str],
    torch_shape: Callable[[tuple, tuple], tuple],
    from_torch: Callable[[tuple, np.ndarray, tuple], np.ndarray],
    ignored: Callable[[str], bool] = lambda key: False,
) -> Match:
    """Pairs every expected parameter with its torch key; converts those whose shape matches."""
    remaining = {k: v for k, v in state_dict.items() if not ignored(k)}
    match = Match({}, [], [], [])
    for path, shape in param_shapes.items():
        key, expected = torch_key(path), tuple(torch_shape(path, shape))
        if key not in remaining:
            match.missing.append(f"{key} {expected}")
            continue
        value = np.asarray(remaining.pop(key))
        if tuple(value.shape) != expected:
            match.mismatched.append(f"{key} {tuple(value.shape)} (expected {expected})")
            continue
        match.params[path] = np.ascontiguousarray(from_torch(path, value, shape), dtype=np.float32)
    match.unexpected = sorted(remaining)
    return match


def abstract_param_shapes(model, *example_inputs) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flat {path: shape} of `model.init(key, *example_inputs)["params"]`; nothing is computed.

    The partitioning boxes are stripped without `nn.unbox`: that applies sharding constraints,
    which fail on abstract values when a converter runs inside a training mesh (weight loading).
    """
    abstract = jax.eval_shape(model.init, jax.random.key(0), *example_inputs)
    plain = strip_partitioning(abstract["params"])
    return {path: tuple(leaf.shape) for path, leaf in traverse_util.flatten_dict(plain).items()}
