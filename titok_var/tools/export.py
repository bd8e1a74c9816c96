"""Export: params only (EMA where present) + config JSON, loadable on any mesh with one call."""

import json
import os
import zipfile

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec

from titok_var import registry
from titok_var.checkpointing import checksums
from titok_var.checkpointing.manager import config_to_json, parameter_shapes
from titok_var.training import state_init, trainer

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
    params, _, step, used_ema = trainer.restore_inference_params(exp, workdir, step, "export")
    return write_export(config, params, export_dir, {"step": step, "ema": used_ema})


def write_export(config, params, export_dir: str, meta: dict) -> str:
    """Writes params + config (+ `meta`) as an export folder; refuses to overwrite one."""
    export_dir = os.path.abspath(export_dir)
    params_path = os.path.join(export_dir, PARAMS_DIR)
    if os.path.exists(params_path):
        raise FileExistsError(f"{params_path} exists; choose a new export dir")
    os.makedirs(export_dir, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer_:
        checkpointer_.save(params_path, params)  # atomic: orbax renames a finished temp dir
    if jax.process_index() == 0:
        _write_json(os.path.join(export_dir, CONFIG_FILE), config_to_json(config))
        _write_json(os.path.join(export_dir, META_FILE), {
            "model_name": config.model_name, **meta, "parameter_shapes": parameter_shapes(params)})
        checksums.write(export_dir)  # last: a complete export is one with checksums
    return export_dir


def verify_export(export_dir: str) -> None:
    """Raises DamagedCheckpointError naming the file when an export differs from what was written."""
    checksums.verify(os.path.abspath(export_dir), f"export {os.path.abspath(export_dir)}")


def import_converted(config, converted_npz: str, export_dir: str, dtype: str = "float32") -> str:
    """Turns a converter's flat .npz ("a/b/c" keys, e.g. released weights from
    `python -m titok_var.tools.convert`) into an export of `config`'s model, so `load_exported`,
    pre-tokenization, sampling and `main.py --mode eval --export_dir` use it like a trained one.
    Every parameter must be present with its shape; extra arrays are an error. The export records
    `model.dtype = dtype` (float32 by default), so inference from it runs at that precision."""
    if not os.path.exists(converted_npz):
        raise FileNotFoundError(f"converted weights {converted_npz!r} not found (make them with "
                                "`python -m titok_var.tools.convert --arch ... --output DIR`)")
    task = registry.get_task(config)
    expected = {"/".join(str(getattr(k, "key", k)) for k in path): leaf
                for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_export_params(task, config))}
    try:
        with np.load(converted_npz, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{converted_npz} is not a converted-weights .npz ({type(e).__name__}: {e}); make one with "
                         "`python -m titok_var.tools.convert --arch ... --input RELEASED_FILE --output DIR`") from e
    missing = sorted(set(expected) - set(arrays))
    unused = sorted(set(arrays) - set(expected))
    wrong = sorted(k for k in set(expected) & set(arrays) if tuple(arrays[k].shape) != tuple(expected[k].shape))
    if missing or unused or wrong:
        details = [f"{name}: {items[:8]}" for name, items in
                   (("missing", missing), ("unused", unused), ("wrong shape", wrong)) if items]
        raise ValueError(f"{converted_npz} does not fit model {config.model_name!r} of this config: "
                         + "; ".join(details))
    nested: dict = {}
    for key, leaf in expected.items():
        node = nested
        *parents, name = key.split("/")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = arrays[key].astype(leaf.dtype)
    if "dtype" in config.model:
        config = ml_collections.ConfigDict(config.to_dict())
        config.model.dtype = dtype
    return write_export(config, nested, export_dir, {"step": 0, "ema": False, "compute_dtype": dtype,
                                                     "imported_from": os.path.abspath(converted_npz)})


def _read_export_config(export_dir: str):
    config_path = os.path.join(export_dir, CONFIG_FILE)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path} not found: {export_dir} is not a titok_var export")
    verify_export(export_dir)
    with open(config_path) as f:
        return ml_collections.ConfigDict(json.load(f))


def abstract_export_params(task, config):
    """Parameter shapes; every logical axis replicated, so it also works inside a caller's jit trace
    or under a caller's mesh (the dummy init batch of 1 divides nothing)."""
    replicate_all = [(name, None) for name, _ in config.sharding_rules]
    with nn.logical_axis_rules(replicate_all):
        return jax.eval_shape(lambda: state_init.unboxed_params(task, jax.random.key(0)))


def read_exported_task(export_dir: str):
    """(task, config) of an export, without reading its parameters."""
    config = _read_export_config(export_dir)
    return registry.get_task(config), config


def load_exported(export_dir: str, mesh=None):
    """Returns (task, params, config) of an export; params are replicated on `mesh` (default: all
    local devices as a data-parallel mesh), whatever device count wrote them."""
    config = _read_export_config(export_dir)
    task = registry.get_task(config)
    if mesh is None:
        mesh = jax.sharding.Mesh(jax.devices(), ("data",))
    replicated = NamedSharding(mesh, PartitionSpec())
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                          abstract_export_params(task, config))
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(os.path.join(os.path.abspath(export_dir), PARAMS_DIR), target)
    return task, params, config


def load_exported_to_host(export_dir: str):
    """(task, params as host numpy arrays, config): safe to call while a jit trace is running,
    e.g. when a generator first needs its frozen tokenizer inside its train step."""
    config = _read_export_config(export_dir)
    task = registry.get_task(config)
    target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract_export_params(task, config))
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(os.path.join(os.path.abspath(export_dir), PARAMS_DIR), target)
    return task, jax.tree.map(np.asarray, params), config
