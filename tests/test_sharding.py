"""Mesh construction, rule coverage, and sharded-vs-single-device training equivalence."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import titok_b64, titok_l32, titok_s128, titok_tiny
from titok_var import registry
from titok_var.sharding import logical
from titok_var.sharding import mesh as mesh_lib
from titok_var.sharding import rules as rules_lib
from tests.helpers import run_train_steps, tiny_titok_config


def test_resolve_axis_sizes_fills_minus_one_and_rejects_bad_meshes():
    assert mesh_lib.resolve_axis_sizes({"data": -1, "fsdp": 4, "tensor": 1}, 8) == {"data": 2, "fsdp": 4, "tensor": 1}
    with pytest.raises(ValueError, match="not divisible"):
        mesh_lib.resolve_axis_sizes({"data": -1, "fsdp": 3}, 8)
    with pytest.raises(ValueError, match="needs 4 devices but 8"):
        mesh_lib.resolve_axis_sizes({"data": 2, "fsdp": 2, "tensor": 1}, 8)
    with pytest.raises(ValueError, match="unknown mesh axes"):
        mesh_lib.resolve_axis_sizes({"model": 2}, 8)


@pytest.mark.parametrize("config", [titok_tiny.get_config(), titok_s128.get_config(),
                                    titok_b64.get_config(), titok_l32.get_config()])
def test_rules_cover_every_parameter(config):
    task = registry.get_task(config)
    boxed = jax.eval_shape(task.init_params, jax.random.key(0))
    rules = rules_lib.rules_from_config(config.sharding_rules)
    rules_lib.assert_rules_cover(boxed, rules)
    # Every parameter leaf carries logical names, so none is replicated by accident.
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)


def test_missing_rule_is_reported():
    boxed = {"w": nn.LogicallyPartitioned(jnp.zeros((2, 2)), ("embed", "mystery"))}
    with pytest.raises(ValueError, match="mystery"):
        rules_lib.assert_rules_cover(boxed, (("embed", "fsdp"),))


def test_unknown_activation_axis_raises_under_a_mesh():
    mesh = mesh_lib.make_mesh({"data": -1})
    with jax.set_mesh(mesh), nn.logical_axis_rules((("act_batch", "data"),)):
        with pytest.raises(ValueError, match="typo"):
            jax.jit(lambda x: logical.constrain(x, ("act_batch", "typo")))(jnp.zeros((8, 2)))


def test_indivisible_parameter_names_the_parameter_and_axis():
    config = tiny_titok_config()
    task = registry.get_task(config)
    boxed = jax.eval_shape(task.init_params, jax.random.key(0))
    mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 8})
    bad = {"layer": {"kernel": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((12, 3), jnp.float32), ("embed", None))}}
    with pytest.raises(ValueError, match=r"layer/kernel.*12.*'embed'"):
        rules_lib.assert_divisible(bad, mesh, rules_lib.rules_from_config(config.sharding_rules))
    rules_lib.assert_divisible(boxed, mesh, rules_lib.rules_from_config(config.sharding_rules))


def _run_steps(config, devices, num_steps):
    state, metrics = run_train_steps(config, devices, num_steps)
    return state, [m["loss"] for m in metrics]


def test_sharded_training_equals_single_device_training():
    assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
    config = tiny_titok_config()
    config.model.update(encoder_size="tiny", decoder_size="tiny")
    single_config = tiny_titok_config()
    single_config.mesh.update(data=1, fsdp=1, tensor=1)
    sharded_config = tiny_titok_config()
    sharded_config.mesh.update(data=2, fsdp=4, tensor=1)

    single_state, single_losses = _run_steps(single_config, jax.devices()[:1], 4)
    sharded_state, sharded_losses = _run_steps(sharded_config, jax.devices(), 4)

    # FSDP really splits the weights: a (64, 256) MLP kernel is held in quarters on the fsdp axis.
    kernel = sharded_state.params["encoder"]["transformer"]["block_0"]["mlp"]["fc_in"]["kernel"]
    assert kernel.addressable_shards[0].data.shape == (16, 256)
    np.testing.assert_allclose(sharded_losses, single_losses, rtol=2e-5, atol=1e-6)
    assert single_losses[-1] < single_losses[0]
    for a, b in zip(jax.tree.leaves(jax.device_get(single_state.params)),
                    jax.tree.leaves(jax.device_get(sharded_state.params))):
        np.testing.assert_allclose(a, b, atol=5e-5, rtol=1e-4)
