"""MaskGIT masking-ratio schedules and the per-step count of tokens left masked while sampling.

A schedule maps r in [0, 1] (the fraction of training "time" or of sampling steps done) to the
fraction of tokens that is masked: 1 at r = 0, 0 at r = 1, non-increasing in between. TiTok's
generators train and sample with `arccos` (paper Sec. 4.3, Tab. 3b); MaskGIT's default is `cosine`.

All functions accept Python floats, NumPy arrays or (traced) jax arrays.
"""

import math
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np


def _on_host(x) -> bool:
    return isinstance(x, (float, int, np.ndarray, np.generic))


def _xp(r):
    return np if _on_host(r) else jnp


def cosine(r):
    """cos(pi r / 2)."""
    xp = _xp(r)
    return xp.cos(0.5 * math.pi * xp.asarray(r))


def arccos(r):
    """arccos(r) / (pi / 2): masks fewer tokens than cosine in the early steps."""
    xp = _xp(r)
    return xp.arccos(xp.clip(xp.asarray(r), -1.0, 1.0)) / (0.5 * math.pi)


def linear(r):
    """1 - r."""
    return 1.0 - _xp(r).asarray(r)


def square_root(r):
    """1 - sqrt(r)."""
    xp = _xp(r)
    return 1.0 - xp.sqrt(xp.asarray(r))


SCHEDULES: dict[str, Callable] = {
    "cosine": cosine,
    "arccos": arccos,
    "linear": linear,
    "square_root": square_root,
}


def get_schedule(name: str) -> Callable:
    """The schedule function called `name` (one of SCHEDULES)."""
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown mask schedule {name!r}; known: {sorted(SCHEDULES)}") from None


def mask_ratio(r, schedule: str = "arccos"):
    """Fraction of tokens masked at progress r under `schedule`."""
    return get_schedule(schedule)(r)


def num_masked_after_step(step, num_steps: int, seq_len: int, num_masked_before, schedule: str = "arccos"):
    """Tokens left masked after sampling step `step` (0-based) of `num_steps`.

    The official `generate` rule: with r = (step + 1) / num_steps the schedule asks for
    floor(seq_len * ratio(r)) masked tokens; that is clamped to [1, num_masked_before - 1] so every
    step fixes at least one token and keeps at least one masked, and the last step unmasks all.
    `step` and `num_masked_before` may be traced; the ratio is then computed in float32.
    """
    xp = np if _on_host(step) and _on_host(num_masked_before) else jnp
    ratio = mask_ratio((xp.asarray(step) + 1) / num_steps, schedule)
    scheduled = xp.floor(seq_len * ratio).astype(xp.int32)
    kept = xp.maximum(1, xp.minimum(xp.asarray(num_masked_before) - 1, scheduled))
    return xp.where(xp.asarray(step) >= num_steps - 1, 0, kept)


def masked_count_schedule(num_steps: int, seq_len: int, schedule: str = "arccos") -> np.ndarray:
    """int32 (num_steps,): tokens still masked after each sampling step, starting all-masked.

    E.g. arccos, seq_len 32, 8 steps: [29, 26, 24, 21, 18, 14, 10, 0]. Computed in float64 as the
    official code does (NumPy), so it is the exact table the sampler follows.
    """
    if num_steps < 1 or seq_len < 1:
        raise ValueError(f"need num_steps >= 1 and seq_len >= 1, got {num_steps}, {seq_len}")
    counts, masked = [], seq_len
    for step in range(num_steps):
        masked = int(num_masked_after_step(step, num_steps, seq_len, masked, schedule))
        counts.append(masked)
    return np.asarray(counts, np.int32)
