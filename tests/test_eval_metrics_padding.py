"""Reconstruction eval numbers against an independent NumPy computation over exactly the real
images, on an eval split whose last batch is half padding (20 images, batches of 8): PSNR, SSIM,
MSE, codebook usage and perplexity (TiTok) and per-scale codebook usage (VAR VQVAE). Padding rows
reconstruct to something, so metrics that counted them would be off by far more than the tolerance
(checked in each test)."""

import jax
import numpy as np
import pytest

from titok_var.data import builder, transforms
from titok_var.training import evaluation, state_init, trainer
from tests.helpers import tiny_titok_config, tiny_var_vqvae_config

NUM_EXAMPLES, BATCH = 20, 8


def _gaussian_window(size=11, sigma=1.5):
    offsets = np.arange(size) - (size - 1) / 2.0
    weights = np.exp(-offsets**2 / (2 * sigma**2))
    return weights / weights.sum()


def _blur_valid(image, size):
    """Separable Gaussian over H and W, 'valid' region, float64."""
    taps = _gaussian_window(size)
    rows = np.stack([np.tensordot(taps, image[i:i + size], axes=(0, 0)) for i in range(image.shape[0] - size + 1)])
    return np.stack([np.tensordot(taps, rows[:, j:j + size], axes=(0, 1)) for j in range(image.shape[1] - size + 1)],
                    axis=1)


def numpy_ssim(x, y):
    """Wang et al. 2004 with a Gaussian window (11 taps or the image side, sigma 1.5), K 0.01/0.03,
    population statistics, averaged over the valid map and channels."""
    size = min(11, x.shape[0], x.shape[1])
    mu_x, mu_y = _blur_valid(x, size), _blur_valid(y, size)
    var_x = _blur_valid(x * x, size) - mu_x**2
    var_y = _blur_valid(y * y, size) - mu_y**2
    cov = _blur_valid(x * y, size) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    return float(np.mean((2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))))


def numpy_image_metrics(images, reconstructions):
    x = np.clip(np.asarray(images, np.float64), 0, 1)
    y = np.clip(np.asarray(reconstructions, np.float64), 0, 1)
    mse = np.mean((x - y) ** 2, axis=(1, 2, 3))
    return {"psnr": float(np.mean(10 * np.log10(1.0 / mse))), "mse": float(np.mean(mse)),
            "ssim": float(np.mean([numpy_ssim(a, b) for a, b in zip(x, y)]))}


def numpy_usage_and_perplexity(indices, codebook_size):
    counts = np.bincount(np.asarray(indices).ravel(), minlength=codebook_size).astype(np.float64)
    probs = counts[counts > 0] / counts.sum()
    return np.count_nonzero(counts) / codebook_size, float(np.exp(-np.sum(probs * np.log(probs))))


def _eval_and_real_images(config, tmp_path):
    """(metrics from the eval loop, the real eval images, host params, task)."""
    config.eval.update(num_examples=NUM_EXAMPLES, global_batch_size=BATCH)
    exp = trainer.build_experiment(config, str(tmp_path))
    with exp.context():
        state = state_init.create_train_state(exp.task, exp.tx, config, exp.mesh, exp.rules, exp.layout)
        metrics, _ = evaluation.evaluate(exp.task, state.params, exp.layout.shardings.params, config, exp.mesh,
                                         task_state=state.task_state)
    source = builder.build_source(config.data, "eval")
    resize = transforms.resize_from_config(config.data)
    images = np.stack([transforms.eval_transform(source.load(i)[0], config.data.image_size, resize)
                       for i in range(NUM_EXAMPLES)])
    return metrics, images, jax.device_get(state.params), exp.task


def test_titok_eval_metrics_equal_numpy_over_the_real_images_only(tmp_path):
    config = tiny_titok_config()
    metrics, images, params, task = _eval_and_real_images(config, tmp_path)
    assert metrics["num_examples"] == NUM_EXAMPLES
    reconstructions, aux = jax.jit(task.reconstruct)(params, images)
    expected = numpy_image_metrics(images, reconstructions)
    usage, perplexity = numpy_usage_and_perplexity(aux["indices"], config.model.codebook_size)
    for name in ("psnr", "ssim", "mse"):
        assert metrics[name] == pytest.approx(expected[name], rel=1e-4), name
    assert metrics["codebook_usage"] == pytest.approx(usage, abs=1e-12)
    assert metrics["codebook_perplexity"] == pytest.approx(perplexity, rel=1e-6)
    # The padded rows (zeros) would move the numbers far beyond the tolerance.
    padded = np.concatenate([images, np.zeros((4, *images.shape[1:]), np.float32)])
    with_padding = numpy_image_metrics(padded, jax.jit(task.reconstruct)(params, padded)[0])
    for name in ("psnr", "ssim", "mse"):
        assert abs(with_padding[name] - expected[name]) > 1e-2 * abs(expected[name]), name


def test_var_vqvae_per_scale_codebook_usage_counts_the_real_images_only(tmp_path):
    config = tiny_var_vqvae_config()
    metrics, images, params, task = _eval_and_real_images(config, tmp_path)
    assert metrics["num_examples"] == NUM_EXAMPLES
    reconstructions, aux = jax.jit(task.reconstruct)(params, images)
    expected = numpy_image_metrics(images, reconstructions)
    for name in ("psnr", "ssim", "mse"):
        assert metrics[name] == pytest.approx(expected[name], rel=1e-4), name
    size = config.model.codebook_size
    for si, (pn, indices) in enumerate(zip(task.patch_nums, aux["indices"])):
        usage, _ = numpy_usage_and_perplexity(indices, size)
        assert metrics[f"codebook_usage_scale{si}_{pn}x{pn}"] == pytest.approx(usage, abs=1e-12)
    all_scales = np.concatenate([np.asarray(i).reshape(NUM_EXAMPLES, -1) for i in aux["indices"]], axis=1)
    usage, perplexity = numpy_usage_and_perplexity(all_scales, size)
    assert metrics["codebook_usage"] == pytest.approx(usage, abs=1e-12)
    assert metrics["codebook_perplexity"] == pytest.approx(perplexity, rel=1e-6)
