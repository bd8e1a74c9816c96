"""Frechet Inception Distance: activation statistics, the distance, and reference-stat files.

Everything here is host-side float64 NumPy/SciPy. Activations come from
`titok_var.evaluation.inception` (2048-d pool features), batch by batch:

    stats = ActivationStatistics(2048)
    for batch in batches:
        stats.update(pool_features, mask=valid)   # device arrays are fetched to host
    mu, sigma = stats.mean, stats.covariance
    fid = frechet_distance(mu, sigma, *load_statistics("VIRTUAL_imagenet256_labeled.npz"))

The covariance is the unbiased one (divides by N - 1), as `np.cov(rowvar=False)` in pytorch-fid
and the ADM evaluator. `frechet_distance` is their formula, including the fallback that adds
eps to both diagonals when sqrtm of the product is not finite, and the check that rejects a
matrix square root whose diagonal has an imaginary part above 1e-3.
"""

import io
import os
import warnings
import zipfile
from collections.abc import Iterator

import numpy as np
from scipy import linalg

# Largest |imag| tolerated on the diagonal of sqrtm(sigma1 @ sigma2) (pytorch-fid and ADM).
IMAGINARY_ATOL = 1e-3


def _as_features(features, dim: int | None = None) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"expected (N, D) activations, got shape {features.shape}")
    if dim is not None and features.shape[1] != dim:
        raise ValueError(f"expected activations of dimension {dim}, got {features.shape[1]}")
    return features


def compute_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) activations -> (mean (D,), unbiased covariance (D, D)), float64, in one shot."""
    features = _as_features(features)
    if features.shape[0] < 2:
        raise ValueError("need at least 2 activations for a covariance")
    return features.mean(axis=0), np.cov(features, rowvar=False)


class ActivationStatistics:
    """Streaming mean and covariance of activations, float64, O(D^2) memory.

    Batches are merged with the pairwise (Chan et al.) update: each batch's own mean and
    centred scatter matrix are combined with the running ones, which avoids the cancellation
    of the raw sum-of-squares formula. Results equal `np.mean` / `np.cov(rowvar=False)` of all
    rows up to float64 rounding, whatever the batching. Accumulators from different hosts or
    shards combine with `merge`.
    """

    def __init__(self, dim: int):
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.count = 0
        self._mean = np.zeros((dim,), np.float64)
        self._scatter = np.zeros((dim, dim), np.float64)  # sum of (x - mean)(x - mean)^T

    def _combine(self, count: int, mean: np.ndarray, scatter: np.ndarray) -> None:
        if count == 0:
            return
        total = self.count + count
        delta = mean - self._mean
        self._mean = self._mean + delta * (count / total)
        self._scatter = self._scatter + scatter + np.outer(delta, delta) * (self.count * count / total)
        self.count = total

    def update(self, features, mask=None) -> "ActivationStatistics":
        """Adds the rows of `features` (N, D); `mask` (N,) bool drops padding rows."""
        features = _as_features(features, self.dim)
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (features.shape[0],):
                raise ValueError(f"mask shape {mask.shape} does not match {features.shape[0]} rows")
            features = features[mask]
        count = features.shape[0]
        if count == 0:
            return self
        mean = features.mean(axis=0)
        centred = features - mean
        self._combine(count, mean, centred.T @ centred)
        return self

    def merge(self, other: "ActivationStatistics") -> "ActivationStatistics":
        """Folds another accumulator (same dim) into this one."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge dim {other.dim} into dim {self.dim}")
        self._combine(other.count, other._mean, other._scatter)
        return self

    @property
    def mean(self) -> np.ndarray:
        if self.count < 1:
            raise ValueError("no activations accumulated")
        return self._mean.copy()

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased (N - 1) covariance."""
        if self.count < 2:
            raise ValueError(f"need at least 2 activations for a covariance, have {self.count}")
        return self._scatter / (self.count - 1)

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, covariance)."""
        return self.mean, self.covariance


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)), in float64 on host.

    As pytorch-fid / ADM: scipy's sqrtm of the product; if that is not finite, eps is added to
    both diagonals and it is retried (with a warning); a complex result is accepted only when
    its diagonal's imaginary parts are within 1e-3 of 0, and then its real part is used.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in shape: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(
            f"covariances {sigma1.shape}, {sigma2.shape} do not match means of {mu1.shape}"
        )
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"FID: sqrtm of the covariance product is singular; adding {eps} to the diagonals",
            stacklevel=2,
        )
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=IMAGINARY_ATOL):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid_from_features(features1, features2, eps: float = 1e-6) -> float:
    """FID between two in-memory activation sets (N1, D) and (N2, D)."""
    mu1, sigma1 = compute_statistics(features1)
    mu2, sigma2 = compute_statistics(features2)
    return frechet_distance(mu1, sigma1, mu2, sigma2, eps)


