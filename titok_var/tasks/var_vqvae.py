"""VAR's multi-scale VQVAE trained in pixel space (VAR paper Eq. 5; the official repo ships no
trainer): reconstruction + quantizer losses, with optional perceptual and adversarial terms.

Batches are {"image": (B, S, S, 3) in [0, 1], "label"}; the model sees [-1, 1] inside
(`unit_range_pixels`). Eval reports PSNR, SSIM, overall and per-scale codebook usage, and rFID
when `eval.inception_weights` is set.
"""

import jax.numpy as jnp
import numpy as np

from titok_var.evaluation import codebook_stats, reconstruction_sums
from titok_var.losses.reconstruction import reconstruction_loss
from titok_var.models.var_vqvae import VQVAE
from titok_var.tasks.pixel_losses import PixelLossTerms
from titok_var.tasks.titok import compute_dtype
from titok_var.tasks.reconstruction_eval import ReconstructionEval


def build_var_vqvae(model_config) -> VQVAE:
    fields = dict(model_config)
    fields["dtype"] = compute_dtype(fields.get("dtype", "float32"))
    fields["patch_nums"] = tuple(int(p) for p in fields.get("patch_nums", VQVAE.patch_nums))
    fields["ch_mult"] = tuple(int(m) for m in fields.get("ch_mult", VQVAE.ch_mult))
    return VQVAE(**fields)


def flatten_token_maps(indices) -> jnp.ndarray:
    """Token maps (one (B, p, p) per scale) -> (B, L) int32 in VAR's token order."""
    return jnp.concatenate([idx.reshape(idx.shape[0], -1) for idx in indices], axis=1).astype(jnp.int32)


def split_token_maps(tokens, patch_nums) -> list:
    """(B, L) token ids -> one (B, p, p) map per scale (the inverse of `flatten_token_maps`)."""
    maps, start = [], 0
    for p in patch_nums:
        maps.append(tokens[:, start:start + p * p].reshape(tokens.shape[0], p, p))
        start += p * p
    if start != tokens.shape[1]:
        raise ValueError(f"{tokens.shape[1]} tokens do not match patch_nums {tuple(patch_nums)} ({start} tokens)")
    return maps


class VarVQVAETask(ReconstructionEval):
    """Trains the multi-scale VQVAE; evaluates PSNR, SSIM, codebook usage (per scale) and rFID."""

    def __init__(self, config):
        self.config = config
        self.model = build_var_vqvae(config.model)
        self.pixel_terms = PixelLossTerms(config.loss, self.model.image_size, config.train.num_steps)
        if not self.model.unit_range_pixels:
            raise ValueError("the data pipeline yields [0, 1] images: set model.unit_range_pixels=True")
        if config.data.image_size != self.model.image_size:
            raise ValueError(
                f"data.image_size {config.data.image_size} differs from the VQVAE's image size "
                f"{self.model.image_size} (patch_nums[-1] x downsampling {self.model.downsample_factor})"
            )

    @property
    def patch_nums(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.model.patch_nums)

    def dummy_images(self, batch_size: int = 1):
        size = self.model.image_size
        return jnp.zeros((batch_size, size, size, 3), jnp.float32)

    def init_params(self, rng):
        return self.model.init(rng, self.dummy_images())["params"]

    def trainable_mask(self):
        return None

    def init_task_state(self, rng):
        """The discriminator (+ its optimizer, LeCam EMAs) and perceptual net, when configured."""
        return self.pixel_terms.init_state(rng) if self.pixel_terms.active else None

    def initial_overrides(self):
        """The converted perceptual weights, loaded on the host before the first step."""
        task_state = self.pixel_terms.initial_overrides()
        return {"task_state": task_state} if task_state else None

    def loss_fn(self, params, batch, rng, step, task_state=None):
        del rng
        images = batch["image"]
        reconstructions, aux = self.model.apply({"params": params}, images)
        loss_config = self.config.loss
        rec = reconstruction_loss(images, reconstructions, loss_config.reconstruction)
        loss = loss_config.reconstruction_weight * rec + loss_config.quantizer_weight * aux["quantizer_loss"]
        extra_metrics = {}
        if task_state is not None:
            def reconstruct_from_last(last_layer):
                swapped = dict(params, decoder=dict(params["decoder"], conv_out=last_layer))
                return self.model.apply({"params": swapped}, images)[0]

            extra, extra_metrics = self.pixel_terms.generator_terms(
                task_state, images, reconstructions, step, last_layer=params["decoder"]["conv_out"],
                reconstruct_from_last=reconstruct_from_last)
            loss = loss + extra
        tokens = flatten_token_maps(aux["indices"])
        counts = codebook_stats.code_histogram(tokens, self.model.codebook_size)
        metrics = {
            "reconstruction_loss": rec,
            "quantizer_loss": aux["quantizer_loss"],
            "commitment_loss": aux["commitment_loss"],
            "codebook_loss": aux["codebook_loss"],
            "batch_codebook_usage": jnp.mean(counts > 0),
            **extra_metrics,
        }
        return loss, (metrics, {"reconstructions": reconstructions})

    def update_task_state(self, task_state, outputs, batch, rng, step):
        if task_state is None:
            return None, {}
        return self.pixel_terms.update(task_state, batch["image"], outputs["reconstructions"], step)

    def encode_tokens(self, params, images):
        """Images in [0, 1] -> (B, L) token ids, all scales flattened coarse to fine."""
        return flatten_token_maps(self.model.apply({"params": params}, images, method=VQVAE.images_to_indices))

    def decode_tokens(self, params, tokens):
        """(B, L) token ids, all scales -> (B, H, W, 3) images in [0, 1]."""
        maps = split_token_maps(tokens, self.patch_nums)
        return jnp.clip(self.model.apply({"params": params}, maps, method=VQVAE.indices_to_images), 0.0, 1.0)

    def reconstruct(self, params, images):
        reconstructions, aux = self.model.apply({"params": params}, images)
        return jnp.clip(reconstructions, 0.0, 1.0), aux

    def eval_step(self, params, batch):
        images, mask = batch["image"], batch["mask"]
        reconstructions, aux = self.reconstruct(params, images)
        size = self.model.codebook_size
        per_scale = jnp.stack([codebook_stats.code_histogram(idx, size, mask=mask) for idx in aux["indices"]])
        sums = dict(reconstruction_sums.image_sums(images, reconstructions, mask), code_counts_per_scale=per_scale)
        n = self.config.eval.grid_images
        return sums, {"original": images[:n], "reconstruction": reconstructions[:n]}

    def summarize_eval(self, sums):
        per_scale = np.asarray(sums["code_counts_per_scale"])
        metrics = {**reconstruction_sums.image_means(sums), **reconstruction_sums.codebook_metrics(per_scale.sum(axis=0))}
        for si, (pn, counts) in enumerate(zip(self.patch_nums, per_scale)):
            metrics[f"codebook_usage_scale{si}_{pn}x{pn}"] = codebook_stats.codebook_usage(counts)
        return metrics
