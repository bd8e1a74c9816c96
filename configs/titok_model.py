"""TiTok model and loss blocks for the experiment configs."""

import ml_collections

from configs import common

# (encoder size, decoder size, latent tokens) of the paper's 256 px models.
VARIANTS = {
    "s128": ("small", "small", 128),
    "b64": ("base", "base", 64),
    "l32": ("large", "large", 32),
    # 512 px (paper App. A): twice the tokens, patch 32 so the grid stays 16 x 16.
    "l64_512": ("large", "large", 64),
    "b128_512": ("base", "base", 128),
}
HIGH_RESOLUTION = {"l64_512", "b128_512"}


def model_config(encoder_size, decoder_size, num_latent_tokens, **overrides):
    config = ml_collections.ConfigDict(
        dict(
            image_size=256,
            patch_size=16,
            num_latent_tokens=num_latent_tokens,
            encoder_size=encoder_size,
            decoder_size=decoder_size,
            codebook_size=4096,
            token_size=12,
            use_l2_norm=True,
            commitment_cost=0.25,
            legacy_reshape=False,
            decoder_head="pixels",
            proxy_codebook_size=1024,
            proxy_codes_per_side=1,
            mlp_ratio=4.0,
            symmetric_pixels=False,
            remat=False,
            dtype="bfloat16",
        )
    )
    config.update(overrides)
    return config


def loss_config(**overrides):
    config = ml_collections.ConfigDict(
        dict(reconstruction="l2", reconstruction_weight=1.0, quantizer_weight=1.0)
    )
    config.update(overrides)
    return config


def proxy_config(**overrides):
    """The frozen MaskGIT-VQGAN that supplies stage-1 targets (converted weights file). With
    `precomputed_dir` the targets are read from tools/precompute_proxy_codes.py's output (centre
    crops and their mirrors; needs data.random_crop=False) instead of computed every step."""
    config = ml_collections.ConfigDict(
        dict(preset="f16_256", vqgan_weights="", random_init=False, precomputed_dir="",
             precompute_batch_size=256, precompute_shard_size=10_000))
    config.update(overrides)
    return config


def stage2_loss_config(**overrides):
    """Official ReconstructionLoss_Stage2: l2 + 0.1 ConvNeXt-S logits + 0.01 hinge GAN from 20k,
    LeCam 0.001 (the frozen encoder and quantizer take no loss). Discriminator: AdamW (0.9, 0.999),
    wd 1e-4 on its ndim >= 2 parameters, gradients clipped at 1.0, and its own scheduler stepped from
    the discriminator's start: 5k warm-up to 1e-4, cosine to 1e-5 (utils/train_utils.py)."""
    config = ml_collections.ConfigDict(dict(
        reconstruction="l2", reconstruction_weight=1.0,
        perceptual_loss="convnext_s", perceptual_weight=0.1, perceptual_weights="",
        discriminator_start=20_000, discriminator_weight=0.01, lecam_weight=0.001, lecam_decay=0.999,
        discriminator_learning_rate=1e-4, discriminator_b1=0.9, discriminator_b2=0.999,
        discriminator_weight_decay=1e-4, discriminator_decay="matrices", discriminator_grad_clip_norm=1.0,
        discriminator_schedule="cosine", discriminator_warmup_steps=5_000, discriminator_end_learning_rate=1e-5))
    config.update(overrides)
    return config


STAGES = ("single", "stage1", "stage2")


def titok_config(variant: str, arg=None):
    """A paper variant; `:stage1` / `:stage2` give the two-stage recipe (App. A). The default is a
    single-stage pixel recipe with l2 + quantizer losses only (no perceptual or GAN term, so not the
    paper's Table 3c "Taming-VQGAN setting", which adds both); `:runlocal` shrinks it for CPU."""
    args = common.parse_arg(arg, stage="single", runlocal=False)
    if args.stage not in STAGES:
        raise ValueError(f"unknown TiTok stage {args.stage!r}; expected one of {STAGES}")
    encoder_size, decoder_size, tokens = VARIANTS[variant]
    name = {"single": "titok", "stage1": "titok_stage1", "stage2": "titok_stage2"}[args.stage]
    config = common.base_config(name)
    config.model = model_config(encoder_size, decoder_size, tokens)
    vqgan_preset = "f16_256"
    if variant in HIGH_RESOLUTION:
        config.model.update(image_size=512, patch_size=32)
        # The paper does not say how its 512 px proxy codes were made. Ours: the released VQGAN on
        # 512 px images gives 32 x 32 codes; TiTok's proxy head predicts 2 x 2 of them per patch.
        vqgan_preset = "f16_512"
    config.loss = loss_config()
    # App. A: AdamW lr 1e-4 cosine, wd 1e-4, batch 256, 1M iterations (stage 2: 500k, warmup 5k).
    config.optimizer = common.optimizer_config()
    config.train = common.train_config(num_steps=1_000_000, global_batch_size=256)
    config.data = common.data_config(name="imagenet2012", image_size=config.model.image_size)
    if args.stage != "single":
        config.model.update(decoder_head="proxy_codes", legacy_reshape=True,
                            proxy_codes_per_side=config.model.patch_size // 16)
        config.proxy = proxy_config(preset=vqgan_preset)
    if args.stage == "stage2":
        config.model.pixel_decoder = vqgan_preset
        config.loss = stage2_loss_config()
        config.optimizer.update(warmup_steps=5_000, b2=0.999)
        config.train.num_steps = 500_000
        # The VQGAN whose decoder becomes the pixel decoder is named once: model.pixel_decoder
        # (architecture) and proxy.vqgan_weights (weights), as in stage 1.
        config.init = ml_collections.ConfigDict(dict(stage1_export="", random_init=False))
    if args.runlocal:
        config.model.update(image_size=32, patch_size=8, dtype="float32")
        config.data.update(name="shapes", image_size=32, shapes_num_train=2048, shapes_num_eval=256)
        config.train.update(num_steps=20, global_batch_size=8, log_every_steps=5, eval_every_steps=10,
                            checkpoint_every_steps=10, data_workers=2)
        config.eval.update(global_batch_size=8, num_examples=32)
        config.optimizer.warmup_steps = 5
        if args.stage != "single":
            # The tiny VQGAN makes 16x16 codes of 32 px images: TiTok patch 2 gives the same grid.
            config.model.update(patch_size=2 * config.model.proxy_codes_per_side, proxy_codebook_size=64,
                                encoder_size="tiny", decoder_size="tiny")
            config.proxy.update(preset="tiny", random_init=True)
        if args.stage == "stage2":
            config.model.pixel_decoder = "tiny"
            config.init.random_init = True
            config.loss.update(perceptual_loss="lpips", perceptual_random_init=True, discriminator_start=5,
                               discriminator_warmup_steps=2,
                               discriminator_channels=16, discriminator_stages=1, discriminator_norm_groups=4,
                               discriminator_pool=4)
    return config
