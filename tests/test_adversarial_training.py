"""Perceptual + GAN terms in a training run (VAR VQVAE task): the discriminator switches on at its
step and trains only from then on, its state is checkpointed so a resumed run equals an
uninterrupted one (with the adaptive GAN weight on)."""

import jax
import numpy as np

from titok_var.training import trainer
from tests.helpers import tiny_var_vqvae_config


def gan_config(**loss_overrides):
    config = tiny_var_vqvae_config(num_steps=4, checkpoint_every_steps=2)
    config.loss.update(discriminator_start=2, discriminator_weight=0.1, lecam_weight=0.001,
                       discriminator_channels=16, discriminator_stages=1, discriminator_norm_groups=4,
                       discriminator_pool=4)
    config.loss.update(loss_overrides)
    return config


def test_discriminator_trains_only_from_its_start_step_and_resume_is_exact(tmp_path):
    # The adaptive (last-layer gradient ratio) weight is on too; the perceptual term in training
    # is covered by the TiTok stage-2 test.
    # The discriminator optimizer is TiTok stage 2's: a warm-up that starts at rate 0 on the
    # discriminator's own step count, clipping, decay on matrices only.
    official = dict(discriminator_schedule="cosine", discriminator_warmup_steps=2, discriminator_end_learning_rate=1e-5,
                    discriminator_grad_clip_norm=1.0, discriminator_decay="matrices")
    config = gan_config(adaptive_gan_weight=True, **official)
    snapshots = {}

    def record(step, state):
        snapshots[step] = jax.device_get(state.task_state["discriminator"])

    full = trainer.train(config, str(tmp_path / "full"), step_callback=record)
    leaves = {s: np.concatenate([np.ravel(x) for x in jax.tree.leaves(v["params"])]) for s, v in snapshots.items()}
    # Steps 1 and 2 run with step counters 0 and 1 < start: untouched. Step 3 (counter 2) is the
    # discriminator's first step, at warm-up rate 0: its EMAs move, its parameters not yet; step 4 trains them.
    np.testing.assert_array_equal(leaves[1], leaves[2])
    np.testing.assert_array_equal(leaves[2], leaves[3])
    assert not np.array_equal(leaves[3], leaves[4])
    assert float(snapshots[2]["ema_real"]) == 0.0 and float(snapshots[3]["ema_real"]) != 0.0

    config_half = gan_config(adaptive_gan_weight=True, **official)
    config_half.train.num_steps = 2
    trainer.train(config_half, str(tmp_path / "resumed"))
    resumed = trainer.train(config, str(tmp_path / "resumed"))
    for step in (3, 4):
        np.testing.assert_allclose(resumed.losses[step], full.losses[step], rtol=1e-6)
    np.testing.assert_allclose(
        np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(resumed.state.task_state))]),
        np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(full.state.task_state))]), rtol=1e-6)
