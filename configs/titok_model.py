"""TiTok model and loss blocks for the experiment configs."""

import ml_collections

from configs import common

# (encoder size, decoder size, latent tokens) of the paper's 256 px models.
VARIANTS = {
    "s128": ("small", "small", 128),
    "b64": ("base", "base", 64),
    "l32": ("large", "large", 32),
}


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


def titok_config(variant: str, arg=None):
    """The single-stage pixel recipe (paper Table 3c) for one of the paper's variants."""
    args = common.parse_arg(arg, runlocal=False)
    encoder_size, decoder_size, tokens = VARIANTS[variant]
    config = common.base_config("titok")
    config.model = model_config(encoder_size, decoder_size, tokens)
    config.loss = loss_config()
    # App. A: AdamW lr 1e-4 cosine, wd 1e-4, batch 256, 1M iterations.
    config.optimizer = common.optimizer_config()
    config.train = common.train_config(num_steps=1_000_000, global_batch_size=256)
    config.data = common.data_config(name="imagenet2012", image_size=256)
    if args.runlocal:
        config.model.update(image_size=32, patch_size=8, dtype="float32")
        config.data.update(name="shapes", image_size=32, shapes_num_train=2048, shapes_num_eval=256)
        config.train.update(num_steps=20, global_batch_size=8, log_every_steps=5, eval_every_steps=10,
                            checkpoint_every_steps=10, data_workers=2)
        config.eval.update(global_batch_size=8, num_examples=32)
        config.optimizer.warmup_steps = 5
    return config
