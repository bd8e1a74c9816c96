"""Tests for titok_var.evaluation: PSNR/SSIM, codebook statistics and image grids."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from titok_var.evaluation.codebook_stats import (
    code_histogram,
    codebook_entropy_bits,
    codebook_perplexity,
    codebook_usage,
)
from titok_var.evaluation.image_grid import make_grid, reconstruction_grid, save_png
from titok_var.evaluation.image_metrics import psnr, ssim


def _random_images(seed, shape=(2, 24, 20, 3)):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _smooth_images(seed, shape=(2, 32, 32, 3)):
    """Low-frequency images, closer to natural images than white noise."""
    coarse = np.random.default_rng(seed).random((shape[0], 4, 4, shape[3]))
    upsampled = np.kron(coarse, np.ones((1, shape[1] // 4, shape[2] // 4, 1)))
    return (0.1 + 0.8 * upsampled).astype(np.float32)


def _reference_ssim(x, y, window=11, sigma=1.5, data_range=1.0):
    """Direct NumPy SSIM: explicit 2-D Gaussian window slid over every valid position."""
    x = np.clip(np.asarray(x, np.float64), 0, data_range)
    y = np.clip(np.asarray(y, np.float64), 0, data_range)
    offsets = np.arange(window) - (window - 1) / 2
    g = np.exp(-(offsets**2) / (2 * sigma**2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    scores = []
    for xi, yi in zip(x, y):
        values = []
        for c in range(xi.shape[-1]):
            for i in range(xi.shape[0] - window + 1):
                for j in range(xi.shape[1] - window + 1):
                    px = xi[i : i + window, j : j + window, c]
                    py = yi[i : i + window, j : j + window, c]
                    mx, my = np.sum(w * px), np.sum(w * py)
                    vx = np.sum(w * (px - mx) ** 2)
                    vy = np.sum(w * (py - my) ** 2)
                    cov = np.sum(w * (px - mx) * (py - my))
                    values.append(
                        (2 * mx * my + c1)
                        * (2 * cov + c2)
                        / ((mx**2 + my**2 + c1) * (vx + vy + c2))
                    )
        scores.append(np.mean(values))
    return np.array(scores)


# --- PSNR ---------------------------------------------------------------------------------


def test_psnr_identical_images_is_large_and_finite():
    x = _random_images(0)
    value = np.asarray(psnr(x, x))
    assert value.shape == (2,)
    assert np.all(np.isfinite(value)) and np.all(value >= 99.0)


def test_psnr_known_mse():
    x = np.full((3, 8, 8, 3), 0.5, np.float32)
    offsets = np.array([0.1, 0.25, 0.01], np.float32)
    y = x + offsets[:, None, None, None]
    expected = 10 * np.log10(1.0 / offsets.astype(np.float64) ** 2)
    np.testing.assert_allclose(np.asarray(psnr(x, y)), expected, rtol=1e-5)


def test_psnr_max_value_and_clipping():
    x = np.full((1, 4, 4, 1), 0.5, np.float32)
    # Overshoot above 1 is clipped, so the error is 0.5 not 1.5.
    np.testing.assert_allclose(np.asarray(psnr(x, x + 1.0)), [10 * np.log10(4.0)], rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(psnr(255 * x, 255 * x + 51, max_value=255.0)),
        [10 * np.log10(255.0**2 / 51.0**2)],
        rtol=1e-5,
    )


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError):
        psnr(np.zeros((1, 8, 8, 3)), np.zeros((1, 8, 9, 3)))
    with pytest.raises(ValueError):
        ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))


# --- SSIM ---------------------------------------------------------------------------------


def test_ssim_identical_images_is_one():
    x = _random_images(1)
    np.testing.assert_allclose(np.asarray(ssim(x, x)), np.ones(2), atol=1e-6)


def test_ssim_of_negative_image_is_negative():
    x = _random_images(2)
    assert np.all(np.asarray(ssim(x, 1.0 - x)) < 0.0)


@pytest.mark.parametrize(
    "shape", [(2, 24, 20, 3), (1, 16, 16, 1), (1, 11, 13, 2), (1, 8, 12, 3)]
)
def test_ssim_matches_numpy_reference(shape):
    x = _random_images(3, shape)
    noise = 0.15 * np.random.default_rng(4).standard_normal(shape)
    y = (x + noise).astype(np.float32)
    window = min(11, shape[1], shape[2])
    np.testing.assert_allclose(
        np.asarray(ssim(x, y)), _reference_ssim(x, y, window=window), atol=1e-5
    )


def test_ssim_matches_skimage_style_gaussian_filter():
    """skimage's recipe: reflect-padded gaussian_filter (truncate 3.5), crop 5 px per side."""
    ndimage = pytest.importorskip("scipy.ndimage")
    x = _smooth_images(5)
    y = np.clip(x + 0.1 * np.random.default_rng(6).standard_normal(x.shape), 0, 1)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)

    def blur(image):
        return ndimage.gaussian_filter(image, sigma=1.5, truncate=3.5)

    c1, c2 = 0.01**2, 0.03**2
    expected = []
    for xi, yi in zip(x64, y64):
        per_channel = []
        for c in range(xi.shape[-1]):
            a, b = xi[..., c], yi[..., c]
            mx, my = blur(a), blur(b)
            vx, vy, cov = blur(a * a) - mx**2, blur(b * b) - my**2, blur(a * b) - mx * my
            s = (2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
            per_channel.append(s[5:-5, 5:-5].mean())
        expected.append(np.mean(per_channel))
    np.testing.assert_allclose(np.asarray(ssim(x, y)), expected, atol=1e-5)


def test_ssim_decreases_with_noise():
    x = _smooth_images(7, shape=(1, 32, 32, 3))
    noise = np.random.default_rng(8).standard_normal(x.shape).astype(np.float32)
    scores = [float(ssim(x, x + level * noise)[0]) for level in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4)]
    assert scores[0] == pytest.approx(1.0, abs=1e-6)
    assert all(a > b for a, b in zip(scores, scores[1:])), scores


