"""VAR per-scale sampling pieces: top-k / top-p filtering, token sampling, CFG, Gumbel smoothing.

Semantics follow the official `sample_with_top_k_top_p_` / `gumbel_softmax_with_rng` helpers and
`VAR.autoregressive_infer_cfg` (FoundationVision/VAR):

* top-k (k > 0): a logit survives iff it is >= the k-th largest logit of its row, so ties with
  the k-th value are all kept (more than k survivors is possible).
* top-p (p > 0), applied to the logits *already* masked by top-k: sort ascending, take the
  cumulative softmax, drop every entry whose cumulative sum is <= 1 - p, but never the largest.
* sampling draws from softmax(filtered logits); there is no temperature.
* CFG on logits: (1 + t) cond - t uncond with t = cfg * si / (num_scales - 1), so the first scale
  is unguided and the last one gets the full `cfg`.
* `more_smooth`: a soft code, softmax((logits (1 + ratio) + Gumbel) / tau) @ codebook, with
  tau = max(0.27 (1 - 0.95 ratio), 0.005), computed on the filtered logits.

Filters and samplers work on (..., V) float logits (computed in float32) and take k, p and the
scale index as static Python numbers: the VAR scale loop is unrolled in Python. RNG is explicit;
the torch code drew the hard sample and the Gumbel noise from one generator, here the caller
gives each call its own key. Samples are distributed as in torch but are not bit-identical.
"""

import numbers

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def _static_top_k(top_k, vocab_size: int) -> int:
    if not isinstance(top_k, numbers.Integral) or isinstance(top_k, bool):
        raise TypeError(f"top_k must be a static Python int (0 disables it), got {top_k!r}")
    if top_k > vocab_size:
        raise ValueError(f"top_k={top_k} exceeds the vocabulary size {vocab_size}")
    return int(top_k)


def _static_top_p(top_p) -> float:
    if not isinstance(top_p, numbers.Real) or isinstance(top_p, bool):
        raise TypeError(f"top_p must be a static Python float (0 disables it), got {top_p!r}")
    return float(top_p)


def _top_k_mask(logits, top_k: int):
    """True where a logit is below the k-th largest of its row."""
    kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]
    return logits < kth_largest


def _top_p_mask(logits, top_p: float):
    """True where the ascending cumulative softmax is <= 1 - p, the row's largest logit excepted."""
    order = jnp.argsort(logits, axis=-1, stable=True)
    ascending = jnp.take_along_axis(logits, order, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
    remove_sorted = cumulative <= (1.0 - top_p)
    remove_sorted = remove_sorted.at[..., -1].set(False)
    # Send each sorted flag back to the position it came from.
    return jnp.take_along_axis(remove_sorted, jnp.argsort(order, axis=-1), axis=-1)


def _top_k_top_p_mask(logits, top_k: int, top_p: float):
    """`_top_k_mask`, then `_top_p_mask` of the masked row, sorting only the k candidates, not all V.

    Survivors of top-k are the k candidates of `lax.top_k` plus any extra ties with the k-th value
    v_k. In the full ascending stable sort all survivors equal to v_k come first, in index order,
    so their cumulative mass is a running sum over the row in index order; every larger survivor
    is a candidate, and its cumulative mass is that tie mass plus a running sum over the
    candidates sorted by (value, index). Both halves go back to their positions by scatter.
    """
    values, indices = jax.lax.top_k(logits, top_k)
    kth = values[..., -1:]
    survivors = logits >= kth
    masked = jnp.where(survivors, logits, -jnp.inf)
    probs = jax.nn.softmax(masked, axis=-1)
    # Ties with the k-th value: running mass in index order (the full sort's order among equals).
    tied = logits == kth
    tie_cumulative = jnp.cumsum(jnp.where(tied, probs, 0.0), axis=-1)
    tie_mass = tie_cumulative[..., -1:]
    # Larger candidates, ascending by (value, index) as the stable sort puts them.
    above = values > kth
    keys = jnp.where(above, values, -jnp.inf)
    sorted_keys, sorted_indices = jax.lax.sort((keys, indices), dimension=-1, num_keys=2)
    sorted_above = sorted_keys > kth
    sorted_probs = jnp.where(sorted_above, jnp.take_along_axis(probs, sorted_indices, axis=-1), 0.0)
    above_cumulative = tie_mass + jnp.cumsum(sorted_probs, axis=-1)
    threshold = 1.0 - top_p
    remove_above_sorted = sorted_above & (above_cumulative <= threshold)
    # The row's largest value (last in ascending order) is always kept.
    remove_above_sorted = remove_above_sorted.at[..., -1].set(False)
    remove = jnp.zeros(logits.shape, bool)
    batch = jnp.indices(sorted_indices.shape)[:-1]
    remove = remove.at[(*batch, sorted_indices)].set(remove_above_sorted)
    # Ties: removed when their running mass is <= 1 - p, unless one of them is the row's largest
    # (every survivor tied), whose last tie in index order stays.
    all_tied = ~jnp.any(above, axis=-1, keepdims=True)
    last_tie = tied & (jnp.cumsum(tied, axis=-1) == jnp.sum(tied, axis=-1, keepdims=True))
    remove_ties = tied & (tie_cumulative <= threshold) & ~(all_tied & last_tie)
    return ~survivors | remove | remove_ties


def top_k_top_p_filter(logits, top_k: int = 0, top_p: float = 0.0):
    """(..., V) logits with the entries that top-k, then top-p, removes set to -inf (float32).

    top_k <= 0 and top_p <= 0 disable the respective filter; both must be static. With both, the
    nucleus cut sorts only the top-k candidates (`_top_k_top_p_mask`), not the vocabulary.
    """
    logits = jnp.asarray(logits, jnp.float32)
    if logits.ndim < 1:
        raise ValueError("logits need a trailing vocabulary axis, got a scalar")
    top_k = _static_top_k(top_k, logits.shape[-1])
    top_p = _static_top_p(top_p)
    if top_k > 0 and top_p > 0:
        return jnp.where(_top_k_top_p_mask(logits, top_k, top_p), -jnp.inf, logits)
    if top_k > 0:
        logits = jnp.where(_top_k_mask(logits, top_k), -jnp.inf, logits)
    if top_p > 0:
        logits = jnp.where(_top_p_mask(logits, top_p), -jnp.inf, logits)
    return logits


def sample_tokens_from_logits(key, logits, top_k: int = 0, top_p: float = 0.0):
    """int32 (...) token ids drawn from softmax(top_k_top_p_filter(logits)) (..., V)."""
    filtered = top_k_top_p_filter(logits, top_k, top_p)
    return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)


