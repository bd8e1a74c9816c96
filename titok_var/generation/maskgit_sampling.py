"""MaskGIT iterative parallel decoding with classifier-free guidance, as one jitted program.

Follows the official TiTok `ImageBert.generate` (bytedance/1d-tokenizer), step s = 0 .. T-1 with
r = (s + 1) / T:

1. guided logits: cond = f(ids, labels), uncond = f(ids, null); with guidance scale g_s,
   `cond + g_s (cond - uncond)` for the "constant" and "linear" decays and
   `uncond + g_s (cond - uncond)` for "power-cosine"; a step whose g_s is 0 uses cond alone.
   g_s: constant g; linear s / T * g (so step 0 has no guidance); power-cosine
   (g - 1) * (1 - cos(pi (s / T)^pow)) / 2 + 1.
2. optional softmax-temperature annealing: logits / (0.5 + 0.8 (1 - r)).
3. sample argmax(logits + tau_s * Gumbel) with tau_s = randomize_temperature * (1 - r); the
   confidence of a sampled token is its (guided, scaled) logit plus tau_s times a second,
   independent Gumbel draw; tokens fixed in earlier steps have confidence +inf.
4. keep the most confident tokens; the least confident max(1, min(#masked - 1, floor(N ratio(r))))
   masked positions are masked again (ratio = arccos schedule by default); the last step keeps all.

Difference from the official code: step 4 re-masks exactly that many positions (ranking, ties
broken by position); the official `confidence <= cutoff` would re-mask extra positions on exact
ties, which have probability zero with Gumbel noise but can occur with temperature 0.

The step loop is a `jax.lax.scan` over per-step constants computed in float64 on the host, so
the traced program holds one copy of the network, whatever the number of steps.
"""

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from titok_var.generation import mask_schedule

GUIDANCE_DECAYS = ("constant", "linear", "power-cosine")

# Sampling settings of the released generators (1d-tokenizer configs/infer + the benchmark script,
# which turns softmax-temperature annealing on). L-32 and B-64 match the paper's App. A.
_RELEASED_COMMON = {"guidance_scale_pow": 3.0, "softmax_temperature_annealing": True, "schedule": "arccos"}
SAMPLING_DEFAULTS = {
    "L-32": {"num_steps": 8, "guidance_scale": 4.5, "randomize_temperature": 9.5, "guidance_decay": "linear",
             **_RELEASED_COMMON},
    "B-64": {"num_steps": 8, "guidance_scale": 3.0, "randomize_temperature": 11.0, "guidance_decay": "linear",
             **_RELEASED_COMMON},
    "S-128": {"num_steps": 64, "guidance_scale": 6.9, "randomize_temperature": 2.8, "guidance_decay": "power-cosine",
              **_RELEASED_COMMON},
}
# App. A of the paper gives S-128 guidance 2.0 and temperature 3.0; the released configuration
# above (6.9, 2.8, power-cosine) is what reproduces the reported 1.97 gFID. L-32 and B-64 agree.


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """Decoding hyper-parameters; the defaults are those of the official `generate` signature."""

    num_steps: int = 8
    guidance_scale: float = 3.0
    randomize_temperature: float = 4.5
    guidance_decay: str = "constant"
    guidance_scale_pow: float = 3.0
    softmax_temperature_annealing: bool = False
    schedule: str = "arccos"

    def __post_init__(self):
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.guidance_decay not in GUIDANCE_DECAYS:
            raise ValueError(f"unknown guidance_decay {self.guidance_decay!r}; known: {GUIDANCE_DECAYS}")
        mask_schedule.get_schedule(self.schedule)

    @classmethod
    def for_variant(cls, variant: str, **overrides) -> "SamplingSettings":
        """Released settings of a TiTok variant ("L-32", "B-64", "S-128"), optionally overridden."""
        if variant not in SAMPLING_DEFAULTS:
            raise ValueError(f"unknown TiTok variant {variant!r}; known: {sorted(SAMPLING_DEFAULTS)}")
        return cls(**{**SAMPLING_DEFAULTS[variant], **overrides})


def step_ratios(settings: SamplingSettings) -> np.ndarray:
    """r = (s + 1) / T for each step (float64)."""
    return np.arange(1, settings.num_steps + 1, dtype=np.float64) / settings.num_steps


def guidance_scales(settings: SamplingSettings) -> np.ndarray:
    """The CFG scale g_s used at each step s (float64, shape (T,))."""
    steps = np.arange(settings.num_steps, dtype=np.float64)
    scale = settings.guidance_scale
    if settings.guidance_decay == "constant":
        return np.full_like(steps, scale)
    if settings.guidance_decay == "linear":
        # The official loop updates the scale at the end of a step: step s uses s / T * g.
        return steps / settings.num_steps * scale
    progress = (steps / settings.num_steps) ** settings.guidance_scale_pow
    return (scale - 1.0) * 0.5 * (1.0 - np.cos(math.pi * progress)) + 1.0


def softmax_temperatures(settings: SamplingSettings) -> np.ndarray:
    """Divisor of the logits at each step: 0.5 + 0.8 (1 - r) when annealing, else 1."""
    if not settings.softmax_temperature_annealing:
        return np.ones(settings.num_steps)
    return 0.5 + 0.8 * (1.0 - step_ratios(settings))


