"""Checkpoints: SIGTERM saves and stops, resume continues exactly, mismatches are named, NaN stops."""

import json
import os
import signal

import jax
import numpy as np
import pytest

from titok_var.checkpointing.manager import CheckpointMismatchError
from titok_var.data.builder import build_source
from titok_var.training import inference, trainer
from tests.helpers import tiny_titok_config


def _sigterm_at(stop_step):
    def callback(step, state):
        del state
        if step == stop_step:
            os.kill(os.getpid(), signal.SIGTERM)

    return callback


def test_sigterm_saves_and_resume_matches_uninterrupted_run(tmp_path):
    # Asynchronous checkpointing, the default that real runs take; a save is in flight at the SIGTERM.
    config = tiny_titok_config(num_steps=6, checkpoint_every_steps=1, log_every_steps=1, async_checkpointing=True)
    straight = trainer.train(config, str(tmp_path / "straight"))
    assert not straight.preempted

    workdir = str(tmp_path / "interrupted")
    first = trainer.train(config, workdir, step_callback=_sigterm_at(2))
    assert first.preempted
    assert int(first.state.step) == 2
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]

    resumed = trainer.train(config, workdir)
    assert not resumed.preempted
    assert json.loads(open(os.path.join(workdir, trainer.STATUS_FILE)).read())["status"] == "complete"
    assert sorted(resumed.losses) == [3, 4, 5, 6]
    for step in (3, 4, 5, 6):
        np.testing.assert_allclose(resumed.losses[step], straight.losses[step], rtol=1e-6, atol=1e-7)
    for a, b in zip(jax.tree.leaves(jax.device_get(resumed.state)),
                    jax.tree.leaves(jax.device_get(straight.state))):
        if hasattr(a, "dtype") and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sigterm_right_after_a_checkpoint_step_reuses_it_and_stops_cleanly(tmp_path):
    """With asynchronous checkpointing (the default), SIGTERM on a checkpoint step used to save the
    same step twice (orbax StepAlreadyExistsError, exit status 1)."""
    config = tiny_titok_config(num_steps=6, checkpoint_every_steps=2, log_every_steps=1)
    config.train.async_checkpointing = True
    result = trainer.train(config, str(tmp_path), step_callback=_sigterm_at(2))
    assert result.preempted and int(result.state.step) == 2
    assert sorted(os.listdir(os.path.join(tmp_path, "checkpoints"))) == ["2"]
    status = json.loads((tmp_path / trainer.STATUS_FILE).read_text())
    assert status == {"status": "preempted", "step": 2, "num_steps": 6}


def test_a_state_made_non_finite_by_the_update_is_never_checkpointed(tmp_path):
    """The loss of a step is computed before its update: an infinite learning rate keeps step 1's
    loss finite but makes the updated parameters non-finite; no checkpoint of them is written."""
    config = tiny_titok_config(num_steps=4, checkpoint_every_steps=1, log_every_steps=100)
    config.optimizer.learning_rate = float("inf")
    with pytest.raises(trainer.NonFiniteLossError,
                       match="parameters or optimizer state became non-finite at step 1; .*checkpoint is step None"):
        trainer.train(config, str(tmp_path))
    assert os.listdir(os.path.join(tmp_path, "checkpoints")) == []


def test_training_leaves_the_mean_image_plateau(tmp_path):
    """The collapsed model reconstructs every image as the mean image with one code per position."""
    config = tiny_titok_config(num_steps=300, checkpoint_every_steps=300, log_every_steps=50)
    config.optimizer.update(learning_rate=3e-3, warmup_steps=5)
    result = trainer.train(config, str(tmp_path))
    source = build_source(config.data, "eval")
    images = np.stack([source.load(i)[0] for i in range(len(source))]).astype(np.float32) / 255.0
    mean_image_mse = float(np.mean(np.var(images, axis=0)))
    assert result.eval_metrics["mse"] < 0.75 * mean_image_mse, (result.eval_metrics, mean_image_mse)
    one_code_per_position = config.model.num_latent_tokens / config.model.codebook_size
    assert result.eval_metrics["codebook_usage"] > 1.5 * one_code_per_position, result.eval_metrics
    early = np.mean([result.losses[s] for s in range(1, 6)])
    late = np.mean([result.losses[s] for s in range(296, 301)])
    assert late < 0.6 * early, (early, late)


def test_checkpoint_of_another_shape_names_the_parameter(tmp_path):
    config = tiny_titok_config(num_steps=2, checkpoint_every_steps=2)
    trainer.train(config, str(tmp_path))
    other = tiny_titok_config(num_steps=4, checkpoint_every_steps=2)
    other.model.num_latent_tokens = 4
    with pytest.raises(CheckpointMismatchError, match="latent_token"):
        trainer.train(other, str(tmp_path))
    renamed = tiny_titok_config(num_steps=4)
    renamed.model_name = "titok"
    renamed.model.codebook_size = 32
    with pytest.raises(CheckpointMismatchError, match=r"quantize/codebook has shape \(64, 8\)"):
        inference.evaluate(renamed, str(tmp_path))


def test_nonfinite_loss_stops_with_the_step(tmp_path):
    config = tiny_titok_config(num_steps=6, checkpoint_every_steps=100, log_every_steps=3)
    config.loss.reconstruction_weight = float("nan")
    with pytest.raises(trainer.NonFiniteLossError, match="at step 1;"):
        trainer.train(config, str(tmp_path))
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints", "3"))


def test_inference_restores_only_the_parameters_it_uses(tmp_path):
    # The EMA (eval.use_ema) or raw parameters of a step, equal to the full train state's, without
    # the optimizer moments; a config without EMA reads the raw parameters.
    config = tiny_titok_config(num_steps=3, checkpoint_every_steps=3)
    result = trainer.train(config, str(tmp_path))
    full = jax.device_get(result.state)
    for use_ema, expected in ((True, full.ema_params), (False, full.params)):
        config.eval.use_ema = use_ema
        exp = trainer.build_experiment(config, str(tmp_path))
        params, _, step, used_ema = trainer.restore_inference_params(exp, str(tmp_path))
        assert step == 3 and used_ema == use_ema
        for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(jax.device_get(params))):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(jax.tree.leaves(full.ema_params)[0], jax.tree.leaves(full.params)[0])
    with pytest.raises(FileNotFoundError, match="no checkpoint for step 7"):
        trainer.restore_inference_params(exp, str(tmp_path), step=7)
