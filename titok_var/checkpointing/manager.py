"""Orbax checkpoints of the train state: atomic, async, retained by count and period.

Each step holds `state` (the TrainState, sharded arrays) and `meta` (JSON: model name, parameter
shapes, data position, config) so a checkpoint of another model fails with a named parameter, and
`checksums.json` (written once the step has committed) so a damaged file is named on restore.
"""

import json
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from titok_var.checkpointing import checksums
from titok_var.training.train_state import TrainState

CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "damaged_checkpoints"  # damaged steps are moved here, never deleted


class CheckpointMismatchError(ValueError):
    """The checkpoint was written by another model or with other parameter shapes."""


def parameter_shapes(params) -> dict[str, list[int]]:
    flat = jax.tree_util.tree_leaves_with_path(params)
    return {jax.tree_util.keystr(path, simple=True, separator="/"): list(leaf.shape) for path, leaf in flat}


def describe_mismatch(saved: dict, expected: dict) -> str | None:
    """Names the first parameter that is missing, unexpected or of another shape."""
    for name in sorted(expected):
        if name not in saved:
            return f"parameter {name} of shape {tuple(expected[name])} is missing from the checkpoint"
        if list(saved[name]) != list(expected[name]):
            return (
                f"parameter {name} has shape {tuple(saved[name])} in the checkpoint but the model "
                f"expects {tuple(expected[name])}"
            )
    extra = sorted(set(saved) - set(expected))
    if extra:
        return f"the checkpoint has parameter {extra[0]} that the model does not have ({len(extra)} extra)"
    return None


