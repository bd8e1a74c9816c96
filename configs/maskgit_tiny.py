"""Tiny MaskGIT over the quickstart tokenizer's 16 tokens on `shapes` (CPU, minutes).

Needs the quickstart tokenizer exported to runs/quickstart/tokenizer_export and its tokens in
runs/quickstart/tokens (launch/quickstart.sh does all of it).
"""

from configs import common
from configs import maskgit_model
from configs import titok_tiny


def get_config(arg=None):
    del arg
    tokenizer = titok_tiny.get_config()
    config = common.base_config("maskgit")
    config.model = maskgit_model.model_config(
        "imagebert", tokenizer.model.num_latent_tokens, 128, 4, 4, 512,
        codebook_size=tokenizer.model.codebook_size, num_classes=16, dropout_rate=0.0,
        attention_dropout_rate=0.0, dtype="float32",
    )
    config.loss = maskgit_model.loss_config()
    config.sampling = maskgit_model.sampling_config(num_steps=8, guidance_scale=2.0, randomize_temperature=1.0)
    config.sample = maskgit_model.sample_config(num_per_class=8, seed=42, global_batch_size=64, grid_per_class=8)
    config.tokenizer = maskgit_model.tokenizer_config(
        "runs/quickstart/tokenizer_export", tokenizer.data, batch_size=256, shard_size=10_000, flips=True
    )
    # Shards are named after the image dataset's splits.
    config.data = common.data_config(name="tokens", data_dir="runs/quickstart/tokens",
                                      train_split=tokenizer.data.train_split, eval_split=tokenizer.data.eval_split)
    config.optimizer = common.optimizer_config(learning_rate=1e-3, end_learning_rate=5e-5, warmup_steps=100,
                                               weight_decay=0.03, b2=0.96)
    config.train = common.train_config(
        num_steps=1500, global_batch_size=64, log_every_steps=100, eval_every_steps=750,
        checkpoint_every_steps=750, keep_checkpoints=2, keep_period=0, ema_decay=0.99, data_workers=2,
    )
    config.eval = common.eval_config(global_batch_size=64, num_examples=512, grid_images=16, seed=0)
    return config
