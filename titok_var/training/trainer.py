"""The generic train loop: build, restore or create, step, log, evaluate, checkpoint, stop."""

import contextlib
import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from titok_var import registry
from titok_var.checkpointing.manager import CHECKPOINT_DIR, Checkpointer, config_to_json
from titok_var.data import pipeline
from titok_var.sharding import mesh as mesh_lib
from titok_var.sharding import rules as rules_lib
from titok_var.training import config_checks, data_feed, ema, evaluation, optimizer, state_init, workdir_lock
from titok_var.training import run_status
from titok_var.training.preemption import PreemptionWatcher


@dataclasses.dataclass
class Experiment:
    """Everything built from a config before the first step."""

    config: object
    workdir: str
    mesh: Mesh
    rules: tuple
    task: object
    tx: optax.GradientTransformation
    layout: state_init.StateLayout

    @contextlib.contextmanager
    def context(self):
        """The mesh and logical rules every trace must run under."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield


@dataclasses.dataclass
class TrainResult:
    state: object
    losses: dict[int, float]  # every step's loss
    preempted: bool
    eval_metrics: dict | None


def build_experiment(config, workdir: str, devices=None) -> Experiment:
    mesh = mesh_lib.make_mesh(dict(config.mesh), devices)
    rules = rules_lib.rules_from_config(config.sharding_rules)
    task = registry.get_task(config)
    tx = optimizer.build_optimizer(config, task.trainable_mask())
    layout = state_init.state_layout(task, tx, config, mesh, rules)
    return Experiment(config, workdir, mesh, rules, task, tx, layout)


def make_train_step(task, tx, config) -> Callable:
    schedule = optimizer.learning_rate_schedule(config)
    ema_decay = float(config.train.ema_decay)

    stateful = hasattr(task, "init_task_state")

    def train_step(state, batch):
        step_rng = jax.random.fold_in(state.rng, state.step)
        task_state = state.task_state
        if stateful:
            # The task's loss also returns outputs for its auxiliary update (e.g. the discriminator
            # step on the detached reconstructions), which runs after the parameter gradient, as
            # the official two-optimizer GAN loops do.
            (loss, (metrics, outputs)), grads = jax.value_and_grad(task.loss_fn, has_aux=True)(
                state.params, batch, step_rng, state.step, task_state)
            task_state, task_metrics = task.update_task_state(task_state, outputs, batch, step_rng, state.step)
            metrics = dict(metrics, **task_metrics)
        else:
            (loss, metrics), grads = jax.value_and_grad(task.loss_fn, has_aux=True)(
                state.params, batch, step_rng, state.step)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        step = state.step + 1
        ema_params = state.ema_params
        if ema_params is not None:
            ema_params = ema.update_ema(ema_params, params, step, ema_decay)
        metrics = dict(
            metrics,
            loss=loss,
            grad_norm=optax.tree.norm(grads),
            param_norm=optax.tree.norm(params),
            learning_rate=schedule(state.step),
            # The loss is computed before the update: a finite loss can still leave NaN parameters
            # or moments behind, and such a state must never be checkpointed.
            state_is_finite=_all_finite((params, opt_state)),
        )
        new_state = state.replace(step=step, params=params, opt_state=opt_state, ema_params=ema_params,
                                  task_state=task_state)
        return new_state, metrics

    return train_step


def _all_finite(tree) -> jax.Array:
    leaves = [leaf for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves])) if leaves else jnp.array(True)


def jit_train_step(exp: Experiment):
    replicated = NamedSharding(exp.mesh, PartitionSpec())
    return jax.jit(
        make_train_step(exp.task, exp.tx, exp.config),
        in_shardings=(exp.layout.shardings, mesh_lib.batch_sharding(exp.mesh)),
        out_shardings=(exp.layout.shardings, replicated),
        donate_argnums=0,
    )


def restore_or_create(exp: Experiment, checkpointer: Checkpointer, step: int | None = None):
    """The newest (or the given) checkpoint of the work dir, else a fresh state."""
    verified = step is None
    if verified:  # training: the newest step that passes its checksums
        step = checkpointer.newest_intact_step()
    if step is None:
        logging.info("no checkpoint in %s: initialising from seed %d", exp.workdir, exp.config.seed)
        return state_init.create_train_state(exp.task, exp.tx, exp.config, exp.mesh, exp.rules, exp.layout)
    logging.info("restoring step %d from %s", step, checkpointer.directory)
    state, _ = checkpointer.restore(step, exp.layout.abstract, exp.layout.shardings, exp.config.model_name,
                                    verified=verified)
    return state


def checkpoint_meta(config) -> dict:
    return {"model_name": config.model_name, "global_batch_size": config.train.global_batch_size,
            "config": config_to_json(config)}


def open_checkpointer(config, workdir: str) -> Checkpointer:
    return Checkpointer(
        workdir,
        keep=config.train.keep_checkpoints,
        keep_period=config.train.keep_period,
        async_save=config.train.async_checkpointing,
    )


class NonFiniteLossError(FloatingPointError):
    pass


def _first_nonfinite(pending: list[tuple[int, dict]]) -> tuple[int, str] | None:
    """(step, what) of the first step whose loss or updated state is not finite."""
    fetched = jax.device_get([(metrics["loss"], metrics["state_is_finite"]) for _, metrics in pending])
    for (step, _), (loss, state_ok) in zip(pending, fetched):
        if not np.isfinite(loss):
            return step, f"the loss became {float(loss)}"
        if not state_ok:
            return step, "the parameters or optimizer state became non-finite"
    return None


def _mean_metrics(pending: list[tuple[int, dict]]) -> dict[str, float]:
    fetched = jax.device_get([metrics for _, metrics in pending])
    return {f"train/{k}": float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


def train(config, workdir: str, *, devices=None, step_callback: Callable | None = None) -> TrainResult:
    """Trains until `config.train.num_steps`, resuming from the newest checkpoint in `workdir`.

    The config is checked first (seconds, before any model or data work); the work dir is locked
    for the run (`workdir_lock`)."""
    try:
        config_checks.check_training_config(config, devices)
    except config_checks.ConfigError as e:
        write_status(workdir, "failed", error=str(e))
        raise
    with workdir_lock.hold(workdir):
        if jax.process_index() == 0:  # a crash of this run must not leave an earlier run's status behind
            run_status.clear_status(workdir)
        try:
            return _train(config, workdir, devices, step_callback)
        except Exception as e:  # a restart would meet the same error: launch scripts stop retrying
            write_status(workdir, "failed", error=f"{type(e).__name__}: {e}")
            raise


def _train(config, workdir: str, devices, step_callback) -> TrainResult:
    exp = build_experiment(config, workdir, devices)
    checkpointer = open_checkpointer(config, workdir)
    try:
        return _train_loop(exp, checkpointer, step_callback)
    finally:
        checkpointer.close()  # also on an exception: a pending asynchronous save finishes first


def _train_loop(exp: Experiment, checkpointer: Checkpointer, step_callback) -> TrainResult:
    config, workdir = exp.config, exp.workdir
    train_config = config.train
    total = int(train_config.num_steps)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    losses: dict[int, float] = {}
    eval_metrics = None
    preempted = False
    with exp.context(), PreemptionWatcher() as watcher:
        state = restore_or_create(exp, checkpointer)
        start = int(jax.device_get(state.step))
        if start == 0:
            writer.write_hparams(_flat_config(config))
        train_step = jit_train_step(exp)
        hooks = [periodic_actions.ReportProgress(num_train_steps=total, writer=writer,
                                                 every_steps=train_config.log_every_steps)]
        if train_config.profile_num_steps > 0:
            hooks.append(periodic_actions.Profile(
                logdir=workdir, first_profile=train_config.profile_first_step,
                num_profile_steps=train_config.profile_num_steps))
        stats = pipeline.PipelineStats()
        batches = data_feed.train_iterator(config, exp.mesh, start, stats)
        pending: list[tuple[int, dict]] = []

        def check_finite():
            bad = _first_nonfinite(pending)
            if bad is not None:
                checkpointer.wait()
                raise NonFiniteLossError(
                    f"{bad[1]} at step {bad[0]}; training stopped. The last good (finite) checkpoint "
                    f"is step {checkpointer.latest_step()} in {checkpointer.directory}"
                )

        def log_pending(step):
            check_finite()
            fetched = jax.device_get([m["loss"] for _, m in pending])
            losses.update({s: float(v) for (s, _), v in zip(pending, fetched)})
            scalars = _mean_metrics(pending)
            scalars["train/skipped_corrupt_images"] = float(stats.skipped_corrupt)
            writer.write_scalars(step, scalars)
            pending.clear()

        saved_step = start

        def save(step):
            nonlocal saved_step
            if pending:
                log_pending(step)  # raises before a non-finite state can be written
            if step == saved_step:  # e.g. a preemption right after a checkpoint step
                return
            checkpointer.save(state, dict(checkpoint_meta(config), data_position=step * train_config.global_batch_size))
            saved_step = step

        for step in range(start + 1, total + 1):
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                state, metrics = train_step(state, next(batches))
            pending.append((step, metrics))
            for hook in hooks:
                hook(step)
            if step_callback is not None:
                step_callback(step, state)
            last = step == total
            if step % train_config.log_every_steps == 0 or last:
                log_pending(step)
            if step % train_config.checkpoint_every_steps == 0 or last:
                save(step)
            if (train_config.eval_every_steps and step % train_config.eval_every_steps == 0) or last:
                eval_metrics, rows = evaluation.evaluate(
                    exp.task, evaluation.eval_params(state, config), exp.layout.shardings.params, config, exp.mesh,
            task_state=state.task_state)
                evaluation.write_eval_outputs(workdir, step, eval_metrics, rows, writer,
                                              evaluation.metric_notes(config, eval_metrics))
            if not last and watcher.requested(step):
                logging.warning("preemption requested at step %d: saving a checkpoint and stopping", step)
                save(step)
                preempted = True
                break
        checkpointer.wait()
        writer.flush()
    write_status(workdir, "preempted" if preempted else "complete", int(jax.device_get(state.step)), total)
    return TrainResult(state=state, losses=losses, preempted=preempted, eval_metrics=eval_metrics)


STATUS_FILE = run_status.STATUS_FILE


def write_status(workdir: str, status: str, step: int | None = None, num_steps: int | None = None,
                 error: str | None = None) -> None:
    """How this run ended, for launch scripts (process 0; see training/run_status.py)."""
    if jax.process_index() == 0:
        run_status.write_status(workdir, status, step, num_steps, error)


def restore_inference_params(exp: Experiment, workdir: str, step: int | None = None, purpose: str = "restore"):
    """(params, task_state, step, used_ema) of the newest (or given) checkpoint of `workdir` on the
    experiment's mesh: the EMA parameters where `eval.use_ema` asks and the step holds them, the
    task's auxiliary state, never the optimizer moments. A work dir without a checkpoint raises
    FileNotFoundError saying what it was wanted for (and creates nothing)."""
    directory = epath.Path(workdir) / CHECKPOINT_DIR
    if not directory.is_dir():
        hint = " (it is an export: pass it as --export_dir)" if (epath.Path(workdir) / "export.json").exists() else ""
        raise FileNotFoundError(f"no checkpoint to {purpose}: {directory} does not exist{hint}")
    checkpointer = open_checkpointer(exp.config, workdir)
    try:
        step = checkpointer.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint to {purpose} in {checkpointer.directory}")
        logging.info("restoring the parameters of step %d from %s", step, checkpointer.directory)
        layout = exp.layout
        params, task_state, used_ema = checkpointer.restore_params(
            step, layout.abstract.params, layout.shardings.params, exp.config.model_name,
            use_ema=bool(exp.config.eval.use_ema), abstract_task_state=layout.abstract.task_state,
            task_state_shardings=layout.shardings.task_state)
    finally:
        checkpointer.close()
    return params, task_state, step, used_ema


def _flat_config(config, prefix=""):
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items"):
            flat.update(_flat_config(value, name + "."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
    return flat
