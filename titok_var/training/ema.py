"""Exponential moving average of parameters with the (1 + s) / (10 + s) warm-up of TiTok's trainer."""

import jax
import jax.numpy as jnp


def ema_decay_at(step, max_decay: float):
    """Decay used after optimizer step `step` (1-based): 0 at first, rising to max_decay."""
    s = jnp.asarray(step, jnp.float32) - 1.0
    warm = (1.0 + s) / (10.0 + s)
    return jnp.where(s <= 0, 0.0, jnp.minimum(max_decay, warm))


def update_ema(ema_params, params, step, max_decay: float):
    decay = ema_decay_at(step, max_decay)
    return jax.tree.map(lambda e, p: e - (1.0 - decay) * (e - p), ema_params, params)