class Checkpointer:
    """Owns the CheckpointManager of one work dir."""

    def __init__(self, workdir: str, *, keep: int = 3, keep_period: int = 0, async_save: bool = True):
        self.directory = epath.Path(workdir) / CHECKPOINT_DIR
        self.async_save = async_save
        self._unsealed: int | None = None
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep if keep > 0 else None,
            keep_period=keep_period if keep_period > 0 else None,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, item_names=("state", "meta"), options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def step_dir(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def describe(self, step: int) -> str:
        return f"checkpoint step {step} in {self.directory}"

    def save(self, state: TrainState, meta: dict[str, Any], *, force: bool = True) -> bool:
        step = int(jax.device_get(state.step))
        meta = dict(meta, step=step, parameter_shapes=parameter_shapes(state.params))
        self._seal()  # the previous step has committed by now (orbax waits for it too)
        saved = self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=force,
        )
        if saved:
            self._unsealed = step
            if not self.async_save:
                self._seal()
        return saved

    def _seal(self) -> None:
        """Checksums of the newest saved step, once its asynchronous write has committed."""
        if self._unsealed is None:
            return
        self.manager.wait_until_finished()
        step, self._unsealed = self._unsealed, None
        if jax.process_index() == 0 and self.step_dir(step).exists():
            checksums.write(self.step_dir(step))

    def verify(self, step: int) -> bool:
        """Raises DamagedCheckpointError naming the file when `step` differs from what was written."""
        return checksums.verify(self.step_dir(step), self.describe(step))

    def newest_intact_step(self) -> int | None:
        """The newest step whose files match their checksums. Damaged newer steps are moved aside
        to <workdir>/damaged_checkpoints/ (never deleted), each with a warning naming it."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                self.verify(step)
                return step
            except checksums.DamagedCheckpointError as e:
                logging.warning("skipping a damaged checkpoint: %s", e)
                self._move_aside(step)
        return None

    def _move_aside(self, step: int) -> None:
        aside = self.directory.parent / DAMAGED_DIR
        if jax.process_index() == 0:
            aside.mkdir(parents=True, exist_ok=True)
            target = aside / str(step)
            suffix = 1
            while target.exists():
                target, suffix = aside / f"{step}.{suffix}", suffix + 1
            self.step_dir(step).rename(target)
            logging.warning("moved the damaged checkpoint step %d to %s", step, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"moved damaged checkpoint {step}")
        self.manager.reload()

    def read_meta(self, step: int) -> dict[str, Any]:
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def check_compatible(self, step: int, model_name: str, abstract_params) -> dict[str, Any]:
        meta = self.read_meta(step)
        where = f"checkpoint {self.directory}/{step}"
        if meta.get("model_name") != model_name:
            raise CheckpointMismatchError(
                f"{where} was written by model {meta.get('model_name')!r}, not {model_name!r}"
            )
        problem = describe_mismatch(meta.get("parameter_shapes", {}), parameter_shapes(abstract_params))
        if problem:
            raise CheckpointMismatchError(f"{where} does not fit this model: {problem}")
        return meta

    def _checked_meta(self, step: int, model_name: str, abstract_params, verified: bool) -> dict[str, Any]:
        """The meta of `step` once it exists, matches its checksums (unless just `verified`) and fits
        the model."""
        if step not in self.manager.all_steps():
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {self.directory}; available: {self.all_steps()}"
            )
        if not verified:
            self.verify(step)
        return self._read(step, "read", lambda: self.check_compatible(step, model_name, abstract_params))

    def _read(self, step: int, what: str, read):
        """`read()`, naming the step and folder when orbax / tensorstore fail on a damaged step that
        has no checksums; a model mismatch passes through as it is."""
        try:
            return read()
        except CheckpointMismatchError:
            raise
        except Exception as e:
            raise checksums.DamagedCheckpointError(
                f"{self.describe(step)} cannot be {what} ({type(e).__name__}: {e}); folder {self.step_dir(step)}") from e

    def restore(self, step: int, abstract_state: TrainState, shardings: TrainState, model_name: str,
                verified: bool = False):
        """Restores `step` into the given shardings (any mesh); returns (state, meta). `verified`:
        the caller has just checked its checksums (newest_intact_step), so they are not read twice."""
        meta = self._checked_meta(step, model_name, abstract_state.params, verified)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(placed(abstract_state, shardings)))
        restored = self._read(step, "restored", lambda: self.manager.restore(step, args=args))
        return restored["state"], meta

    def restore_params(self, step: int, abstract_params, param_shardings, model_name: str, *, use_ema: bool,
                       abstract_task_state=None, task_state_shardings=None):
        """What inference needs from `step`, and nothing else (no optimizer moments): the EMA
        parameters when `use_ema` and the step holds them, else the raw ones, and the task's
        auxiliary state when its abstract tree is given. Returns (params, task_state, used_ema)."""
        self._checked_meta(step, model_name, abstract_params, verified=False)
        state_dir = self.step_dir(step) / "state"
        stored = self._read(step, "read", lambda: dict(ocp.PyTreeCheckpointer().metadata(state_dir).item_metadata))
        used_ema = bool(use_ema and jax.tree.leaves(stored.get("ema_params")))
        item = {"ema_params" if used_ema else "params": placed(abstract_params, param_shardings)}
        if abstract_task_state is not None and jax.tree.leaves(abstract_task_state):
            item["task_state"] = placed(abstract_task_state, task_state_shardings)
        restore_args = jax.tree.map(
            lambda t: ocp.ArrayRestoreArgs(sharding=t.sharding, global_shape=t.shape, dtype=t.dtype), item)
        args = ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
        restored = self._read(step, "restored", lambda: ocp.PyTreeCheckpointer().restore(state_dir, args=args))
        params = restored["ema_params" if used_ema else "params"]
        return params, restored.get("task_state", abstract_task_state), used_ema

    def wait(self):
        self.manager.wait_until_finished()
        self._seal()

    def close(self):
        self.manager.wait_until_finished()
        self._seal()
        self.manager.close()


def placed(abstract_tree, shardings):
    """ShapeDtypeStructs of `abstract_tree` carrying `shardings` (a tree of the same structure):
    the restore target, or the argument of an ahead-of-time lower, on any mesh."""
    return jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
                        abstract_tree, shardings)


def config_to_json(config) -> dict:
    return json.loads(config.to_json_best_effort())
