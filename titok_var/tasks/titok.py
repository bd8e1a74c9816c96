"""TiTok trained single-stage in pixel space: reconstruction + quantizer losses."""

import jax.numpy as jnp

from titok_var.evaluation import codebook_stats, reconstruction_sums
from titok_var.losses.reconstruction import reconstruction_loss
from titok_var.models.titok import TiTok
from titok_var.tasks.reconstruction_eval import ReconstructionEval

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(name: str):
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def build_titok(model_config) -> TiTok:
    fields = dict(model_config)
    fields["dtype"] = compute_dtype(fields.get("dtype", "float32"))
    return TiTok(**fields)


class TiTokTask(ReconstructionEval):
    """Trains TiTok to reconstruct pixels; evaluates PSNR, SSIM and codebook usage."""

    def __init__(self, config):
        self.config = config
        self.model = build_titok(config.model)
        if config.data.image_size != config.model.image_size:
            raise ValueError(
                f"data.image_size {config.data.image_size} differs from model.image_size "
                f"{config.model.image_size}"
            )
        if config.model.decoder_head != "pixels":
            raise ValueError(
                "the single-stage pixel recipe needs model.decoder_head='pixels', got "
                f"{config.model.decoder_head!r}"
            )

    def dummy_images(self, batch_size: int = 1):
        size = self.config.model.image_size
        return jnp.zeros((batch_size, size, size, 3), jnp.float32)

    def init_params(self, rng):
        return self.model.init(rng, self.dummy_images())["params"]

    def trainable_mask(self):
        return None

    def loss_fn(self, params, batch, rng, step):
        del rng, step  # no dropout, sampling or scheduled loss terms in this recipe
        images = batch["image"]
        reconstructions, aux = self.model.apply({"params": params}, images)
        loss_config = self.config.loss
        rec = reconstruction_loss(images, reconstructions, loss_config.reconstruction)
        loss = loss_config.reconstruction_weight * rec + loss_config.quantizer_weight * aux["quantizer_loss"]
        counts = codebook_stats.code_histogram(aux["indices"], self.config.model.codebook_size)
        metrics = {
            "loss": loss,
            "reconstruction_loss": rec,
            "quantizer_loss": aux["quantizer_loss"],
            "commitment_loss": aux["commitment_loss"],
            "codebook_loss": aux["codebook_loss"],
            "batch_codebook_usage": jnp.mean(counts > 0),
        }
        return loss, metrics

    def encode_tokens(self, params, images):
        """Images in [0, 1] -> token ids (B, K) int32 (what pre-tokenization stores)."""
        _, aux = self.model.apply({"params": params}, images, method=TiTok.encode)
        return aux["indices"]

    def decode_tokens(self, params, tokens):
        """(B, K) token ids -> (B, H, W, 3) images in [0, 1]: how every consumer of a tokenizer
        (generators, pre-tokenization checks) turns tokens into pixels."""
        return jnp.clip(self.model.apply({"params": params}, tokens, method=TiTok.decode_tokens_to_pixels), 0.0, 1.0)

    def reconstruct(self, params, images):
        reconstructions, aux = self.model.apply({"params": params}, images)
        return jnp.clip(reconstructions, 0.0, 1.0), aux

    def eval_step(self, params, batch):
        images, mask = batch["image"], batch["mask"]
        reconstructions, aux = self.reconstruct(params, images)
        sums = dict(reconstruction_sums.image_sums(images, reconstructions, mask),
                    code_counts=codebook_stats.code_histogram(aux["indices"], self.config.model.codebook_size, mask=mask))
        n = self.config.eval.grid_images
        preview = {"original": images[:n], "reconstruction": reconstructions[:n]}
        return sums, preview

    def summarize_eval(self, sums):
        return {**reconstruction_sums.image_means(sums), **reconstruction_sums.codebook_metrics(sums["code_counts"])}
