"""Creates the train state already sharded: shapes first, then placement inside jit."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from titok_var.sharding import logical
from titok_var.sharding import rules as rules_lib
from titok_var.training.train_state import TrainState


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """Abstract train state (shapes/dtypes) and the NamedSharding of every leaf."""

    abstract: TrainState
    shardings: TrainState


def _is_spec(x):
    return isinstance(x, PartitionSpec)


def state_layout(task, tx: optax.GradientTransformation, config, mesh: Mesh, rules) -> StateLayout:
    """Shapes and shardings of the train state, without allocating it."""
    key = jax.random.key(0)  # concrete keys cannot be made under a mesh of abstract (AOT) devices
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed_params = jax.eval_shape(task.init_params, key)
    rules_lib.assert_rules_cover(boxed_params, rules)
    rules_lib.assert_divisible(boxed_params, mesh, rules)
    param_specs = rules_lib.mesh_partition_specs(boxed_params, rules)
    params = nn.unbox(boxed_params)
    opt_state = jax.eval_shape(tx.init, params)
    opt_specs = optax.tree_map_params(
        tx,
        lambda _, spec: spec,
        opt_state,
        param_specs,
        transform_non_params=lambda _: PartitionSpec(),
        is_leaf=_is_spec,
    )
    use_ema = config.train.ema_decay > 0
    task_state = jax.eval_shape(init_task_state(task), jax.random.key(0))
    abstract = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=params,
        opt_state=opt_state,
        ema_params=params if use_ema else None,
        rng=jax.eval_shape(lambda: jax.random.key(0)),
        task_state=task_state,
    )
    specs = TrainState(
        step=PartitionSpec(),
        params=param_specs,
        opt_state=opt_specs,
        ema_params=param_specs if use_ema else None,
        rng=PartitionSpec(),
        task_state=jax.tree.map(lambda _: PartitionSpec(), task_state),  # small: replicated
    )
    shardings = jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs, is_leaf=_is_spec)
    return StateLayout(abstract=abstract, shardings=shardings)


def create_train_state(task, tx, config, mesh: Mesh, rules, layout: StateLayout) -> TrainState:
    """Initialises parameters, optimizer state and EMA directly into their shardings."""
    use_ema = config.train.ema_decay > 0

    def init(seed_key):
        init_key, train_key = jax.random.split(seed_key)
        params = nn.unbox(task.init_params(init_key))
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            ema_params=params if use_ema else None,
            rng=train_key,
            # Its own stream, so adding a task state never changes the parameter init.
            task_state=init_task_state(task)(jax.random.fold_in(seed_key, 1)),
        )

    # Host-side loading (weight files, exports) runs outside the mesh: abstract inits of helper
    # models there must not meet the training mesh's activation constraints.
    overrides = task.initial_overrides() if hasattr(task, "initial_overrides") else None
    if config.train.get("init_from_export"):
        overrides = _with_export_params(config, overrides)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        seed_key = jax.device_put(jax.random.key(config.seed), NamedSharding(mesh, PartitionSpec()))
        state = jax.jit(init, out_shardings=layout.shardings)(seed_key)
        if overrides:
            state = _apply_overrides(state, overrides, tx, layout, use_ema)
        return state


def _with_export_params(config, overrides):
    """The task's warm-start values on top of every parameter of `train.init_from_export`."""
    from titok_var.tools.export import load_exported_to_host  # tools sit above training

    export_dir = config.train.init_from_export
    _, params, export_config = load_exported_to_host(export_dir)
    if export_config.model_name != config.model_name:
        raise ValueError(f"train.init_from_export {export_dir} holds a {export_config.model_name!r} model, "
                         f"this config trains a {config.model_name!r}")
    overrides = dict(overrides or {})
    task_params = overrides.get("params") or {}
    overrides["params"] = _merge(params, task_params)
    return overrides


def _merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def overlay(tree, partial, path: str = ""):
    """`tree` with the subtrees present in `partial` replaced (host arrays of the same shapes)."""
    if not isinstance(partial, dict):
        if tuple(jnp.shape(partial)) != tuple(tree.shape):
            raise ValueError(f"warm-start value for {path or '/'} has shape {tuple(jnp.shape(partial))}, "
                             f"the model expects {tuple(tree.shape)}")
        return partial
    if not isinstance(tree, dict):
        raise ValueError(f"warm-start tree has a subtree at {path}, the model a leaf")
    unknown = sorted(set(partial) - set(tree))
    if unknown:
        raise ValueError(f"warm-start values for unknown parameters under {path or '/'}: {unknown}")
    return {k: overlay(v, partial[k], f"{path}/{k}") if k in partial else v for k, v in tree.items()}


def _apply_overrides(state: TrainState, overrides: dict, tx, layout: StateLayout, use_ema: bool) -> TrainState:
    """Warm start (e.g. TiTok stage 2 from stage 1, frozen helper networks): host values for some
    parameters / task-state entries, placed into their shardings; optimizer state and EMA restart
    from the overridden parameters."""
    def place(tree, shardings):
        return jax.tree.map(lambda x, s: jax.device_put(jnp.asarray(x), s), tree, shardings)

    params, task_state = state.params, state.task_state
    if overrides.get("params"):
        # Untouched leaves stay on device: no host ever holds the whole model.
        params = place(overlay(params, overrides["params"]), layout.shardings.params)
    if overrides.get("task_state"):
        task_state = place(overlay(task_state, overrides["task_state"]), layout.shardings.task_state)
    opt_state = jax.jit(tx.init, out_shardings=layout.shardings.opt_state)(params)
    # A separate copy: the train step donates the state, and one buffer must not be donated twice.
    ema_params = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=layout.shardings.params)(params)
    return state.replace(params=params, opt_state=opt_state, ema_params=ema_params if use_ema else None,
                         task_state=task_state)



def initial_task_state(task, config, mesh: Mesh, rules, layout: StateLayout):
    """The task state a fresh run starts with (frozen helpers loaded), placed replicated; None for
    tasks without one. Inference from an export uses it where eval needs a helper network."""
    if not hasattr(task, "init_task_state"):
        return None
    overrides = task.initial_overrides() if hasattr(task, "initial_overrides") else None
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        seed_key = jax.random.fold_in(jax.random.key(config.seed), 1)
        task_state = jax.jit(init_task_state(task), out_shardings=layout.shardings.task_state)(seed_key)
        if overrides and overrides.get("task_state"):
            task_state = jax.tree.map(lambda x, s: jax.device_put(jnp.asarray(x), s),
                                      overlay(task_state, overrides["task_state"]), layout.shardings.task_state)
    return task_state


def init_task_state(task):
    """rng -> the task's auxiliary state (None for tasks without one), as plain arrays: helper
    networks' partitioning boxes are dropped (the task state is replicated)."""
    if hasattr(task, "init_task_state"):
        return lambda rng: logical.strip_partitioning(task.init_task_state(rng))
    return lambda rng: None


def unboxed_params(task, rng):
    return nn.unbox(task.init_params(rng))
