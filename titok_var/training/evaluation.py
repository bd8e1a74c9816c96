"""Runs a task's eval step over the padded eval split and writes metrics, JSON and a PNG grid."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from titok_var.data import pipeline
from titok_var.evaluation import fid, image_grid
from titok_var.sharding import mesh as mesh_lib
from titok_var.training import data_feed


def eval_params(state, config):
    """EMA parameters when the config asks for them and the state has them."""
    if config.eval.use_ema and state.ema_params is not None:
        return state.ema_params
    return state.params


def evaluate(task, params, param_shardings, config, mesh, task_state=None):
    """Returns (scalar metrics, preview rows) summed over the whole eval split.

    Tasks with `eval_uses_task_state` get the train state's task state (e.g. a frozen helper
    network) as a third eval_step argument; it is replicated.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    if getattr(task, "eval_uses_task_state", False):
        if task_state is None:
            raise ValueError(f"{type(task).__name__} evaluates with its task state; pass the train state's")
        state_shardings = jax.tree.map(lambda _: replicated, task_state)
        jitted = jax.jit(task.eval_step, in_shardings=(param_shardings, mesh_lib.batch_sharding(mesh), state_shardings),
                         out_shardings=replicated)
        eval_step = lambda p, batch: jitted(p, batch, task_state)  # noqa: E731
    else:
        eval_step = jax.jit(
            task.eval_step,
            in_shardings=(param_shardings, mesh_lib.batch_sharding(mesh)),
            out_shardings=replicated,
        )
    stats = pipeline.PipelineStats()
    totals, preview = None, None
    # Optional per-example features (e.g. Inception activations for FID), accumulated in float64.
    feature_fn = getattr(task, "eval_features", lambda: None)()
    feature_stats = {}
    for batch in data_feed.eval_iterator(config, mesh, stats):
        sums, batch_preview = eval_step(params, batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        if preview is None:
            preview = batch_preview
        if feature_fn is not None:
            mask = np.asarray(jax.device_get(batch["mask"]))
            for name, features in feature_fn(params, batch).items():
                features = np.asarray(jax.device_get(features))
                if name not in feature_stats:
                    feature_stats[name] = fid.ActivationStatistics(features.shape[-1])
                feature_stats[name].update(features, mask=mask)
    if totals is None:
        raise ValueError("the eval split produced no batches; check config.eval.num_examples and the data")
    metrics = task.summarize_eval(jax.device_get(totals))
    if feature_stats:
        metrics.update(task.summarize_features(feature_stats))
    if stats.skipped_corrupt:
        metrics["skipped_corrupt_images"] = float(stats.skipped_corrupt)
    return metrics, task.preview_rows(jax.device_get(preview))


def metric_notes(config, metrics: dict) -> dict[str, str]:
    """What the JSON keeps next to the numbers: how rFID's Inception inputs were made."""
    if "rfid" not in metrics:
        return {}
    return {"inception_convention": config.eval.get("inception_convention", "adm")}


def write_eval_outputs(workdir: str, step: int, metrics: dict, rows, writer=None,
                       notes: dict[str, str] | None = None) -> str:
    """Writes metrics JSON (with the `notes` strings), the image grid PNG and the scalars; returns
    the output folder."""
    out_dir = os.path.join(workdir, "eval", f"step_{step:09d}")
    if writer is not None:
        writer.write_scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
        writer.write_images(step, {"eval/grid": image_grid.make_grid(rows)[None]})
        writer.flush()
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        image_grid.save_png(os.path.join(out_dir, "reconstructions.png"), image_grid.make_grid(rows))
        tmp = os.path.join(out_dir, "metrics.json.tmp")
        with open(tmp, "w") as f:
            json.dump({"step": step, **(notes or {}), **metrics}, f, indent=2, sort_keys=True)
        os.replace(tmp, os.path.join(out_dir, "metrics.json"))
    logging.info("eval step %d: %s", step, {k: round(v, 5) for k, v in metrics.items()})
    return out_dir
