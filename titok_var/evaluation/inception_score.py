"""Inception Score, computed as OpenAI's ADM evaluator (guided-diffusion/evaluations) does.

IS = exp(E_x KL(p(y|x) || p(y))), evaluated on consecutive splits of `split_size` = 5000
predictions (10 splits for the usual 50k samples) in their original order, with p(y) the mean
prediction of the split; the reported score is the mean of the per-split scores. (ADM reports no
standard deviation; `inception_score_splits` gives the per-split values.) The TiTok repository's
torch-fidelity evaluator instead uses one split over all images: pass `split_size=None`.

Inputs are the FID Inception's 1008-way logits (ADM and torch-fidelity use the fc *without*
its bias, which `InceptionV3` returns by default) or probabilities. Everything is float64 on
host; terms with p = 0 contribute 0 (ADM's float32 formula would give NaN there).

`InceptionScoreAccumulator` computes the same numbers from batches, keeping only O(splits x
classes) state: per split, the sum of p log p and the sum of p are additive.
"""

import itertools

import numpy as np
from scipy import special

ADM_SPLIT_SIZE = 5000


def _log_probs(logits=None, probs=None) -> tuple[np.ndarray, np.ndarray]:
    if (logits is None) == (probs is None):
        raise ValueError("pass exactly one of logits or probs")
    if logits is not None:
        logp = special.log_softmax(np.asarray(logits, np.float64), axis=-1)
        p = np.exp(logp)
    else:
        p = np.asarray(probs, np.float64)
        if np.any(p < 0):
            raise ValueError("probabilities must be non-negative")
        with np.errstate(divide="ignore"):
            logp = np.log(p)
    if p.ndim != 2:
        raise ValueError(f"expected (N, classes) predictions, got shape {p.shape}")
    return p, logp


def _p_log_p(p: np.ndarray, logp: np.ndarray) -> np.ndarray:
    return np.where(p > 0, p * np.where(p > 0, logp, 0.0), 0.0)


def _score(neg_entropy_sum: float, marginal_sum: np.ndarray, count: int) -> float:
    """exp(mean KL) from sum_i sum_y p log p and sum_i p over one split of `count` rows."""
    marginal = marginal_sum / count
    cross = float(np.sum(_p_log_p(marginal, np.log(np.where(marginal > 0, marginal, 1.0)))))
    # mean_i KL(p_i || marginal) = (sum_i sum_y p log p - count * sum_y marginal log marginal) / count
    return float(np.exp(neg_entropy_sum / count - cross))


def _split_bounds(count: int, split_size: int | None, num_splits: int | None) -> list[tuple[int, int]]:
    if split_size is not None and num_splits is not None:
        raise ValueError("pass split_size or num_splits, not both")
    if count < 1:
        raise ValueError("no predictions")
    if num_splits is not None:
        if not 1 <= num_splits <= count:
            raise ValueError(f"num_splits must be in [1, {count}], got {num_splits}")
        edges = [i * count // num_splits for i in range(num_splits + 1)]
        return list(itertools.pairwise(edges))
    size = count if split_size is None else split_size
    if size < 1:
        raise ValueError(f"split_size must be positive, got {size}")
    return [(start, min(start + size, count)) for start in range(0, count, size)]


def inception_score_splits(
    logits=None,
    *,
    probs=None,
    split_size: int | None = ADM_SPLIT_SIZE,
    num_splits: int | None = None,
) -> np.ndarray:
    """Per-split Inception Scores of (N, classes) logits or probabilities, shape (splits,).

    Splits are consecutive: `split_size` rows each (the last may be shorter; ADM's rule, the
    default) or, with `num_splits`, N // num_splits-sized parts as improved-GAN/torch-fidelity.
    `split_size=None` and no `num_splits` gives a single split.
    """
    p, logp = _log_probs(logits, probs)
    bounds = _split_bounds(p.shape[0], None if num_splits else split_size, num_splits)
    neg_entropy = np.sum(_p_log_p(p, logp), axis=1)
    return np.asarray([
        _score(float(neg_entropy[a:b].sum()), p[a:b].sum(axis=0), b - a) for a, b in bounds
    ])


def inception_score(
    logits=None,
    *,
    probs=None,
    split_size: int | None = ADM_SPLIT_SIZE,
    num_splits: int | None = None,
) -> float:
    """Mean of `inception_score_splits` (ADM's reported number with the defaults)."""
    splits = inception_score_splits(
        logits, probs=probs, split_size=split_size, num_splits=num_splits
    )
    return float(np.mean(splits))


class InceptionScoreAccumulator:
    """Streaming Inception Score over consecutive splits of `split_size` rows (ADM's splits).

    Feed batches in sample order with `update(logits=...)` or `update(probs=...)`; rows are
    assigned to split `index // split_size` by their running index, so the result equals
    `inception_score_splits` of the concatenated predictions for any batching.
    `split_size=None` keeps one split.
    """

    def __init__(self, num_classes: int, split_size: int | None = ADM_SPLIT_SIZE):
        if split_size is not None and split_size < 1:
            raise ValueError(f"split_size must be positive, got {split_size}")
        self.num_classes = num_classes
        self.split_size = split_size
        self.count = 0
        self._neg_entropy: list[float] = []
        self._marginal: list[np.ndarray] = []
        self._counts: list[int] = []

    def update(self, logits=None, *, probs=None, mask=None) -> "InceptionScoreAccumulator":
        """Adds a batch; `mask` (N,) bool drops padding rows."""
        p, logp = _log_probs(logits, probs)
        if p.shape[1] != self.num_classes:
            raise ValueError(f"expected {self.num_classes} classes, got {p.shape[1]}")
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (p.shape[0],):
                raise ValueError(f"mask shape {mask.shape} does not match {p.shape[0]} rows")
            p, logp = p[mask], logp[mask]
        neg_entropy = np.sum(_p_log_p(p, logp), axis=1)
        start = 0
        while start < p.shape[0]:
            if not self._counts or (
                self.split_size is not None and self._counts[-1] == self.split_size
            ):
                self._neg_entropy.append(0.0)
                self._marginal.append(np.zeros((self.num_classes,), np.float64))
                self._counts.append(0)
            room = p.shape[0] - start
            if self.split_size is not None:
                room = min(room, self.split_size - self._counts[-1])
            stop = start + room
            self._neg_entropy[-1] += float(neg_entropy[start:stop].sum())
            self._marginal[-1] += p[start:stop].sum(axis=0)
            self._counts[-1] += room
            start = stop
        self.count += p.shape[0]
        return self

    def split_scores(self) -> np.ndarray:
        if self.count == 0:
            raise ValueError("no predictions accumulated")
        return np.asarray([
            _score(h, m, n) for h, m, n in zip(self._neg_entropy, self._marginal, self._counts)
        ])

    def result(self) -> float:
        """Mean over splits, as `inception_score`."""
        return float(np.mean(self.split_scores()))
