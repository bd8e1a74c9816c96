"""Tiny VAR over the tiny multi-scale VQVAE's 130 tokens (scales 1..8) on `shapes` (CPU, minutes).

Needs the VQVAE exported to runs/var_quickstart/vqvae_export and its tokens in
runs/var_quickstart/tokens (launch/quickstart_var.sh does all of it).
"""

from configs import common
from configs import var_model
from configs import var_vqvae_tiny


def get_config(arg=None):
    del arg
    tokenizer = var_vqvae_tiny.get_config()
    config = common.base_config("var")
    config.model = var_model.var_model_config(
        4, width=128, num_heads=4, num_classes=16, vocab_size=tokenizer.model.codebook_size,
        vae_channels=tokenizer.model.code_dim, patch_nums=tokenizer.model.patch_nums, drop_path_rate=0.0,
        init_adaln_gamma=1e-3, dtype="float32",
    )
    config.loss = var_model.var_loss_config()
    config.sampling = var_model.var_sampling_config(cfg=2.0, top_k=0, top_p=0.0)
    config.sample = common.ml_collections.ConfigDict(
        dict(num_per_class=8, seed=42, global_batch_size=64, grid_per_class=8, to_uint8="truncate"))
    image_data = tokenizer.data.copy_and_resolve_references()
    config.tokenizer = var_model.var_tokenizer_config("runs/var_quickstart/vqvae_export", image_data,
                                                      batch_size=256, shard_size=10_000, flips=False)
    config.data = common.data_config(name="tokens", data_dir="runs/var_quickstart/tokens",
                                     train_split=image_data.train_split, eval_split=image_data.eval_split)
    config.optimizer = common.optimizer_config(
        learning_rate=1e-3, end_learning_rate=1e-4, warmup_steps=100, b1=0.9, b2=0.95, weight_decay=0.05,
        grad_clip_norm=2.0, schedule="var_lin0", no_decay_pattern=var_model.VAR_NO_DECAY_PATTERN)
    config.train = common.train_config(
        num_steps=1500, global_batch_size=64, log_every_steps=100, eval_every_steps=750,
        checkpoint_every_steps=750, keep_checkpoints=2, keep_period=0, ema_decay=0.0, data_workers=2,
    )
    config.eval = common.eval_config(global_batch_size=64, num_examples=512, grid_images=16, seed=0)
    return config