def gumbel_temperatures(settings: SamplingSettings) -> np.ndarray:
    """Scale of the Gumbel noise at each step: randomize_temperature * (1 - r) (0 at the last step)."""
    return settings.randomize_temperature * (1.0 - step_ratios(settings))


def scheduled_mask_lengths(settings: SamplingSettings, seq_len: int) -> np.ndarray:
    """floor(N * ratio(r)) per step, before the clamp to [1, #masked - 1]."""
    ratios = mask_schedule.mask_ratio(step_ratios(settings), settings.schedule)
    return np.floor(seq_len * ratios).astype(np.int32)


def combine_guidance(cond_logits, uncond_logits, scale, guidance_decay: str):
    """Guided logits for one step (scale may be traced); scale 0 returns `cond_logits` exactly."""
    if guidance_decay == "power-cosine":
        guided = uncond_logits + scale * (cond_logits - uncond_logits)
    else:
        guided = cond_logits + scale * (cond_logits - uncond_logits)
    return jnp.where(scale == 0, cond_logits, guided)


def gumbel_noise(key, shape):
    """-log(-log(u)) with u ~ U[0, 1) and both logs' arguments clamped at 1e-20 (as official)."""
    u = jax.random.uniform(key, shape, jnp.float32)
    return -jnp.log(jnp.maximum(-jnp.log(jnp.maximum(u, 1e-20)), 1e-20))


def _rank(values):
    """Position of each entry in an ascending stable sort along the last axis."""
    return jnp.argsort(jnp.argsort(values, axis=-1, stable=True), axis=-1, stable=True)


def sample_tokens(
    logits_fn: Callable,
    labels,
    key,
    *,
    seq_len: int,
    mask_token_id: int,
    null_label: int,
    settings: SamplingSettings = SamplingSettings(),
    return_history: bool = False,
):
    """Generates (B, seq_len) int32 tokens for class `labels` (B,) with MaskGIT decoding.

    `logits_fn(tokens, labels) -> (B, N, K)` logits; it is called on a doubled batch
    [labels; null_label] when guidance is used at any step. Traceable: call it inside `jax.jit`
    (with `logits_fn` closing over traced params), or use `make_sampler`. The same `key` gives the
    same tokens. With `return_history`, also returns (T, B, N): the ids after every step.
    """
    labels = jnp.asarray(labels, jnp.int32)
    batch = labels.shape[0]
    scales = guidance_scales(settings)
    use_guidance = bool(np.any(scales != 0))
    per_step = (
        jnp.arange(settings.num_steps, dtype=jnp.int32),
        jnp.asarray(scales, jnp.float32),
        jnp.asarray(softmax_temperatures(settings), jnp.float32),
        jnp.asarray(gumbel_temperatures(settings), jnp.float32),
        jnp.asarray(scheduled_mask_lengths(settings, seq_len)),
    )
    null = jnp.full_like(labels, null_label)

    def guided_logits(ids, scale):
        if not use_guidance:
            return logits_fn(ids, labels).astype(jnp.float32)
        both = logits_fn(jnp.concatenate([ids, ids]), jnp.concatenate([labels, null])).astype(jnp.float32)
        return combine_guidance(both[:batch], both[batch:], scale, settings.guidance_decay)

    def step_fn(ids, xs):
        step, scale, softmax_temp, gumbel_temp, scheduled = xs
        sample_key, confidence_key = jax.random.split(jax.random.fold_in(key, step))
        is_mask = ids == mask_token_id
        logits = guided_logits(ids, scale) / softmax_temp
        sampled = jnp.argmax(logits + gumbel_temp * gumbel_noise(sample_key, logits.shape), axis=-1)
        sampled = sampled.astype(jnp.int32)
        confidence = jnp.take_along_axis(logits, sampled[..., None], axis=-1)[..., 0]
        sampled = jnp.where(is_mask, sampled, ids)
        confidence = jnp.where(is_mask, confidence, jnp.inf)
        confidence = confidence + gumbel_temp * gumbel_noise(confidence_key, confidence.shape)
        num_masked = jnp.sum(is_mask, axis=-1, keepdims=True)
        keep_masked = jnp.maximum(1, jnp.minimum(num_masked - 1, scheduled))
        remask = (_rank(confidence) < keep_masked) & (step < settings.num_steps - 1)
        ids = jnp.where(remask, mask_token_id, sampled)
        return ids, ids if return_history else None

    start = jnp.full((batch, seq_len), mask_token_id, jnp.int32)
    tokens, history = jax.lax.scan(step_fn, start, per_step)
    return (tokens, history) if return_history else tokens


def make_sampler(model, settings: SamplingSettings, *, seq_len: int | None = None):
    """jit(params, labels, key) -> tokens for a generator with the ImageBert / UViTBert interface."""
    seq_len = model.seq_len if seq_len is None else seq_len

    @jax.jit
    def sample(params, labels, key):
        def logits_fn(tokens, cond):
            return model.apply({"params": params}, tokens, cond, deterministic=True)

        return sample_tokens(logits_fn, labels, key, seq_len=seq_len, mask_token_id=model.mask_token_id,
                             null_label=model.null_label, settings=settings)

    return sample
