"""TiTok's two-stage recipe (paper Sec. 3.3, official ReconstructionLoss_Stage1/_Stage2).

* Stage 1 ("titok_stage1", proxy codes): a frozen MaskGIT-VQGAN encodes each image to a 16x16
  grid of codes, on the fly (random crops) or read from codes pre-computed for the centre crop and
  its mirror (`proxy.precomputed_dir`, tools/precompute_proxy_codes.py); TiTok's proxy-code head is trained with cross-entropy on them plus the
  quantizer losses. The VQGAN (encoder for the targets, decoder for eval pictures) lives in the
  task state, loaded from `proxy.vqgan_weights` (a converted .npz / released .bin) or randomly
  initialised with `proxy.random_init` (tests only).
* Stage 2 ("titok_stage2", decoder fine-tuning): starts from a stage-1 export plus the VQGAN
  decoder and codebook as TiTok's pixel decoder; the encoder, latent tokens and quantizer are
  frozen; decoder + pixel decoder train in pixel space with l2 + perceptual + PatchGAN
  (tasks/pixel_losses.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from titok_var.data import proxy_code_table
from titok_var.evaluation import codebook_stats, image_metrics, reconstruction_sums
from titok_var.losses.reconstruction import reconstruction_loss
from titok_var.models import maskgit_vqgan
from titok_var.models.maskgit_vqgan import MaskGitVQGAN
from titok_var.models.titok import TiTok, proxy_code_grid
from titok_var.tasks.pixel_losses import PixelLossTerms
from titok_var.tasks.titok import build_titok
from titok_var.tasks.reconstruction_eval import ReconstructionEval

FROZEN_IN_STAGE2 = ("latent_tokens", "encoder", "quantize")


def _vqgan_fields(preset: str) -> dict:
    if preset not in maskgit_vqgan.PIXEL_DECODER_PRESETS:
        raise ValueError(f"unknown proxy VQGAN preset {preset!r}; expected one of "
                         f"{sorted(maskgit_vqgan.PIXEL_DECODER_PRESETS)}")
    return dict(maskgit_vqgan.PIXEL_DECODER_PRESETS[preset])


def load_vqgan_params(proxy_config, model: MaskGitVQGAN) -> dict:
    """Host params of the frozen VQGAN from `proxy.vqgan_weights`, with a message naming the file."""
    path = proxy_config.get("vqgan_weights", "")
    if not path:
        raise FileNotFoundError(
            "TiTok's two-stage recipe needs the MaskGIT-VQGAN weights: download "
            "maskgit-vqgan-imagenet-f16-256.bin (huggingface.co/fun-research/TiTok), convert it with "
            "`python -m titok_var.tools.convert --arch maskgit_vqgan --input FILE --output DIR` and set "
            "config.proxy.vqgan_weights=DIR/maskgit_vqgan.npz (tests: proxy.random_init=True)")
    from titok_var.tools.convert_maskgit_vqgan import load_params
    return jax.tree.map(np.asarray, load_params(path, model))


class _TiTokBase:
    def __init__(self, config, head_check):
        self.config = config
        self.model: TiTok = build_titok(config.model)
        if config.model.decoder_head != "proxy_codes":
            raise ValueError(f"{head_check} trains TiTok's proxy-code head: set model.decoder_head='proxy_codes'")
        if config.data.image_size != config.model.image_size:
            raise ValueError(f"data.image_size {config.data.image_size} differs from model.image_size "
                             f"{config.model.image_size}")

    def dummy_images(self):
        size = self.config.model.image_size
        return jnp.zeros((1, size, size, 3), jnp.float32)

    def init_params(self, rng):
        return self.model.init(rng, self.dummy_images())["params"]

    def encode_tokens(self, params, images):
        _, aux = self.model.apply({"params": params}, images, method=TiTok.encode)
        return aux["indices"]

    def decode_tokens(self, params, tokens):
        """(B, K) token ids -> (B, H, W, 3) images in [0, 1] through the pixel decoder (stage 2 and
        every released TiTok); a stage-1 model only predicts proxy codes."""
        if not self.config.model.pixel_decoder:
            raise ValueError("this TiTok has a proxy-code head and no pixel decoder (stage 1), so its tokens do "
                             "not decode to images; use a stage-2 export or an imported released tokenizer")
        return jnp.clip(self.model.apply({"params": params}, tokens, method=TiTok.decode_tokens_to_pixels), 0.0, 1.0)


class ProxyCodeTask(_TiTokBase):
    """Stage 1: cross-entropy on the frozen VQGAN's codes + quantizer losses."""

    def __init__(self, config):
        super().__init__(config, "stage 1")
        fields = _vqgan_fields(config.proxy.preset)
        self.vqgan = MaskGitVQGAN(**fields)
        grid = proxy_code_grid(config.model)
        if self.vqgan.latent_size != grid or fields["codebook_size"] != config.model.proxy_codebook_size:
            raise ValueError(
                f"proxy VQGAN {config.proxy.preset!r} gives {self.vqgan.latent_size}x{self.vqgan.latent_size} codes "
                f"of {fields['codebook_size']}; TiTok's head predicts {grid}x{grid} of {config.model.proxy_codebook_size}")
        proxy_code_table.require_centre_crops(config)  # here too, to fail before any weights load

    def trainable_mask(self):
        return None

    def init_task_state(self, rng):
        """The frozen VQGAN (replaced by the released weights in `initial_overrides`)."""
        images = jnp.zeros((1, self.vqgan.image_size, self.vqgan.image_size, 3), jnp.float32)
        return {"vqgan": self.vqgan.init(rng, images)["params"]}

    def initial_overrides(self):
        if self.config.proxy.get("random_init", False):
            return None
        return {"task_state": {"vqgan": load_vqgan_params(self.config.proxy, self.vqgan)}}

    def proxy_codes(self, task_state, images):
        vqgan_params = jax.lax.stop_gradient(task_state["vqgan"])
        return self.vqgan.apply({"params": vqgan_params}, images, method=MaskGitVQGAN.encode)

    def _proxy_loss(self, params, task_state, images, codes=None):
        logits, aux = self.model.apply({"params": params}, images)
        if codes is None:
            codes = self.proxy_codes(task_state, images)
        ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, codes))
        accuracy = jnp.mean((jnp.argmax(logits, -1) == codes).astype(jnp.float32))
        return ce, accuracy, logits, codes, aux

    def loss_fn(self, params, batch, rng, step, task_state=None):
        del rng, step
        # "proxy_codes" is in the batch when they were pre-computed (proxy.precomputed_dir).
        ce, accuracy, _, _, aux = self._proxy_loss(params, task_state, batch["image"], batch.get("proxy_codes"))
        loss = ce + self.config.loss.quantizer_weight * aux["quantizer_loss"]
        counts = codebook_stats.code_histogram(aux["indices"], self.config.model.codebook_size)
        metrics = {"proxy_code_loss": ce, "proxy_code_accuracy": accuracy,
                   "quantizer_loss": aux["quantizer_loss"], "batch_codebook_usage": jnp.mean(counts > 0)}
        return loss, (metrics, {})

    def update_task_state(self, task_state, outputs, batch, rng, step):
        return task_state, {}

    eval_uses_task_state = True  # the targets and pictures need the frozen VQGAN

    def eval_step(self, params, batch, task_state):
        images, mask = batch["image"], batch["mask"]
        ce, _, logits, codes, aux = self._proxy_loss(params, task_state, images)
        vqgan_params = task_state["vqgan"]
        weights = mask.astype(jnp.float32)
        correct = jnp.mean((jnp.argmax(logits, -1) == codes).astype(jnp.float32), axis=(1, 2))
        ce_per_image = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, codes), axis=(1, 2))
        # Pictures: TiTok's most likely codes and the VQGAN's own codes, both through its decoder.
        titok_pixels = self.vqgan.apply({"params": vqgan_params}, jnp.argmax(logits, -1), method=MaskGitVQGAN.decode_codes)
        target_pixels = self.vqgan.apply({"params": vqgan_params}, codes, method=MaskGitVQGAN.decode_codes)
        sums = {
            "count": jnp.sum(weights),
            "proxy_code_loss": jnp.sum(ce_per_image * weights),
            "proxy_code_accuracy": jnp.sum(correct * weights),
            "psnr": jnp.sum(image_metrics.psnr(images, titok_pixels) * weights),
            "vqgan_psnr": jnp.sum(image_metrics.psnr(images, target_pixels) * weights),
            "code_counts": codebook_stats.code_histogram(aux["indices"], self.config.model.codebook_size, mask=mask),
        }
        n = self.config.eval.grid_images
        return sums, {"original": images[:n], "vqgan": target_pixels[:n], "titok": titok_pixels[:n]}

    def summarize_eval(self, sums):
        count = max(float(sums["count"]), 1.0)
        counts = np.asarray(sums["code_counts"])
        metrics = {k: float(sums[k]) / count for k in ("proxy_code_loss", "proxy_code_accuracy", "psnr", "vqgan_psnr")}
        metrics.update(codebook_usage=codebook_stats.codebook_usage(counts),
                       codebook_perplexity=codebook_stats.codebook_perplexity(counts),
                       num_examples=float(sums["count"]))
        return metrics

    def preview_rows(self, preview):
        return [np.asarray(preview[k]) for k in ("original", "vqgan", "titok")]


