"""Config blocks of the MaskGIT generators over TiTok tokens (paper App. A, official configs)."""

import ml_collections

from configs import common

# Released generator per TiTok tokenizer: (architecture, sequence length, width, depth, heads, mlp).
VARIANTS = {
    "L-32": dict(arch="imagebert", seq_len=32, hidden_size=768, depth=24, num_heads=16, mlp_dim=3072),
    "B-64": dict(arch="imagebert", seq_len=64, hidden_size=768, depth=24, num_heads=16, mlp_dim=3072),
    "S-128": dict(arch="uvit", seq_len=128, hidden_size=1024, depth=20, num_heads=16, mlp_dim=4096),
}
# Released sampling settings (configs/infer/TiTok/*.yaml with sample_imagenet_titok.py).
SAMPLING = {
    "L-32": dict(num_steps=8, guidance_scale=4.5, randomize_temperature=9.5, guidance_decay="linear"),
    "B-64": dict(num_steps=8, guidance_scale=3.0, randomize_temperature=11.0, guidance_decay="linear"),
    "S-128": dict(num_steps=64, guidance_scale=6.9, randomize_temperature=2.8, guidance_decay="power-cosine"),
}


def model_config(arch, seq_len, hidden_size, depth, num_heads, mlp_dim, **overrides):
    config = ml_collections.ConfigDict(dict(
        arch=arch, codebook_size=4096, num_classes=1000, seq_len=seq_len, hidden_size=hidden_size,
        depth=depth, num_heads=num_heads, mlp_dim=mlp_dim, dropout_rate=0.1, attention_dropout_rate=0.1,
        dtype="bfloat16",
    ))
    config.update(overrides)
    return config


def loss_config(**overrides):
    # The official MLMLoss: label smoothing 0.1, unmasked positions weighted 0.1, arccos masking.
    config = ml_collections.ConfigDict(dict(
        mask_schedule="arccos", label_dropout=0.1, label_smoothing=0.1, unmasked_weight=0.1,
    ))
    config.update(overrides)
    return config


def sampling_config(**overrides):
    config = ml_collections.ConfigDict(dict(
        num_steps=8, guidance_scale=4.5, randomize_temperature=9.5, guidance_decay="linear",
        guidance_scale_pow=3.0, softmax_temperature_annealing=True, schedule="arccos",
    ))
    config.update(overrides)
    return config


def tokenizer_config(export_dir, image_data, **overrides):
    """Where tokens come from: the tokenizer export and the image dataset it encodes."""
    config = ml_collections.ConfigDict(dict(
        export_dir=export_dir, image_data=image_data, batch_size=256, shard_size=10_000, flips=True,
    ))
    config.update(overrides)
    return config


def sample_config(**overrides):
    """--mode sample: images per class, seed, batch size, float-to-uint8 ("truncate" as the official sampler)."""
    config = ml_collections.ConfigDict(dict(num_per_class=50, seed=42, global_batch_size=125, grid_per_class=4,
                                            to_uint8="truncate"))
    config.update(overrides)
    return config


def generator_config(variant: str, arg=None):
    """Paper config for the generator of TiTok-`variant` on ImageNet 256 px (`:runlocal` for a smoke run)."""
    config = common.base_config("maskgit")
    config.model = model_config(**VARIANTS[variant])
    config.loss = loss_config()
    config.sampling = sampling_config(**SAMPLING[variant])
    config.sample = sample_config()
    config.tokenizer = tokenizer_config(
        export_dir=f"exports/titok_{variant.lower().replace('-', '')}",
        image_data=common.data_config(name="imagenet2012", image_size=256),
        batch_size=256,
    )
    config.data = common.data_config(name="tokens", data_dir=f"tokens/titok_{variant.lower().replace('-', '')}",
                                      train_split="train", eval_split="validation")
    # scripts/train_maskgit.py with configs/training/generator/maskgit.yaml.
    config.optimizer = common.optimizer_config(learning_rate=2e-4, end_learning_rate=1e-5, warmup_steps=10_000,
                                               weight_decay=0.03, b1=0.9, b2=0.96)
    config.train = common.train_config(num_steps=500_000, global_batch_size=2048, ema_decay=0.999)
    config.eval = common.eval_config(global_batch_size=256, num_examples=10_000, grid_images=16, seed=0)
    if common.parse_arg(arg, runlocal=False).runlocal:
        # Over the `titok_*.py:stage2,runlocal` tokenizer (32 px shapes, 16 classes).
        config.model.update(hidden_size=64, depth=2, num_heads=4, mlp_dim=128, dtype="float32", num_classes=16)
        config.tokenizer.update(batch_size=16)
        config.tokenizer.image_data.update(name="shapes", image_size=32, shapes_num_train=256, shapes_num_eval=64)
        config.sample.update(num_per_class=2, global_batch_size=16, grid_per_class=2)
        config.train.update(num_steps=4, global_batch_size=8)
        config.eval.update(global_batch_size=8, num_examples=16)
    return config
