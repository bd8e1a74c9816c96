"""Per-image reconstruction metrics (PSNR, SSIM) for batches of NHWC images.

Both metrics take float images in [0, max_value], clip them to that range first (decoder
outputs can overshoot), compute in float32 and return one value per image, shape (B,).
Everything is pure jnp; window sizes depend only on static shapes. `psnr` and `ssim` are
jitted themselves so eager calls compile once per shape instead of dispatching ~100 tiny ops,
and they can still be called from inside other jitted functions.
"""

import jax
import jax.numpy as jnp

SSIM_WINDOW_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# Keeps PSNR finite (100 dB at max_value=1) when the reconstruction is exact.
MSE_FLOOR = 1e-10


def _check_pair(reference: jnp.ndarray, reconstruction: jnp.ndarray) -> None:
    if reference.shape != reconstruction.shape:
        raise ValueError(f"shape mismatch: {reference.shape} vs {reconstruction.shape}")
    if reference.ndim != 4:
        raise ValueError(f"expected NHWC images, got shape {reference.shape}")


def _prepare(images: jnp.ndarray, max_value: float) -> jnp.ndarray:
    """Casts to float32 and clips to [0, max_value]."""
    return jnp.clip(jnp.asarray(images).astype(jnp.float32), 0.0, max_value)


@jax.jit
def psnr(
    reference: jnp.ndarray, reconstruction: jnp.ndarray, max_value: float = 1.0
) -> jnp.ndarray:
    """Peak signal-to-noise ratio in dB per image, (B, H, W, C) x 2 -> (B,)."""
    reference, reconstruction = jnp.asarray(reference), jnp.asarray(reconstruction)
    _check_pair(reference, reconstruction)
    x = _prepare(reference, max_value)
    y = _prepare(reconstruction, max_value)
    mse = jnp.mean(jnp.square(x - y), axis=(1, 2, 3))
    return 10.0 * jnp.log10(max_value**2 / jnp.maximum(mse, MSE_FLOOR))


def gaussian_window(size: int, sigma: float = SSIM_SIGMA) -> jnp.ndarray:
    """Normalised 1-D Gaussian of `size` taps centred on the window (also for even sizes)."""
    offsets = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2.0
    weights = jnp.exp(-jnp.square(offsets) / (2.0 * sigma**2))
    return weights / jnp.sum(weights)


def _filter_valid(images: jnp.ndarray, taps: jnp.ndarray, axis: int) -> jnp.ndarray:
    """'Valid' correlation of `images` with 1-D `taps` along `axis`."""
    size = taps.shape[0]
    out_len = images.shape[axis] - size + 1
    # A weighted sum of shifted slices is exact float32 elementwise work, so unlike a conv it
    # cannot be silently lowered to TF32/bf16 on accelerators.
    result = None
    for k in range(size):
        term = taps[k] * jax.lax.slice_in_dim(images, k, k + out_len, axis=axis)
        result = term if result is None else result + term
    return result


def _gaussian_blur_valid(images: jnp.ndarray, size: int) -> jnp.ndarray:
    """Separable size x size Gaussian filter over the H, W axes of NHWC images, 'valid' region."""
    taps = gaussian_window(size)
    return _filter_valid(_filter_valid(images, taps, axis=1), taps, axis=2)


def ssim_window_size(height: int, width: int) -> int:
    """11, shrunk to the smaller image side for images under 11 px.

    skimage and tf.image.ssim reject such images instead; truncating the window (same sigma)
    keeps small test images and thumbnails usable.
    """
    return min(SSIM_WINDOW_SIZE, height, width)


@jax.jit
def ssim(
    reference: jnp.ndarray, reconstruction: jnp.ndarray, max_value: float = 1.0
) -> jnp.ndarray:
    """Structural similarity (Wang et al. 2004) per image, (B, H, W, C) x 2 -> (B,).

    Gaussian window 11x11 with sigma 1.5, K1 = 0.01, K2 = 0.03, population (not sample)
    statistics, SSIM map on the 'valid' region of each channel, averaged over positions and
    channels. Matches skimage `structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, channel_axis=-1)` and `tf.image.ssim`. Images with a side
    under 11 px, which those reject, use a window of that side (sigma unchanged), so the map
    has a single position along it.
    """
    reference, reconstruction = jnp.asarray(reference), jnp.asarray(reconstruction)
    _check_pair(reference, reconstruction)
    x = _prepare(reference, max_value)
    y = _prepare(reconstruction, max_value)
    size = ssim_window_size(x.shape[1], x.shape[2])

    # One filtering pass over all five moment maps, stacked on a new trailing axis.
    moments = jnp.stack([x, y, x * x, y * y, x * y], axis=-1)
    mu_x, mu_y, e_xx, e_yy, e_xy = jnp.moveaxis(_gaussian_blur_valid(moments, size), -1, 0)

    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov_xy = e_xy - mu_x * mu_y
    c1 = (SSIM_K1 * max_value) ** 2
    c2 = (SSIM_K2 * max_value) ** 2
    numerator = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return jnp.mean(numerator / denominator, axis=(1, 2, 3))
