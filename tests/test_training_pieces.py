"""Optimizer schedule and weight-decay mask, EMA warm-up, config loading and overrides."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from configs import common, titok_b64
from titok_var.training import ema, optimizer
from tests.conftest import REPO_ROOT
from tests.subprocess_env import cpu_env
from tests.helpers import tiny_titok_config


def test_schedule_warms_up_linearly_then_decays_to_end_value():
    config = tiny_titok_config()
    config.optimizer.update(learning_rate=1.0, end_learning_rate=0.1, warmup_steps=10)
    config.train.num_steps = 110
    schedule = optimizer.learning_rate_schedule(config)
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(schedule(5), 0.5)
    np.testing.assert_allclose(schedule(10), 1.0)
    np.testing.assert_allclose(schedule(60), 0.55, atol=1e-6)  # half-way through the cosine
    np.testing.assert_allclose(schedule(110), 0.1, atol=1e-6)


def test_weight_decay_mask_skips_biases_norms_embeddings_and_codebook():
    params = {
        "encoder": {"transformer": {"block_0": {"mlp": {"fc_in": {"kernel": jnp.zeros((2, 3)),
                                                                  "bias": jnp.zeros(3)}},
                                                "ln_1": {"norm": {"scale": jnp.ones(2)}}}},
                    "patch_embed": {"kernel": jnp.zeros((4, 4, 3, 2))},
                    "positional_embedding": jnp.zeros((5, 2))},
        "quantize": {"codebook": jnp.zeros((8, 2))},
        "latent_tokens": jnp.zeros((4, 2)),
    }
    mask = optimizer.weight_decay_mask(params)
    assert mask["encoder"]["transformer"]["block_0"]["mlp"]["fc_in"]["kernel"]
    assert not mask["encoder"]["transformer"]["block_0"]["mlp"]["fc_in"]["bias"]
    assert not mask["encoder"]["transformer"]["block_0"]["ln_1"]["norm"]["scale"]
    assert not mask["encoder"]["patch_embed"]["kernel"]
    assert not mask["encoder"]["positional_embedding"]
    assert not mask["quantize"]["codebook"]
    assert not mask["latent_tokens"]


def test_weight_decay_applies_only_where_masked():
    config = tiny_titok_config()
    config.optimizer.update(learning_rate=0.1, warmup_steps=0, weight_decay=0.5, grad_clip_norm=1e9)
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    tx = optimizer.build_optimizer(config)
    state = tx.init(params)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, state, params)
    assert float(jnp.max(jnp.abs(updates["dense"]["bias"]))) == 0.0
    assert float(jnp.min(jnp.abs(updates["dense"]["kernel"]))) > 0.0


def test_frozen_parameters_do_not_move():
    config = tiny_titok_config()
    params = {"a": jnp.ones(3), "b": jnp.ones(3)}
    tx = optimizer.build_optimizer(config, trainable_mask=lambda p: {"a": True, "b": False})
    state = tx.init(params)
    grads = {"a": jnp.ones(3), "b": jnp.ones(3)}
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    np.testing.assert_array_equal(params["b"], 1.0)
    assert float(params["a"][0]) < 1.0


def test_ema_decay_warm_up_and_update():
    assert float(ema.ema_decay_at(1, 0.999)) == 0.0  # first step copies the parameters
    np.testing.assert_allclose(ema.ema_decay_at(2, 0.999), 2 / 11)
    np.testing.assert_allclose(ema.ema_decay_at(100_000, 0.999), 0.999)
    new = ema.update_ema({"w": jnp.zeros(2)}, {"w": jnp.ones(2)}, step=2, max_decay=0.999)
    np.testing.assert_allclose(new["w"], 1 - 2 / 11, rtol=1e-6)


def test_parse_arg_types_flags_and_unknown_keys():
    args = common.parse_arg("runlocal,res=64", runlocal=False, res=256)
    assert args.runlocal is True and args.res == 64
    with pytest.raises(KeyError, match="unknown config argument 'typo'"):
        common.parse_arg("typo=1", runlocal=False)


def _run_main(*args):
    env = cpu_env()
    return subprocess.run([sys.executable, "main.py", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_config_file_overrides_and_unknown_key_error():
    result = _run_main("--config=configs/titok_tiny.py", "--mode=summary",
                       "--config.model.num_latent_tokens=4")
    assert result.returncode == 0, result.stderr[-2000:]
    # 4 latent tokens of width 64.
    assert "params/latent_tokens: 256" in result.stdout
    result = _run_main("--config=configs/titok_tiny.py", "--mode=summary", "--config.train.typo=1")
    assert result.returncode != 0
    assert "typo" in result.stderr


def test_runlocal_variant_of_a_paper_config():
    config = titok_b64.get_config("runlocal")
    assert config.model.image_size == 32 and config.data.name == "shapes"
    assert config.model.encoder_size == "base"
