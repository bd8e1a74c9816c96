"""VAR next-scale sampling (official `autoregressive_infer_cfg`, and its masked variant for
zero-shot editing) as one traced program: the scales are unrolled with static shapes and the
transformer reuses a preallocated KV cache, so nothing is re-traced per scale.

Per scale si: logits of the doubled batch (conditional rows first, then the null class), CFG
on logits with t = cfg * si / (num_scales - 1), top-k then top-p, a categorical draw; the code
map is the codebook row (or, with `more_smooth`, a Gumbel-softmax mixture), optionally replaced by
the known image's codes where an edit mask keeps them; then f_hat += phi(upsample(h)) and the
area-resized f_hat is the next scale's input.
"""

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from titok_var.generation import logit_filters
from titok_var.generation.edit_masks import blend_known_tokens
from titok_var.models.var import VAR, init_kv_cache


@dataclasses.dataclass(frozen=True)
class VarSamplingSettings:
    """The README's FID settings by default; the demo uses cfg 4, top_p 0.95."""

    cfg: float = 1.5
    top_k: int = 900
    top_p: float = 0.96
    more_smooth: bool = False


@dataclasses.dataclass(frozen=True)
class QuantizerOps:
    """The frozen VQVAE quantizer functions sampling needs (bound to its parameters)."""

    lookup: Callable  # ids (...) -> codes (..., C)
    codebook: Callable  # () -> (V, C)
    next_input: Callable  # (si, f_hat, h (B, p, p, C)) -> (f_hat, next input map)
    full_size: int
    code_dim: int


def sample_scales(
    model: VAR, params, ops: QuantizerOps, labels, key, settings: VarSamplingSettings,
    *, known_tokens: Sequence | None = None, keep_masks: Sequence | None = None,
):
    """(B,) labels (num_classes = unconditional) -> (tokens (B, L) int32, f_hat (B, h, w, C)).

    With `known_tokens` (one (B, p, p) map per scale) and `keep_masks` (one (p, p) or (B, p, p)
    bool map per scale, True = keep), kept positions take the known codes before f_hat is updated
    (App. B in-/out-painting and class-conditional editing); the returned tokens hold them too.
    """
    patch_nums = tuple(int(p) for p in model.patch_nums)
    num_scales = len(patch_nums)
    if (known_tokens is None) != (keep_masks is None):
        raise ValueError("editing needs both known_tokens and keep_masks")
    if known_tokens is not None and (len(known_tokens) != num_scales or len(keep_masks) != num_scales):
        raise ValueError(f"known_tokens and keep_masks need one entry per scale ({num_scales})")
    labels = jnp.asarray(labels, jnp.int32)
    batch = labels.shape[0]
    guided = settings.cfg != 0.0  # cfg 0 leaves the conditional logits: skip the null half
    if guided:
        labels = jnp.concatenate([labels, jnp.full((batch,), model.num_classes, jnp.int32)])
    cache = init_kv_cache(model, labels.shape[0])
    f_hat = jnp.zeros((batch, ops.full_size, ops.full_size, ops.code_dim), jnp.float32)
    scale_input, tokens = None, []
    for si, pn in enumerate(patch_nums):
        logits, cache = model.apply({"params": params}, labels, si, scale_input, cache, method=VAR.decode_scale)
        if guided:
            t = logit_filters.guidance_at_scale(settings.cfg, si, num_scales)
            logits = logit_filters.guided_logits(logits[:batch], logits[batch:], t)
        logits = logit_filters.top_k_top_p_filter(logits, settings.top_k, settings.top_p)
        key, draw_key, gumbel_key = jax.random.split(key, 3)
        ids = jax.random.categorical(draw_key, logits).astype(jnp.int32)  # (B, p*p)
        if settings.more_smooth:
            ratio = logit_filters.scale_ratio(si, num_scales)
            h = logit_filters.gumbel_soft_codes(gumbel_key, logits, ops.codebook(), ratio)
        else:
            h = ops.lookup(ids)
        h = h.reshape(batch, pn, pn, ops.code_dim)
        ids = ids.reshape(batch, pn, pn)
        if known_tokens is not None:
            known = jnp.asarray(known_tokens[si], jnp.int32).reshape(batch, pn, pn)
            keep = jnp.asarray(keep_masks[si], bool)
            h = blend_known_tokens(h, ops.lookup(known), keep)
            ids = jnp.where(jnp.broadcast_to(keep, ids.shape), known, ids)
        tokens.append(ids.reshape(batch, -1))
        f_hat, next_map = ops.next_input(si, f_hat, h)
        if si + 1 < num_scales:
            scale_input = next_map.reshape(batch, -1, ops.code_dim)
            if guided:
                scale_input = jnp.concatenate([scale_input, scale_input])
    return jnp.concatenate(tokens, axis=1), f_hat