def save_statistics(path: str, mu, sigma, **extra) -> None:
    """Writes `mu`, `sigma` (float64) and any extra arrays to an .npz (pytorch-fid/ADM keys)."""
    mu = np.asarray(mu, np.float64)
    sigma = np.asarray(sigma, np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"mu {mu.shape} and sigma {sigma.shape} are not (D,) and (D, D)")
    with open(path, "wb") as f:  # an open file keeps numpy from appending ".npz"
        np.savez(f, mu=mu, sigma=sigma, **extra)


def load_statistics(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) in float64 from an .npz.

    Reads the `mu` / `sigma` keys (pytorch-fid stats files; ADM reference batches such as
    VIRTUAL_imagenet256_labeled.npz, which also hold `mu_s` / `sigma_s` spatial stats and
    reference *images* under `arr_0`). Without `mu`/`sigma`, a 2-D `arr_0` is taken as (N, D)
    activations and its statistics are computed; a 4-D `arr_0` is images, which have to go
    through the Inception network first (see `iter_npz_batches`).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"reference statistics {path} not found")
    with np.load(path) as data:
        if "mu" in data.files and "sigma" in data.files:
            return np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
        if "arr_0" in data.files:
            arr = data["arr_0"]
            if arr.ndim == 2:
                return compute_statistics(arr)
            raise ValueError(
                f"{path}: arr_0 has shape {arr.shape} (images, not activations) and there are no "
                "mu/sigma keys; compute Inception activations of the images first"
            )
        raise ValueError(f"{path} has neither mu/sigma nor arr_0 (keys: {data.files})")


def _npz_member(path: str, key: str) -> tuple[zipfile.ZipFile, io.BufferedIOBase]:
    archive = zipfile.ZipFile(path)
    name = f"{key}.npy"
    if name not in archive.namelist():
        archive.close()
        raise KeyError(f"{path} has no array {key!r}")
    return archive, archive.open(name)


def _read_npy_header(member) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(member)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(member)
    raise ValueError(f"unsupported .npy format version {version}")


def npz_array_info(path: str, key: str = "arr_0") -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of one array of an .npz, read from its header only."""
    archive, member = _npz_member(path, key)
    with archive, member:
        shape, _, dtype = _read_npy_header(member)
    return tuple(shape), dtype


def iter_npz_batches(path: str, batch_size: int, key: str = "arr_0") -> Iterator[np.ndarray]:
    """Streams the leading-axis batches of one (uncompressed or compressed) .npz array without
    loading it whole, e.g. the 50k uint8 samples of an ADM sample batch or the 10k reference
    images of VIRTUAL_imagenet256_labeled.npz."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    archive, member = _npz_member(path, key)
    with archive, member:
        shape, fortran_order, dtype = _read_npy_header(member)
        if fortran_order or dtype.hasobject or not shape:
            raise ValueError(f"{path}:{key} is not a C-ordered numeric array with a batch axis")
        row_shape = tuple(shape[1:])
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
        for start in range(0, shape[0], batch_size):
            rows = min(batch_size, shape[0] - start)
            data = member.read(rows * row_bytes)
            if len(data) != rows * row_bytes:
                raise ValueError(f"{path}:{key} ended early at row {start}")
            yield np.frombuffer(data, dtype=dtype).reshape((rows, *row_shape))
