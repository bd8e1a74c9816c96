"""k-NN manifold precision and recall (Kynkaanniemi et al. 2019) as the ADM evaluator runs it.

Each feature set's manifold is the union of balls around its points whose radius is the
distance to the k-th nearest neighbour in the same set (k = 3; the point itself is rank 0, so
duplicates count as neighbours). Distances are *squared* Euclidean, ||u||^2 - 2 u.v + ||v||^2
clamped at 0, and a point is inside a ball when its squared distance is <= the squared radius.

* precision = fraction of generated samples inside the real (reference) manifold;
* recall    = fraction of real samples inside the generated manifold.

The N x M distance matrix is never materialised: rows and columns are processed in blocks of
at most `block_size` on the default JAX device (so 50k x 50k is a few dozen block matmuls on an
accelerator). The k smallest distances per row are merged across column blocks with `top_k`.
Blocks are zero-padded to a fixed size (padding masked out), so each block shape compiles once.

ADM computes distances in float16 and falls back to float32 for a block with non-finite
values; `float16=True` reproduces that (per block of our size). The default is float32 with
HIGHEST matmul precision.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_K = 3
DEFAULT_BLOCK_SIZE = 10000


def _sq_distances_in(u: jnp.ndarray, v: jnp.ndarray, dtype) -> jnp.ndarray:
    u = u.astype(dtype)
    v = v.astype(dtype)
    norm_u = jnp.sum(jnp.square(u), axis=1)[:, None]
    norm_v = jnp.sum(jnp.square(v), axis=1)[None, :]
    cross = jnp.matmul(u, v.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.maximum(norm_u - 2 * cross + norm_v, 0).astype(jnp.float32)


def pairwise_sq_distances(u: jnp.ndarray, v: jnp.ndarray, float16: bool = False) -> jnp.ndarray:
    """(N, D) x (M, D) -> (N, M) float32 squared Euclidean distances (ADM's formula)."""
    d32 = _sq_distances_in(u, v, jnp.float32)
    if not float16:
        return d32
    d16 = _sq_distances_in(u, v, jnp.float16)
    return jnp.where(jnp.all(jnp.isfinite(d16)), d16, d32)


@functools.partial(jax.jit, static_argnames=("k", "float16"))
def _knn_merge(running, rows, cols, col_valid, k: int, float16: bool):
    """Smallest k + 1 distances from `rows` to the valid `cols`, merged with `running`."""
    d = pairwise_sq_distances(rows, cols, float16)
    d = jnp.where(col_valid[None, :], d, jnp.inf)
    merged = jnp.concatenate([running, d], axis=1)
    neg_top, _ = jax.lax.top_k(-merged, k + 1)
    return -neg_top  # ascending


@functools.partial(jax.jit, static_argnames=("float16",))
def _cross_membership(rows, row_radii, row_valid, cols, col_radii, col_valid, float16: bool):
    """(rows inside some col ball (R,), cols inside some row ball (C,)) for one block pair."""
    d = pairwise_sq_distances(rows, cols, float16)
    pair_valid = row_valid[:, None] & col_valid[None, :]
    rows_in = jnp.any((d <= col_radii[None, :]) & pair_valid, axis=1)
    cols_in = jnp.any((d <= row_radii[:, None]) & pair_valid, axis=0)
    return rows_in, cols_in


def _blocks(features: np.ndarray, block: int):
    """Yields (start, stop, padded device block (block, D), valid mask (block,))."""
    count, dim = features.shape
    for start in range(0, count, block):
        stop = min(start + block, count)
        chunk = np.zeros((block, dim), np.float32)
        chunk[: stop - start] = features[start:stop]
        valid = np.arange(block) < stop - start
        yield start, stop, jnp.asarray(chunk), jnp.asarray(valid)


def _as_features(features, name: str) -> np.ndarray:
    features = np.asarray(features, np.float32)
    if features.ndim != 2:
        raise ValueError(f"{name}: expected (N, D) features, got shape {features.shape}")
    return features


def _block_size(count: int, block_size: int, k: int) -> int:
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    return max(min(block_size, count), k + 1)


def manifold_radii(
    features,
    k: int = DEFAULT_K,
    block_size: int = DEFAULT_BLOCK_SIZE,
    float16: bool = False,
) -> np.ndarray:
    """Squared distance from each point to its k-th nearest neighbour in `features` (self is
    rank 0), float32 (N,)."""
    features = _as_features(features, "features")
    count = features.shape[0]
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    if count < k + 1:
        raise ValueError(f"need more than k={k} points for k-NN radii, got {count}")
    block = _block_size(count, block_size, k)
    radii = np.empty((count,), np.float32)
    col_blocks = list(_blocks(features, block))
    for start, stop, rows, _ in col_blocks:
        running = jnp.full((block, k + 1), jnp.inf, jnp.float32)
        for _, _, cols, col_valid in col_blocks:
            running = _knn_merge(running, rows, cols, col_valid, k=k, float16=float16)
        radii[start:stop] = np.asarray(running[: stop - start, k])
    return radii


def manifold_membership(
    real,
    real_radii,
    fake,
    fake_radii,
    block_size: int = DEFAULT_BLOCK_SIZE,
    float16: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(real points inside the fake manifold (N_real,), fake points inside the real manifold
    (N_fake,)), both bool, from one blocked pass over the cross distances."""
    real = _as_features(real, "real")
    fake = _as_features(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dims differ: {real.shape[1]} vs {fake.shape[1]}")
    real_radii = np.asarray(real_radii, np.float32).reshape(-1)
    fake_radii = np.asarray(fake_radii, np.float32).reshape(-1)
    if real_radii.shape[0] != real.shape[0] or fake_radii.shape[0] != fake.shape[0]:
        raise ValueError("one radius per point is needed")
    row_block = max(min(block_size, real.shape[0]), 1)
    col_block = max(min(block_size, fake.shape[0]), 1)
    real_in = np.zeros((real.shape[0],), bool)
    fake_in = np.zeros((fake.shape[0],), bool)

    def padded_radii(radii, start, stop, block):
        out = np.zeros((block,), np.float32)
        out[: stop - start] = radii[start:stop]
        return jnp.asarray(out)

    col_blocks = [
        (start, stop, cols, valid, padded_radii(fake_radii, start, stop, col_block))
        for start, stop, cols, valid in _blocks(fake, col_block)
    ]
    for r_start, r_stop, rows, row_valid in _blocks(real, row_block):
        rows_radii = padded_radii(real_radii, r_start, r_stop, row_block)
        for c_start, c_stop, cols, col_valid, cols_radii in col_blocks:
            rows_in, cols_in = _cross_membership(
                rows, rows_radii, row_valid, cols, cols_radii, col_valid, float16=float16
            )
            real_in[r_start:r_stop] |= np.asarray(rows_in)[: r_stop - r_start]
            fake_in[c_start:c_stop] |= np.asarray(cols_in)[: c_stop - c_start]
    return real_in, fake_in


def precision_recall(
    real,
    fake,
    k: int = DEFAULT_K,
    block_size: int = DEFAULT_BLOCK_SIZE,
    float16: bool = False,
) -> tuple[float, float]:
    """ADM-style (precision, recall) of generated `fake` features against `real` features.

    `real` is the reference batch (ADM: the 10k reference images' pool features), `fake` the
    samples' pool features, both (N, D).
    """
    real_radii = manifold_radii(real, k, block_size, float16)
    fake_radii = manifold_radii(fake, k, block_size, float16)
    real_in, fake_in = manifold_membership(real, real_radii, fake, fake_radii, block_size, float16)
    return float(np.mean(fake_in)), float(np.mean(real_in))
