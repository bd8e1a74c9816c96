"""Export: params only (EMA where present) + config JSON, loadable on any mesh with one call."""

import json
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec

from titok_var import registry
from titok_var.checkpointing.manager import config_to_json, parameter_shapes
from titok_var.training import evaluation, state_init, trainer

PARAMS_DIR = "params"
CONFIG_FILE = "config.json"
META_FILE = "export.json"


def _write_json(path: str, payload: dict):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def export_checkpoint(config, workdir: str, export_dir: str, step: int | None = None, devices=None) -> str:
    """Writes the evaluation parameters of a work dir's checkpoint to `export_dir`."""
    exp = trainer.build_experiment(config, workdir, devices)
    state, step = trainer.restore_checkpoint(exp, workdir, step, "export")
    params = evaluation.eval_params(state, config)
    export_dir = os.path.abspath(export_dir)
    params_path = os.path.join(export_dir, PARAMS_DIR)
    if os.path.exists(params_path):
        raise FileExistsError(f"{params_path} exists; choose a new export dir")
    os.makedirs(export_dir, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer_:
        checkpointer_.save(params_path, params)  # atomic: orbax renames a finished temp dir
    if jax.process_index() == 0:
        _write_json(os.path.join(export_dir, CONFIG_FILE), config_to_json(config))
        used_ema = config.eval.use_ema and state.ema_params is not None
        _write_json(os.path.join(export_dir, META_FILE), {
            "model_name": config.model_name, "step": step, "ema": bool(used_ema),
            "parameter_shapes": parameter_shapes(params)})
    return export_dir


def _read_export_config(export_dir: str):
    config_path = os.path.join(export_dir, CONFIG_FILE)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path} not found: {export_dir} is not a titok_var export")
    with open(config_path) as f:
        return ml_collections.ConfigDict(json.load(f))


def _abstract_params(task, config):
    """Parameter shapes; every logical axis replicated, so it also works inside a caller's jit trace
    or under a caller's mesh (the dummy init batch of 1 divides nothing)."""
    replicate_all = [(name, None) for name, _ in config.sharding_rules]
    with nn.logical_axis_rules(replicate_all):
        return jax.eval_shape(lambda: state_init.unboxed_params(task, jax.random.key(0)))


def load_exported(export_dir: str, mesh=None):
    """Returns (task, params, config) of an export; params are replicated on `mesh` (default: all
    local devices as a data-parallel mesh), whatever device count wrote them."""
    config = _read_export_config(export_dir)
    task = registry.get_task(config)
    if mesh is None:
        mesh = jax.sharding.Mesh(jax.devices(), ("data",))
    replicated = NamedSharding(mesh, PartitionSpec())
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                          _abstract_params(task, config))
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(os.path.join(os.path.abspath(export_dir), PARAMS_DIR), target)
    return task, params, config


def load_exported_to_host(export_dir: str):
    """(task, params as host numpy arrays, config): safe to call while a jit trace is running,
    e.g. when a generator first needs its frozen tokenizer inside its train step."""
    config = _read_export_config(export_dir)
    task = registry.get_task(config)
    target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), _abstract_params(task, config))
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(os.path.join(os.path.abspath(export_dir), PARAMS_DIR), target)
    return task, jax.tree.map(np.asarray, params), config
