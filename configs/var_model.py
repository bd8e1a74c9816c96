"""VAR model, loss and sampling blocks for the experiment configs (VQVAE and transformer)."""

import ml_collections

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


def vqvae_model_config(**overrides):
    """The released `vae_ch160v4096z32` (256 px, downsampling 16) unless overridden."""
    config = ml_collections.ConfigDict(
        dict(
            codebook_size=4096,
            code_dim=32,
            ch=160,
            ch_mult=(1, 1, 2, 2, 4),
            num_res_blocks=2,
            patch_nums=PATCH_NUMS_256,
            beta=0.25,
            quant_resi=0.5,
            share_quant_resi=4,
            using_sa=True,
            using_mid_sa=True,
            norm_groups=32,
            unit_range_pixels=True,  # the data pipeline's [0, 1]; the network sees [-1, 1]
            channel_axis=None,
            dtype="float32",
        )
    )
    config.update(overrides)
    return config


def vqvae_loss_config(**overrides):
    """VAR Eq. 5: pixel l2 + quantizer (codebook + 0.25 commitment) [+ perceptual + GAN]."""
    config = ml_collections.ConfigDict(
        dict(reconstruction="l2", reconstruction_weight=1.0, quantizer_weight=1.0)
    )
    config.update(overrides)
    return config


# Depth -> (init_adaln_gamma, batch, epochs, base lr per 256, final lr ratio, final weight decay):
# the README recipes (--alng, --bs, --ep, --tblr, --wpe, --twde; tests/test_var_recipes.py).
RECIPES = {
    16: (1e-3, 768, 200, 1e-4, 0.1, None),
    20: (1e-3, 768, 250, 1e-4, 0.1, None),
    24: (1e-4, 768, 350, 8e-5, 0.01, None),
    30: (1e-5, 1024, 350, 8e-5, 0.01, 0.08),
    36: (5e-6, 768, 350, 8e-5, 0.01, 0.08),
}
IMAGENET_TRAIN_IMAGES = 1_281_167
# VAR decays class/word embeddings and matrices; not position/level embeddings, AdaLN gains,
# attention scales or biases (official `filter_params`).
VAR_NO_DECAY_PATTERN = r"(^|/)bias$|q_bias|v_bias|pos_1LC|pos_start|lvl_embed|ada_gss|scale_mul"


def var_model_config(depth: int, **overrides):
    config = ml_collections.ConfigDict(
        dict(
            depth=depth,
            num_classes=1000,
            vocab_size=4096,
            vae_channels=32,
            patch_nums=PATCH_NUMS_256,
            shared_adaln=False,
            init_adaln=0.5,
            init_adaln_gamma=RECIPES[depth][0] if depth in RECIPES else 1e-3,
            init_head=0.02,
            dtype="bfloat16",
            attention_impl="xla",
        )
    )
    config.update(overrides)
    return config


def var_loss_config(**overrides):
    config = ml_collections.ConfigDict(dict(label_dropout=0.1, eval_label_dropout=0.1))
    config.update(overrides)
    return config


def var_sampling_config(**overrides):
    """The README's FID settings; `cfg=4, top_p=0.95` (or more_smooth) for pictures."""
    config = ml_collections.ConfigDict(dict(cfg=1.5, top_k=900, top_p=0.96, more_smooth=False))
    config.update(overrides)
    return config


def var_tokenizer_config(export_dir: str, image_data, **overrides):
    """Where the frozen VQVAE export is and how pre-tokenization reads the images (no flips)."""
    config = ml_collections.ConfigDict(
        dict(export_dir=export_dir, image_data=image_data, batch_size=256, shard_size=10_000, flips=False))
    config.update(overrides)
    return config


