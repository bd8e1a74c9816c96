"""Config blocks shared by every experiment: mesh, sharding rules, optimizer, loop cadence.

Experiment files call these builders and override fields; nothing here knows about a model.
"""

import ml_collections


def parse_arg(arg: str | None, **defaults):
    """Parses the `:key=value,flag` suffix of `--config file.py:...` into a ConfigDict.

    A bare word sets a boolean default to True, or the first key when it is not a boolean.
    Types follow the defaults; an unknown key is an error.
    """
    result = ml_collections.ConfigDict(defaults)
    if not arg:
        return result
    keys = list(defaults)
    for item in arg.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" in item:
            key, value = item.split("=", 1)
        elif isinstance(defaults.get(item), bool):
            key, value = item, "True"
        else:
            key, value = keys[0], item
        if key not in defaults:
            raise KeyError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
        default = defaults[key]
        if isinstance(default, bool):
            result[key] = value.lower() in ("1", "true", "yes")
        elif default is None:
            result[key] = value
        else:
            result[key] = type(default)(value)
    return result


def mesh_config(data=-1, fsdp=1, tensor=1):
    return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


def sharding_rules():
    """Logical axis -> mesh axes. Parameters are FSDP-sharded over their embed dimension."""
    return (
        # Activations.
        ("act_batch", ("data", "fsdp")),
        ("act_length", None),
        ("act_embed", None),
        ("act_mlp", "tensor"),
        ("act_heads", "tensor"),
        ("act_kv", None),
        # Parameters.
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv", None),
        ("vocab", "tensor"),
        ("length", None),
        ("codebook", None),
        ("code_dim", None),
    )


def optimizer_config(**overrides):
    config = ml_collections.ConfigDict(
        dict(
            learning_rate=1e-4,
            end_learning_rate=1e-5,
            warmup_steps=10_000,
            b1=0.9,
            b2=0.99,
            eps=1e-8,
            weight_decay=1e-4,
            # None: constant. Else a cosine from weight_decay to this over the run (VAR's --twde).
            weight_decay_end=None,
            grad_clip_norm=1.0,
        )
    )
    config.update(overrides)
    return config


def train_config(**overrides):
    config = ml_collections.ConfigDict(
        dict(
            num_steps=1_000_000,
            global_batch_size=256,
            log_every_steps=100,
            eval_every_steps=10_000,
            checkpoint_every_steps=5_000,
            keep_checkpoints=3,
            keep_period=50_000,
            async_checkpointing=True,
            ema_decay=0.999,
            profile_first_step=0,
            profile_num_steps=0,
            data_workers=16,
            # Fine-tuning: start from an export's parameters (e.g. released weights imported with
            # `main.py --mode import`); a work dir that already has a checkpoint resumes from it instead.
            init_from_export="",
        )
    )
    config.update(overrides)
    return config


def eval_config(**overrides):
    config = ml_collections.ConfigDict(
        dict(global_batch_size=256, num_examples=50_000, grid_images=8, checkpoint_step=-1, use_ema=True,
             inception_weights="", reference_stats="",
             # Inception inputs as ADM's suite and torch-fidelity make them (the reference batches'
             # statistics); "pytorch_fid" for statistics made by pytorch-fid.
             inception_convention="adm")
    )
    config.update(overrides)
    return config


def data_config(**overrides):
    config = ml_collections.ConfigDict(
        dict(
            name="imagenet2012",
            data_dir="",  # "" = tfds's default folder; a str, so `--config.data.data_dir=/path` works
            train_split="train",
            eval_split="validation",
            image_size=256,
            random_crop=True,  # False: centre crop
            random_flip=True,
            # Shorter side resized to round(resize_ratio * image_size) with this PIL filter, then cropped
            # (torchvision's geometry): TiTok/MaskGIT 1.0 bicubic, VAR 1.125 LANCZOS.
            resize_ratio=1.0,
            resize_filter="bicubic",
            alpha="drop",  # transparency: "drop" as the official loaders' convert("RGB"), or "white" to composite
            shapes_num_train=50_000,
            shapes_num_eval=1_000,
            seed=0,
        )
    )
    config.update(overrides)
    return config


def base_config(model_name: str):
    config = ml_collections.ConfigDict()
    config.model_name = model_name
    config.seed = 0
    config.mesh = mesh_config()
    config.sharding_rules = sharding_rules()
    config.optimizer = optimizer_config()
    config.train = train_config()
    config.eval = eval_config()
    config.data = data_config()
    return config
