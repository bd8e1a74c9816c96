"""The parameters every inference command uses: a work dir's checkpoint or an export.

eval, sample, generative eval, probe and VAR editing all call `load_inference_params`, so each takes
either `--workdir W` (the newest or `--step` checkpoint, EMA parameters where the config asks) or
`--export_dir E` (trained and exported, or released weights converted and imported). An export is
only read: outputs go to the work dir.

Precision: an export carries the `model.dtype` it was written with; `--mode import` writes
float32, so released weights are evaluated and sampled in float32 unless `compute_dtype` says
otherwise. A checkpoint runs in its config's dtype.
"""

import dataclasses
import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp
from clu import metric_writers

from titok_var.checkpointing import checksums
from titok_var.checkpointing.manager import describe_mismatch, parameter_shapes, placed
from titok_var.training import evaluation, state_init, trainer

EXPORT_PARAMS_DIR = "params"
EXPORT_CONFIG_FILE = "config.json"
EXPORT_META_FILE = "export.json"


class ExportMismatchError(ValueError):
    """The export holds another model than the command's config."""


@dataclasses.dataclass
class InferenceParams:
    exp: trainer.Experiment  # built from the (possibly dtype-adjusted) config
    params: object  # on the experiment's mesh, in its parameter shardings
    step: int  # the checkpoint step, or the step recorded in the export
    source: str  # "checkpoint <dir> step N" or "export <dir>", for messages and metrics files
    task_state: object = None  # a checkpoint's auxiliary state (frozen helpers); None for exports

    @property
    def config(self):
        return self.exp.config


def describe_source(workdir: str | None, step: int | None, export_dir: str | None) -> str:
    """"export <dir>" or "checkpoint <workdir>/checkpoints step N": what inference outputs record."""
    if export_dir:
        return f"export {os.path.abspath(export_dir)}"
    directory = os.path.join(workdir if "://" in workdir else os.path.abspath(workdir), "checkpoints")
    return f"checkpoint {directory} step {step}"


def read_export_json(export_dir: str, name: str) -> dict:
    path = os.path.join(export_dir, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {export_dir} is not a titok_var export "
                                "(made by `main.py --mode export` or `--mode import`)")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is damaged ({e}); export again") from e


def with_dtype(config, dtype: str | None):
    """A copy of `config` whose model computes in `dtype` (None: unchanged)."""
    if dtype is None or config.model.get("dtype") == dtype:
        return config
    copied = ml_collections.ConfigDict(config.to_dict())
    copied.model.dtype = dtype
    return copied


def check_export_fits(config, export_dir: str, export_config: dict) -> None:
    """The export's model must be the config's: same family and parameter shapes."""
    if export_config.get("model_name") != config.model_name:
        raise ExportMismatchError(
            f"{export_dir} holds a {export_config.get('model_name')!r} model, the config a {config.model_name!r}")


def load_inference_params(config, workdir: str | None = None, *, step: int | None = None,
                          export_dir: str | None = None, purpose: str = "evaluate", devices=None,
                          compute_dtype: str | None = None) -> InferenceParams:
    """Parameters to `purpose` with: from `export_dir` when given, else `workdir`'s checkpoint."""
    if export_dir:
        return _from_export(config, export_dir, workdir, devices, compute_dtype)
    if not workdir:
        raise ValueError(f"nothing to {purpose}: give a work dir with checkpoints or an export dir")
    config = with_dtype(config, compute_dtype)
    exp = trainer.build_experiment(config, workdir, devices)
    params, task_state, step, _ = trainer.restore_inference_params(exp, workdir, step, purpose)
    return InferenceParams(exp, params, int(step), describe_source(workdir, step, None), task_state=task_state)


def _from_export(config, export_dir: str, workdir: str | None, devices, compute_dtype) -> InferenceParams:
    export_dir = os.path.abspath(export_dir)
    export_config = read_export_json(export_dir, EXPORT_CONFIG_FILE)
    checksums.verify(export_dir, f"export {export_dir}")
    meta = read_export_json(export_dir, EXPORT_META_FILE)
    check_export_fits(config, export_dir, export_config)
    dtype = compute_dtype or export_config.get("model", {}).get("dtype")
    config = with_dtype(config, dtype)
    exp = trainer.build_experiment(config, os.path.abspath(workdir) if workdir else None, devices)
    abstract = exp.layout.abstract.params
    problem = describe_mismatch(meta.get("parameter_shapes", {}), parameter_shapes(abstract))
    if problem:
        raise ExportMismatchError(f"{export_dir} does not fit this config's {config.model_name!r} model: "
                                  + problem.replace("checkpoint", "export"))
    target = placed(abstract, exp.layout.shardings.params)
    params_path = os.path.join(export_dir, EXPORT_PARAMS_DIR)
    if not os.path.isdir(params_path):
        raise FileNotFoundError(f"{params_path} not found: the export {export_dir} is incomplete")
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            params = checkpointer.restore(params_path, target)
    except Exception as e:  # an export without checksums whose files are damaged
        raise checksums.DamagedCheckpointError(
            f"export {export_dir} cannot be read ({type(e).__name__}: {e}); folder {params_path}") from e
    step = int(meta.get("step", 0))
    task_state = None
    if getattr(exp.task, "eval_uses_task_state", False):  # e.g. TiTok stage 1 scores against its VQGAN
        task_state = state_init.initial_task_state(exp.task, config, exp.mesh, exp.rules, exp.layout)
    return InferenceParams(exp, params, step, describe_source(None, None, export_dir), task_state=task_state)


def evaluate(config, workdir: str, *, step: int | None = None, export_dir: str | None = None, devices=None,
             compute_dtype: str | None = None) -> dict:
    """`--mode eval`: the config's eval split through a checkpoint or an export; metrics, JSON and
    a grid go to <workdir>/eval/step_<step>."""
    loaded = load_inference_params(config, workdir, step=step, export_dir=export_dir, purpose="evaluate",
                                   devices=devices, compute_dtype=compute_dtype)
    exp = loaded.exp
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    with exp.context():
        metrics, rows = evaluation.evaluate(exp.task, loaded.params, exp.layout.shardings.params, exp.config,
                                            exp.mesh, task_state=loaded.task_state)
        evaluation.write_eval_outputs(workdir, loaded.step, metrics, rows, writer,
                                      evaluation.metric_notes(exp.config, metrics))
    return metrics
