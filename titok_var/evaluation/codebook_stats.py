"""Codebook utilisation statistics for vector-quantised tokenizers.

`code_histogram` runs on device (jit-able) so per-batch counts can be summed across steps;
the summary statistics are host-side and take the accumulated (K,) counts as numpy.
"""

import math
from typing import Optional

import jax.numpy as jnp
import numpy as np


def code_histogram(
    indices: jnp.ndarray, codebook_size: int, mask: Optional[jnp.ndarray] = None
) -> jnp.ndarray:
    """Counts of each code in `indices` (B, ...) -> (codebook_size,) int32.

    `mask` (B,) bool drops whole examples (e.g. batch padding). Indices outside
    [0, codebook_size) are ignored rather than wrapped or clipped. `codebook_size` sets the
    output shape, so it must be static under jit.
    """
    indices = jnp.asarray(indices)
    if indices.ndim == 0:
        raise ValueError("indices need a leading batch dimension")
    batch = indices.shape[0]
    flat = indices.reshape(batch, -1).astype(jnp.int32)
    in_range = (flat >= 0) & (flat < codebook_size)
    if mask is not None:
        mask = jnp.asarray(mask, dtype=bool)
        if mask.shape != (batch,):
            raise ValueError(f"mask shape {mask.shape} does not match batch size {batch}")
        in_range = in_range & mask[:, None]
    weights = in_range.astype(jnp.int32).reshape(-1)
    # Out-of-range entries carry weight 0, so any in-range stand-in index is harmless.
    safe = jnp.where(in_range, flat, 0).reshape(-1)
    return jnp.zeros((codebook_size,), jnp.int32).at[safe].add(weights)


def _as_counts(counts) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1:
        raise ValueError(f"expected a (K,) histogram, got shape {counts.shape}")
    if np.any(counts < 0):
        raise ValueError("histogram counts must be non-negative")
    return counts


def codebook_usage(counts) -> float:
    """Fraction of the K codes used at least once."""
    counts = _as_counts(counts)
    if counts.size == 0:
        return 0.0
    return float(np.count_nonzero(counts)) / counts.size


def codebook_entropy_nats(counts) -> float:
    """Entropy of the normalised histogram in nats; 0 for an empty histogram."""
    counts = _as_counts(counts)
    total = counts.sum()
    if total <= 0:
        return 0.0
    probs = counts[counts > 0] / total
    # max(0, .) absorbs a -0.0 / tiny negative from rounding when one code holds all the mass.
    return max(0.0, float(-np.sum(probs * np.log(probs))))


def codebook_entropy_bits(counts) -> float:
    """Entropy of the normalised histogram in bits; 0 for an empty histogram."""
    return codebook_entropy_nats(counts) / math.log(2.0)


def codebook_perplexity(counts) -> float:
    """exp(entropy in nats): the effective number of equally used codes; 0 if empty."""
    counts = _as_counts(counts)
    if counts.sum() <= 0:
        return 0.0
    return math.exp(codebook_entropy_nats(counts))
