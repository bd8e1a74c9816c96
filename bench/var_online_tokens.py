"""What VAR's fresh-crop training costs: tokenizing in the step vs. reading pre-tokenized shards.

  python -m bench.var_online_tokens                       # runlocal sizes, timed on this machine
  python -m bench.var_online_tokens --full_size_flops     # + XLA FLOPs of VAR-d16 and the 256 px VQVAE

Times the real jitted VAR train step on the `var_d16.py:runlocal` shapes twice, once on token
batches (pre-tokenized shards) and once on image batches that the frozen VQVAE (random weights,
written as an export) tokenizes inside the step (`:online`). With `--full_size_flops` it also
compiles, without running, the VAR-d16 train step and the released-shape VQVAE encoder at 256 px
and prints their FLOPs per image from XLA's cost analysis, and the storage that pre-tokenizing
several random views would need.
"""

import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from configs import var_d16, var_vqvae
from titok_var import registry
from titok_var.sharding import mesh as mesh_lib
from titok_var.tools import export
from titok_var.training import state_init, trainer

_BATCH = flags.DEFINE_integer("batch_size", 32, "Global batch of the timed runlocal steps.")
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per timed window.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed windows (the median is reported).")
_FULL = flags.DEFINE_bool("full_size_flops", False, "Also compile the full-size models for FLOPs.")

IMAGENET_TRAIN_IMAGES = 1_281_167


def _write_random_vqvae_export(vq_config, export_dir: str) -> str:
    task = registry.get_task(vq_config)
    params = jax.jit(lambda key: state_init.unboxed_params(task, key))(jax.random.key(0))
    return export.write_export(vq_config, jax.device_get(params), export_dir, {"step": 0})


def _time_steps(config, batch: dict) -> float:
    exp = trainer.build_experiment(config, "/tmp/bench_unused")
    with exp.context():
        state = state_init.create_train_state(exp.task, exp.tx, config, exp.mesh, exp.rules, exp.layout)
        sharding = mesh_lib.batch_sharding(exp.mesh)
        batch = {k: jax.device_put(v, sharding) for k, v in batch.items()}
        compiled = trainer.jit_train_step(exp).lower(state, batch).compile()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        windows = []
        for _ in range(_REPEATS.value):
            start = time.perf_counter()
            for _ in range(_STEPS.value):
                state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            windows.append((time.perf_counter() - start) / _STEPS.value)
    return statistics.median(windows)


def _flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def _full_size_flops() -> None:
    vq_config = var_vqvae.get_config()
    vq_task = registry.get_task(vq_config)
    vq_shapes = jax.eval_shape(lambda: state_init.unboxed_params(vq_task, jax.random.key(0)))
    images = jax.ShapeDtypeStruct((8, 256, 256, 3), jnp.float32)
    encode = _flops(vq_task.encode_tokens, vq_shapes, images) / 8

    config = var_d16.get_config()
    task = registry.get_task(config)
    params = jax.eval_shape(lambda: state_init.unboxed_params(task, jax.random.key(0)))
    tokens = jax.ShapeDtypeStruct((8, task.model.num_tokens), jnp.int32)
    labels = jax.ShapeDtypeStruct((8,), jnp.int32)
    # Teacher input from random tokens needs the VQVAE quantizer; its FLOPs are negligible, so a
    # zero input of the right shape stands in for it.
    var_input = jax.ShapeDtypeStruct((8, task.model.num_tokens - task.model.first_l, task.model.vae_channels),
                                     jnp.float32)

    def loss(p, lab, x, tok):
        logits = task.model.apply({"params": p}, lab, x, deterministic=True)
        return jnp.mean(jax.nn.log_softmax(logits) * jax.nn.one_hot(tok, logits.shape[-1]))

    train = _flops(jax.value_and_grad(loss), params, labels, var_input, tokens) / 8
    print(f"full size, per image: VQVAE encoder (vae_ch160v4096z32, 256 px) {encode:.3e} FLOPs; "
          f"VAR-d16 forward+backward {train:.3e} FLOPs; tokenizing in the step adds {100 * encode / train:.1f}%")
    per_view = IMAGENET_TRAIN_IMAGES * task.model.num_tokens * 2  # int16 ids (4096 codes)
    print(f"pre-tokenized ImageNet train split: {per_view / 1e9:.2f} GB per view as int16 "
          f"({task.model.num_tokens} tokens per image); 8 random views {8 * per_view / 1e9:.1f} GB")


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as root:
        vq_config = var_vqvae.get_config("runlocal")
        export_dir = _write_random_vqvae_export(vq_config, os.path.join(root, "vqvae"))
        shards = var_d16.get_config("runlocal")
        shards.tokenizer.export_dir = export_dir
        online = var_d16.get_config("runlocal,online")
        online.tokenizer.export_dir = export_dir
        rng = np.random.default_rng(0)
        batch_size = _BATCH.value
        labels = rng.integers(0, shards.model.num_classes, (batch_size,), np.int32)
        num_tokens = registry.get_task(shards).model.num_tokens
        tokens = rng.integers(0, shards.model.vocab_size, (batch_size, num_tokens), np.int32)
        size = online.data.image_size
        images = rng.uniform(size=(batch_size, size, size, 3)).astype(np.float32)
        from_shards = _time_steps(shards, {"tokens": tokens, "label": labels})
        in_step = _time_steps(online, {"image": images, "label": labels})
    print(f"device: {jax.devices()[0].device_kind} x{len(jax.devices())}  jax {jax.__version__}")
    print(f"runlocal shapes ({size} px, {num_tokens} tokens), global batch {batch_size}:")
    print(f"  pre-tokenized shards: {from_shards * 1e3:.1f} ms/step, {batch_size / from_shards:.0f} images/s")
    print(f"  tokenized in step:    {in_step * 1e3:.1f} ms/step, {batch_size / in_step:.0f} images/s "
          f"({in_step / from_shards:.2f}x the step time)")
    if _FULL.value:
        _full_size_flops()


if __name__ == "__main__":
    app.run(main)
