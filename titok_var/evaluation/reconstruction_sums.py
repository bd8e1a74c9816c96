"""Reconstruction eval metrics of a tokenizer, summed over the real images of an eval batch (its
padding rows have mask False) and turned into means once the split is done. Shared by TiTok,
TiTok stage 2 and VAR's VQVAE so that every tokenizer reports the same numbers the same way."""

import jax.numpy as jnp
import numpy as np

from titok_var.evaluation import codebook_stats, image_metrics


def image_sums(images, reconstructions, mask) -> dict:
    """Per-batch sums (jittable): count, PSNR, SSIM and MSE of the rows where `mask` is True."""
    weights = mask.astype(jnp.float32)
    return {
        "count": jnp.sum(weights),
        "psnr": jnp.sum(image_metrics.psnr(images, reconstructions) * weights),
        "ssim": jnp.sum(image_metrics.ssim(images, reconstructions) * weights),
        "mse": jnp.sum(jnp.mean(jnp.square(images - reconstructions), axis=(1, 2, 3)) * weights),
    }


def image_means(sums) -> dict:
    """Means over the split from summed `image_sums` (host floats)."""
    count = max(float(sums["count"]), 1.0)
    return {"psnr": float(sums["psnr"]) / count, "ssim": float(sums["ssim"]) / count,
            "mse": float(sums["mse"]) / count, "num_examples": float(sums["count"])}


def codebook_metrics(code_counts) -> dict:
    """Usage (fraction of codes used) and perplexity of a summed code histogram."""
    counts = np.asarray(code_counts)
    return {"codebook_usage": float(codebook_stats.codebook_usage(counts)),
            "codebook_perplexity": float(codebook_stats.codebook_perplexity(counts))}
