"""Checks a training config before any model or data work, naming the field, its value and what
is allowed; each problem otherwise surfaces late (at the first batch, the first eval, or as a
ZeroDivisionError after the first step) or never (a negative step count trains nothing)."""

import jax

from titok_var.data import transforms
from titok_var.data.sources import ALPHA_MODES
from titok_var.sharding import mesh as mesh_lib

BUILT_IN_DATASETS = ("shapes", "image_folder", "tokens")


class ConfigError(ValueError):
    pass


def _require(ok: bool, field: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"config.{field} = {value!r} is not allowed: {allowed}")


def check_training_config(config, devices=None) -> None:
    """Raises ConfigError for the first field of `config` that cannot train."""
    train = config.train
    _require(isinstance(train.num_steps, int) and train.num_steps > 0, "train.num_steps", train.num_steps,
             "a positive number of steps")
    for field in ("log_every_steps", "checkpoint_every_steps"):
        value = train[field]
        _require(isinstance(value, int) and value > 0, f"train.{field}", value, "a positive number of steps")
    _require(isinstance(train.eval_every_steps, int) and train.eval_every_steps >= 0, "train.eval_every_steps",
             train.eval_every_steps, "0 (only at the end) or a positive number of steps")
    _require(train.keep_checkpoints >= 0, "train.keep_checkpoints", train.keep_checkpoints, ">= 0 (0 keeps all)")
    _require(0.0 <= train.ema_decay < 1.0, "train.ema_decay", train.ema_decay, "in [0, 1) (0 = no EMA)")

    devices = list(jax.devices() if devices is None else devices)
    try:
        sizes = mesh_lib.resolve_axis_sizes(dict(config.mesh), len(devices))
    except ValueError as e:
        raise ConfigError(f"config.mesh = {dict(config.mesh)}: {e}") from e
    batch_shards = sizes["data"] * sizes["fsdp"]
    processes = jax.process_count()
    for field, value in (("train.global_batch_size", train.global_batch_size),
                         ("eval.global_batch_size", config.eval.global_batch_size)):
        _require(isinstance(value, int) and value > 0 and value % batch_shards == 0 and value % processes == 0,
                 field, value, f"a positive multiple of data x fsdp = {sizes['data']} x {sizes['fsdp']} = "
                 f"{batch_shards} devices" + (f" and of {processes} processes" if processes > 1 else ""))

    convention = config.eval.get("inception_convention", "adm")
    _require(convention in ("adm", "pytorch_fid"), "eval.inception_convention", convention,
             "'adm' (ADM's reference batches, torch-fidelity) or 'pytorch_fid'")

    try:
        transforms.resize_from_config(config.data)
    except ValueError as e:
        raise ConfigError(f"config.data.resize_ratio / resize_filter: {e}") from e
    _require(config.data.get("alpha", "drop") in ALPHA_MODES, "data.alpha", config.data.get("alpha"),
             f"one of {ALPHA_MODES}")

    name = config.data.name
    _require(isinstance(name, str) and bool(name), "data.name", name, "a dataset name")
    if name not in BUILT_IN_DATASETS:
        # Opening the tfds source reads only its metadata; an unknown name or a missing
        # array_record build fails here, before the model state is built.
        from titok_var.data.builder import build_source

        try:
            build_source(config.data, "train")
        except Exception as e:  # tfds raises many kinds; the message says which
            raise ConfigError(f"config.data.name = {name!r} (data_dir {config.data.get('data_dir')!r}) cannot be "
                              f"opened: {type(e).__name__}: {e}") from e