class DecoderFinetuneTask(ReconstructionEval, _TiTokBase):
    """Stage 2: frozen encoder/quantizer; decoder + pixel decoder on l2 + perceptual + GAN."""

    def __init__(self, config):
        super().__init__(config, "stage 2")
        if not config.model.pixel_decoder:
            raise ValueError("stage 2 needs model.pixel_decoder (the MaskGIT-VQGAN decoder preset)")
        self.pixel_terms = PixelLossTerms(config.loss, config.model.image_size, config.train.num_steps)

    def trainable_mask(self):
        def trainable(path, _):
            # optax may pass a placeholder leaf (no path): call it trainable.
            return not path or getattr(path[0], "key", None) not in FROZEN_IN_STAGE2

        return lambda params: jax.tree_util.tree_map_with_path(trainable, params)

    def init_task_state(self, rng):
        return self.pixel_terms.init_state(rng) if self.pixel_terms.active else None

    def initial_overrides(self):
        """Stage-1 export (all but the pixel decoder) + the VQGAN decoder/codebook as pixel decoder."""
        init = self.config.init
        overrides = {}
        if init.get("stage1_export"):
            from titok_var.tools.export import load_exported_to_host
            _, stage1, stage1_config = load_exported_to_host(init.stage1_export)
            if stage1_config.model_name != "titok_stage1":
                raise ValueError(f"{init.stage1_export} is a {stage1_config.model_name!r} export, not TiTok stage 1")
            overrides.update(stage1)
        elif not init.get("random_init", False):
            raise FileNotFoundError("stage 2 starts from stage 1: set config.init.stage1_export to a "
                                    "`main.py --mode export` folder of a titok_stage1 run")
        if not init.get("random_init", False):
            vqgan = MaskGitVQGAN(**_vqgan_fields(self.config.model.pixel_decoder))
            overrides["pixel_vqgan"] = maskgit_vqgan.pixel_decoder_params(load_vqgan_params(self.config.proxy, vqgan))
        task_state = self.pixel_terms.initial_overrides()
        return {k: v for k, v in (("params", overrides), ("task_state", task_state)) if v} or None

    def reconstruct(self, params, images):
        quantized, aux = self.model.apply({"params": params}, images, method=TiTok.encode)
        pixels = self.model.apply({"params": params}, quantized, method=TiTok.decode_pixels)
        return pixels, aux

    def loss_fn(self, params, batch, rng, step, task_state=None):
        del rng
        images = batch["image"]
        reconstructions, aux = self.reconstruct(params, images)
        loss_config = self.config.loss
        rec = reconstruction_loss(images, reconstructions, loss_config.reconstruction)
        loss = loss_config.reconstruction_weight * rec
        metrics = {"reconstruction_loss": rec}
        if task_state is not None:
            extra, extra_metrics = self.pixel_terms.generator_terms(task_state, images, reconstructions, step)
            loss = loss + extra
            metrics.update(extra_metrics)
        return loss, (metrics, {"reconstructions": reconstructions})

    def update_task_state(self, task_state, outputs, batch, rng, step):
        if task_state is None:
            return None, {}
        return self.pixel_terms.update(task_state, batch["image"], outputs["reconstructions"], step)

    def eval_step(self, params, batch):
        images, mask = batch["image"], batch["mask"]
        reconstructions, aux = self.reconstruct(params, images)
        reconstructions = jnp.clip(reconstructions, 0.0, 1.0)
        sums = dict(reconstruction_sums.image_sums(images, reconstructions, mask),
                    code_counts=codebook_stats.code_histogram(aux["indices"], self.config.model.codebook_size, mask=mask))
        n = self.config.eval.grid_images
        return sums, {"original": images[:n], "reconstruction": reconstructions[:n]}

    def summarize_eval(self, sums):
        return {**reconstruction_sums.image_means(sums), **reconstruction_sums.codebook_metrics(sums["code_counts"])}