def guided_logits(cond_logits, uncond_logits, guidance):
    """Classifier-free guidance on logits: (1 + t) cond - t uncond (t = 0 returns cond)."""
    return (1.0 + guidance) * cond_logits - guidance * uncond_logits


def scale_ratio(si: int, num_scales: int) -> float:
    """si / (num_scales - 1): 0 at the coarsest scale, 1 at the finest."""
    if num_scales < 2:
        raise ValueError(f"VAR sampling needs at least 2 scales, got {num_scales}")
    if not 0 <= si < num_scales:
        raise ValueError(f"scale index {si} out of range for {num_scales} scales")
    return si / (num_scales - 1)


def guidance_at_scale(cfg: float, si: int, num_scales: int) -> float:
    """The CFG weight t of scale si: cfg * si / (num_scales - 1) (linear ramp from 0 to cfg)."""
    return cfg * scale_ratio(si, num_scales)


def gumbel_tau(ratio: float) -> float:
    """Gumbel-softmax temperature of the `more_smooth` path: max(0.27 (1 - 0.95 ratio), 0.005)."""
    return max(0.27 * (1 - ratio * 0.95), 0.005)


def gumbel_soft_codes(key, logits, codebook, ratio: float):
    """Soft code vectors (..., C) of the `more_smooth` path.

    softmax((logits * (1 + ratio) + g) / tau(ratio)) @ codebook with g ~ Gumbel(0, 1) of the
    logits' shape (jax.random.gumbel with `key`). Pass the top-k/top-p filtered logits (..., V),
    as the official code does; codebook is (V, C). `ratio` is si / (num_scales - 1).
    """
    logits = jnp.asarray(logits, jnp.float32)
    codebook = jnp.asarray(codebook, jnp.float32)
    if codebook.ndim != 2 or codebook.shape[0] != logits.shape[-1]:
        raise ValueError(
            f"codebook must be (V, C) with V = {logits.shape[-1]} (the logits' last axis), "
            f"got {tuple(codebook.shape)}"
        )
    noise = jax.random.gumbel(key, logits.shape, jnp.float32)
    weights = jax.nn.softmax((logits * (1.0 + ratio) + noise) / gumbel_tau(ratio), axis=-1)
    return jnp.einsum("...v,vc->...c", weights, codebook, precision=HIGHEST)