def test_metrics_jit_matches_eager():
    x = _random_images(9)
    y = np.clip(x + 0.1 * np.random.default_rng(10).standard_normal(x.shape), 0, 1)
    y = y.astype(np.float32)
    for metric in (psnr, ssim):
        eager = np.asarray(metric(x, y))
        jitted = np.asarray(jax.jit(metric)(jnp.asarray(x), jnp.asarray(y)))
        np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)


# --- codebook statistics ------------------------------------------------------------------


def test_code_histogram_counts_and_mask():
    indices = np.array([[0, 1, 1, 3], [3, 3, 3, 3], [2, 2, 0, 9]], np.int32)
    counts = code_histogram(indices, 5)
    assert counts.dtype == jnp.int32 and counts.shape == (5,)
    # 9 is outside the codebook and ignored.
    np.testing.assert_array_equal(np.asarray(counts), [2, 2, 2, 5, 0])

    mask = np.array([True, False, True])
    np.testing.assert_array_equal(np.asarray(code_histogram(indices, 5, mask)), [2, 2, 2, 1, 0])


def test_code_histogram_jit_and_multidim_indices():
    indices = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 6
    mask = np.array([False, True])
    hist = jax.jit(code_histogram, static_argnums=1)(jnp.asarray(indices), 6, jnp.asarray(mask))
    np.testing.assert_array_equal(np.asarray(hist), np.bincount(indices[1].ravel(), minlength=6))


@pytest.mark.parametrize("used", [1, 3, 8])
def test_usage_and_perplexity_uniform(used):
    size = 8
    counts = np.zeros(size, np.int64)
    counts[:used] = 7
    assert codebook_usage(counts) == pytest.approx(used / size)
    assert codebook_perplexity(counts) == pytest.approx(used)
    assert codebook_entropy_bits(counts) == pytest.approx(math.log2(used))


