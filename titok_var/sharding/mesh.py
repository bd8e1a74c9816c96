"""Device mesh from config: named axes (data, fsdp, tensor), -1 fills the remaining devices."""

from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
# The batch dimension is split over both the data-parallel and the FSDP axes.
BATCH_AXES = ("data", "fsdp")


def resolve_axis_sizes(requested: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Replaces one -1 by whatever makes the product equal `num_devices`; checks the rest."""
    unknown = sorted(set(requested) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"unknown mesh axes {unknown}; the mesh axes are {list(MESH_AXES)}")
    sizes = {axis: int(requested.get(axis, 1)) for axis in MESH_AXES}
    fill = [axis for axis, size in sizes.items() if size == -1]
    if len(fill) > 1:
        raise ValueError(f"only one mesh axis may be -1, got {fill}")
    for axis, size in sizes.items():
        if size == 0 or size < -1:
            raise ValueError(f"mesh axis {axis!r} has invalid size {size}")
    known = int(np.prod([s for s in sizes.values() if s != -1]))
    if fill:
        if num_devices % known:
            raise ValueError(
                f"cannot fill mesh axis {fill[0]!r}: {num_devices} devices are not divisible by "
                f"the product {known} of the other axes {sizes}"
            )
        sizes[fill[0]] = num_devices // known
    elif known != num_devices:
        raise ValueError(f"mesh {sizes} needs {known} devices but {num_devices} are available")
    return sizes


def make_mesh(requested: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a mesh with Auto axes (linen layers need GSPMD-style propagation)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_axis_sizes(requested, len(devices))
    shape = tuple(sizes[axis] for axis in MESH_AXES)
    if len(devices) == len(jax.devices()) or devices[0].platform != jax.devices()[0].platform:
        # Every device, or a TPU topology's abstract devices (bench/aot.py): topology-aware order.
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)
    # An explicit device subset (tests): keep the given order.
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over data and fsdp, everything else replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def batch_divisor(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[axis] for axis in BATCH_AXES]))
