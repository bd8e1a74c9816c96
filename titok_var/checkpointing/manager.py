"""Orbax checkpoints of the train state: atomic, async, retained by count and period.

Each step holds `state` (the TrainState, sharded arrays) and `meta` (JSON: model name, parameter
shapes, data position, config) so a checkpoint of another model fails with a named parameter.
"""

import json
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from titok_var.training.train_state import TrainState

CHECKPOINT_DIR = "checkpoints"


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

    def save(self, state: TrainState, meta: dict[str, Any], *, force: bool = True) -> bool:
        step = int(jax.device_get(state.step))
        meta = dict(meta, step=step, parameter_shapes=parameter_shapes(state.params))
        return self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=force,
        )

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

    def restore(self, step: int, abstract_state: TrainState, shardings: TrainState, model_name: str):
        """Restores `step` into the given shardings (any mesh); returns (state, meta)."""
        if step not in self.manager.all_steps():
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {self.directory}; available: {self.all_steps()}"
            )
        meta = self.check_compatible(step, model_name, abstract_state.params)
        target = jax.tree.map(
            lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
            abstract_state,
            shardings,
        )
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )
        return restored["state"], meta

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def config_to_json(config) -> dict:
    return json.loads(config.to_json_best_effort())
