"""bench/aot.py's HLO accounting, checked on programs compiled here (the TPU compile itself needs
libtpu, an optional extra): collective bytes per kind, async starts counted once, shape sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from bench import aot


def test_sum_over_a_sharded_axis_is_one_all_reduce_of_the_result():
    mesh = jax.make_mesh((8,), ("d",), devices=jax.devices()[:8])
    x = jax.device_put(np.ones((8, 16), np.float32), NamedSharding(mesh, PartitionSpec("d")))
    compiled = jax.jit(lambda a: jnp.sum(a, axis=0), out_shardings=NamedSharding(mesh, PartitionSpec())).lower(
        x).compile()
    moved = aot.collective_bytes(compiled.as_text())
    assert moved["all-reduce"] == 16 * 4  # f32[16] per device
    assert sum(moved.values()) == moved["all-reduce"]


def test_async_start_counts_its_output_buffer_once_and_tuples_sum():
    hlo = "\n".join([
        "  %ag = (f32[2,4]{1,0}, f32[16,4]{1,0}) all-gather-start(f32[2,4]{1,0} %p), dimensions={0}",
        "  %done = f32[16,4]{1,0} all-gather-done((f32[2,4]{1,0}, f32[16,4]{1,0}) %ag)",
        "  %ar = (bf16[8]{0}, s32[3]{0}) all-reduce(bf16[8]{0} %a, s32[3]{0} %b), to_apply=%add",
        "  %cp = u8[5]{0} collective-permute(u8[5]{0} %c), source_target_pairs={{0,1}}",
        "  %add = f32[4]{0} add(f32[4]{0} %x, f32[4]{0} %y)",
    ])
    assert aot.collective_bytes(hlo) == {"all-reduce": 16 + 12, "all-gather": 256, "reduce-scatter": 0,
                                         "all-to-all": 0, "collective-permute": 5}


def test_shape_bytes_and_unknown_chips():
    assert aot.shape_bytes("(f32[2,3]{1,0}, bf16[]{}, pred[7]{0})") == [24, 2, 7]
    assert aot.chip_of("v6e:2x2") == "v6e"
    with pytest.raises(ValueError, match="unknown TPU generation 'v9'"):
        aot.chip_of("v9:2x2")
