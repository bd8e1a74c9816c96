"""The discriminator's optimizer against the official TiTok stage-2 definitions.

Official (bytedance/1d-tokenizer): utils/train_utils.py create_optimizer (AdamW, weight decay 0 on
parameters with ndim < 2), create_lr_scheduler (cosine, warm-up W, num_training_steps = T - start,
base_lr / end_lr of lr_scheduler.params) and the training loop (clip_grad_norm_ at 1.0, the scheduler
stepped only after a discriminator step); utils/lr_schedulers.py get_cosine_schedule_with_warmup.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import titok_l32
from titok_var.tasks import pixel_losses


def official_discriminator_lr(n: int, *, d_lr: float, base_lr: float, end_lr: float, warmup: int,
                              total: int) -> float:
    """torch LambdaLR: d_lr * lr_lambda(n) after n scheduler steps (lr_lambda of lr_schedulers.py)."""
    if n < warmup:
        return d_lr * n / max(1, warmup)
    progress = (n - warmup) / max(1, total - warmup)
    ratio = max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))
    return d_lr * (end_lr + (base_lr - end_lr) * ratio) / base_lr


def test_stage2_schedule_equals_the_official_scheduler_at_several_steps():
    config = titok_l32.get_config("stage2")
    loss = config.loss
    schedule = pixel_losses.discriminator_learning_rate_schedule(loss, config.train.num_steps)
    total = config.train.num_steps - loss.discriminator_start  # 500k - 20k discriminator steps
    for n in (0, 1, 2_500, 4_999, 5_000, 5_001, 100_000, 242_500, 479_999):
        expected = official_discriminator_lr(n, d_lr=1e-4, base_lr=config.optimizer.learning_rate, end_lr=1e-5,
                                             warmup=5_000, total=total)
        assert float(schedule(n)) == pytest.approx(expected, rel=1e-5, abs=1e-12), n
    # Warm-up from zero, peak 1e-4 at W, the end rate 1e-5 reached at the last discriminator step.
    assert float(schedule(0)) == 0.0 and float(schedule(5_000)) == pytest.approx(1e-4)
    assert float(schedule(total)) == pytest.approx(1e-5, rel=1e-4)


def test_stage2_optimizer_clips_and_decays_only_matrices():
    config = titok_l32.get_config("stage2")
    tx = pixel_losses.discriminator_optimizer(config.loss, config.train.num_steps)
    params = {"conv": {"kernel": jnp.ones((3, 3, 4, 4)), "bias": jnp.ones((4,))}, "norm": {"scale": jnp.ones((4,))}}
    state = tx.init(params)
    # A gradient of global norm 100 enters Adam's first moment clipped to norm 1.
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 100.0 / math.sqrt(152)), params)
    _, state = tx.update(grads, state, params)
    mu = state[1][0].mu
    norm = math.sqrt(sum(float(jnp.sum(jnp.square(m))) for m in jax.tree.leaves(mu)))
    assert norm == pytest.approx((1 - 0.9) * 1.0, rel=1e-5)
    # With zero gradients after warm-up only weight decay moves parameters, and only the 4-D kernel
    # (a 2-step warm-up here, so the third update has a nonzero rate).
    zero = jax.tree.map(jnp.zeros_like, params)
    small = config.loss.copy_and_resolve_references()
    small.update(discriminator_warmup_steps=2)
    tx_small = pixel_losses.discriminator_optimizer(small, 20_010)
    state = tx_small.init(params)
    for _ in range(3):
        updates, state = tx_small.update(zero, state, params)
    lr = float(pixel_losses.discriminator_learning_rate_schedule(small, 20_010)(2))
    np.testing.assert_allclose(updates["conv"]["kernel"], -lr * 1e-4 * np.ones((3, 3, 4, 4)), rtol=1e-5)
    assert float(jnp.abs(updates["conv"]["bias"]).max()) == 0.0
    assert float(jnp.abs(updates["norm"]["scale"]).max()) == 0.0


def test_default_discriminator_optimizer_is_constant_adamw_and_settings_are_checked():
    schedule = pixel_losses.discriminator_learning_rate_schedule({}, 1000)
    assert float(schedule(0)) == float(schedule(999)) == 1e-4
    with pytest.raises(ValueError, match="discriminator_schedule 'linear'"):
        pixel_losses.discriminator_learning_rate_schedule({"discriminator_schedule": "linear"}, 10)
    with pytest.raises(ValueError, match="discriminator_decay 'vectors'"):
        pixel_losses.discriminator_optimizer({"discriminator_decay": "vectors"}, 10)