def var_config(depth: int, arg=None):
    """VAR-d{depth} with the official recipe (256 px; d36 is the 512 px shared-AdaLN model).

    Trains on pre-tokenized token maps of each image's centre crop by default; `:online` tokenizes
    every batch with the frozen VQVAE inside the step instead, on a fresh random crop of the 1.125x
    LANCZOS image per epoch, as the official trainer (no token shards needed; costs the encoder
    forward every step)."""
    from configs import common

    args = common.parse_arg(arg, runlocal=False, online=False)
    _, batch, epochs, base_lr, final_ratio, final_weight_decay = RECIPES[depth]
    config = common.base_config("var")
    large = depth == 36
    config.model = var_model_config(depth, patch_nums=PATCH_NUMS_512 if large else PATCH_NUMS_256,
                                    shared_adaln=large)
    config.loss = var_loss_config()
    config.sampling = var_sampling_config()
    config.sample = ml_collections.ConfigDict(
        dict(num_per_class=50, seed=0, global_batch_size=250, grid_per_class=4, to_uint8="truncate"))
    image_size = 512 if large else 256
    # Pre-tokenization sees the official validation view of every image: shorter side 1.125x with LANCZOS,
    # centre crop (the official trainer tokenizes a fresh random crop each step instead; README, Data).
    image_data = common.data_config(name="imagenet2012", image_size=image_size, random_crop=False, random_flip=False,
                                    resize_ratio=1.125, resize_filter="lanczos")
    config.tokenizer = var_tokenizer_config(f"/ckpt/var_vqvae_export_{image_size}", image_data)
    config.data = common.data_config(name="tokens", data_dir=f"/data/var_tokens_{image_size}",
                                     train_split=image_data.train_split, eval_split=image_data.eval_split)
    steps_per_epoch = -(-IMAGENET_TRAIN_IMAGES // batch)
    peak = base_lr * batch / 256
    config.optimizer = common.optimizer_config(
        learning_rate=peak, end_learning_rate=peak * final_ratio, warmup_steps=steps_per_epoch * epochs // 50,
        b1=0.9, b2=0.95, weight_decay=0.05, weight_decay_end=final_weight_decay, grad_clip_norm=2.0,
        schedule="var_lin0",
        no_decay_pattern=VAR_NO_DECAY_PATTERN)
    config.train = common.train_config(num_steps=steps_per_epoch * epochs, global_batch_size=batch,
                                       ema_decay=0.0)  # the official trainer keeps no EMA
    config.eval.update(num_examples=50_000, global_batch_size=256, grid_images=16, seed=0)
    if depth >= 30:
        config.mesh.update(data=-1, fsdp=8)  # FSDP so d30/d36 fit with optimizer state
    if args.runlocal:
        # A VAR over the `var_vqvae.py:runlocal` tokenizer (256 codes of 8 dims, scales 1-8, 32 px
        # shapes), so the smoke configs chain: VQVAE -> export -> pre-tokenize -> VAR -> sample / edit.
        config.model.update(depth=2, width=64, num_heads=2, dtype="float32", num_classes=16, vocab_size=256,
                            vae_channels=8, patch_nums=(1, 2, 4, 8), shared_adaln=False)
        config.tokenizer.update(export_dir="exports/var_vqvae_runlocal", batch_size=16)
        config.tokenizer.image_data.update(name="shapes", image_size=32, shapes_num_train=256, shapes_num_eval=64)
        config.data.update(data_dir="tokens/var_runlocal")
        config.sample.update(num_per_class=2, global_batch_size=16, grid_per_class=2)
        config.sampling.top_k = 100  # of the 256 codes (the paper's 900 of 4096)
        config.train.update(num_steps=20, global_batch_size=8, log_every_steps=5, eval_every_steps=10,
                            checkpoint_every_steps=10, data_workers=2)
        config.eval.update(global_batch_size=8, num_examples=32, grid_images=4)
        config.optimizer.warmup_steps = 5
        config.mesh.update(data=-1, fsdp=1)
    if args.online:
        config.data = config.tokenizer.image_data.copy_and_resolve_references()
        config.data.update(random_crop=True, random_flip=False)  # official: RandomCrop, no flips
    return config
