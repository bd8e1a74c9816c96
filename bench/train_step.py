"""Training-step throughput of any config: step time, examples/s, tokens/s, model FLOPs, MFU.

  python bench/train_step.py --config configs/titok_l32.py --batch_size 256 --peak_tflops 989
  python bench/train_step.py --config configs/maskgit_titok_l32.py --batch_size 512 --mesh_fsdp 8

Runs the real jitted train step (sharded state, donation) on synthetic batches: images in [0, 1]
for tokenizers, random tokens and labels for generators. Compilation and `--warmup` steps are
excluded; the median of `--repeats` timed windows of `--steps` steps is reported. Model FLOPs
come from XLA's cost analysis of the compiled step (forward + backward + optimizer), divided by
the number of devices for MFU against `--peak_tflops` (per device; 0 skips MFU).
"""

import statistics
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from titok_var.sharding import mesh as mesh_lib
from titok_var.training import state_init, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Global batch (default: config.train.global_batch_size).")
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per timed window.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed windows (the median is reported).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Peak dense TFLOP/s of one device at the compute dtype.")


def token_shape(config) -> tuple[int, int]:
    """(tokens per example, vocabulary) of a generator config: VAR's L over all scales, MaskGIT's seq_len."""
    if config.model_name == "var":
        return sum(int(p) ** 2 for p in config.model.patch_nums), int(config.model.vocab_size)
    return int(config.model.seq_len), int(config.model.codebook_size)


def synthetic_batch(config, batch_size: int) -> dict:
    rng = np.random.default_rng(0)
    if config.data.name == "tokens":
        length, vocab = token_shape(config)
        return {"tokens": rng.integers(0, vocab, (batch_size, length), np.int32),
                "label": rng.integers(0, config.model.num_classes, (batch_size,), np.int32)}
    size = config.data.image_size
    return {"image": rng.uniform(size=(batch_size, size, size, 3)).astype(np.float32),
            "label": np.zeros((batch_size,), np.int32)}


def tokens_per_example(config) -> int:
    if config.data.name == "tokens":
        return token_shape(config)[0]
    return (config.model.image_size // config.model.patch_size) ** 2


def main(argv):
    del argv
    config = _CONFIG.value
    batch_size = _BATCH.value or config.train.global_batch_size
    exp = trainer.build_experiment(config, "/tmp/bench_unused")
    with exp.context():
        state = state_init.create_train_state(exp.task, exp.tx, config, exp.mesh, exp.rules, exp.layout)
        sharding = mesh_lib.batch_sharding(exp.mesh)
        batch = {k: jax.device_put(v, sharding) for k, v in synthetic_batch(config, batch_size).items()}
        step_fn = trainer.jit_train_step(exp)
        compiled = step_fn.lower(state, batch).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops_per_step = float(cost.get("flops", 0.0)) if cost else 0.0
        for _ in range(_WARMUP.value):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(state)
        windows = []
        for _ in range(_REPEATS.value):
            start = time.perf_counter()
            for _ in range(_STEPS.value):
                state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            windows.append((time.perf_counter() - start) / _STEPS.value)
    step_time = statistics.median(windows)
    devices = exp.mesh.size
    print(f"device: {jax.devices()[0].device_kind} x{devices}  mesh: {dict(exp.mesh.shape)}  "
          f"dtype: {config.model.dtype}  jax {jax.__version__}")
    print(f"config: {config.model_name}  global batch: {batch_size}")
    print(f"step_time_s: {step_time:.4f} (median of {_REPEATS.value} x {_STEPS.value} steps; "
          f"min {min(windows):.4f}, max {max(windows):.4f})")
    print(f"examples_per_s: {batch_size / step_time:.1f}")
    print(f"tokens_per_s: {batch_size * tokens_per_example(config) / step_time:.1f}")
    # cost_analysis counts the whole SPMD program once per device on most backends.
    print(f"model_flops_per_example: {flops_per_step * devices / batch_size:.3e}")
    if _PEAK.value > 0 and flops_per_step:
        mfu = flops_per_step / step_time / (_PEAK.value * 1e12)
        print(f"mfu: {100 * mfu:.1f}% of {_PEAK.value} TFLOP/s per device")


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