def test_codebook_stats_nonuniform_and_empty():
    counts = np.array([3, 1, 0, 0])
    probs = np.array([0.75, 0.25])
    entropy = -np.sum(probs * np.log(probs))
    assert codebook_usage(counts) == 0.5
    assert codebook_perplexity(counts) == pytest.approx(np.exp(entropy))
    assert codebook_entropy_bits(counts) == pytest.approx(entropy / np.log(2))

    empty = np.zeros(16, np.int32)
    assert codebook_usage(empty) == 0.0
    assert codebook_perplexity(empty) == 0.0
    assert codebook_entropy_bits(empty) == 0.0


# --- image grids --------------------------------------------------------------------------


def test_make_grid_shape_and_pixels():
    top = np.zeros((3, 4, 5, 3), np.float32)
    top[1] = 0.5
    bottom = np.ones((3, 4, 5, 3), np.float32) * 2.0  # clipped to 1
    bottom[2, 0, 0] = [-1.0, 0.2, 1.0]
    grid = make_grid([top, bottom], pad=2, pad_value=0.0)
    assert grid.dtype == np.uint8
    assert grid.shape == (2 * (4 + 2) + 2, 3 * (5 + 2) + 2, 3)
    # Padding border and gutters.
    assert np.all(grid[:2] == 0) and np.all(grid[:, :2] == 0) and np.all(grid[6:8] == 0)
    # Tile (row 0, col 1) is 0.5 -> 128 (round half to even of 127.5).
    np.testing.assert_array_equal(grid[2:6, 9:14], 128)
    np.testing.assert_array_equal(grid[2:6, 2:7], 0)
    # Tile (row 1, col 2) starts at (8, 16); first pixel clipped and rounded.
    np.testing.assert_array_equal(grid[8, 16], [0, 51, 255])
    np.testing.assert_array_equal(grid[8:12, 17:21], 255)


def test_make_grid_default_white_padding_and_validation():
    grid = make_grid([np.zeros((1, 2, 2, 3))])
    assert grid.shape == (6, 6, 3)
    assert grid[0, 0].tolist() == [255, 255, 255] and grid[2, 2].tolist() == [0, 0, 0]
    with pytest.raises(ValueError):
        make_grid([np.zeros((1, 2, 2, 3)), np.zeros((2, 2, 2, 3))])
    with pytest.raises(ValueError):
        make_grid([])


def test_reconstruction_grid_layout():
    originals = np.zeros((10, 4, 4, 3), np.float32)
    reconstructions = np.ones((10, 4, 4, 3), np.float32)
    grid = reconstruction_grid(originals, reconstructions, max_images=8)
    assert grid.shape == (2 * 6 + 2, 8 * 6 + 2, 3)
    np.testing.assert_array_equal(grid[2:6, 2:6], 0)
    np.testing.assert_array_equal(grid[8:12, 2:6], 255)
    assert reconstruction_grid(originals[:3], reconstructions[:3]).shape == (14, 3 * 6 + 2, 3)


def test_save_png_round_trip(tmp_path):
    image = (np.arange(5 * 7 * 3) % 256).astype(np.uint8).reshape(5, 7, 3)
    path = tmp_path / "nested" / "dir" / "grid.png"
    save_png(path, image)
    with Image.open(path) as loaded:
        assert loaded.format == "PNG"
        np.testing.assert_array_equal(np.asarray(loaded), image)
    # Overwrite in place, and leave no temporary files behind.
    save_png(str(path), 255 - image)
    with Image.open(path) as loaded:
        np.testing.assert_array_equal(np.asarray(loaded), 255 - image)
    assert os.listdir(path.parent) == ["grid.png"]


def test_save_png_rejects_float_images(tmp_path):
    with pytest.raises(ValueError):
        save_png(tmp_path / "x.png", np.zeros((4, 4, 3), np.float32))
    assert not (tmp_path / "x.png").exists()
