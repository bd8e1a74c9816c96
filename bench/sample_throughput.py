"""Sampling throughput of a generator config (VAR or MaskGIT): images/s, tokens/s, FLOPs, MFU.

  python bench/sample_throughput.py --config configs/var_d16.py --batch_size 64 --runs 5 \
      --dtype bfloat16 --cfg 1.5 --peak_tflops 989
  python bench/sample_throughput.py --config configs/maskgit_titok_l32.py --batch_size 125

Times the jitted class-conditional sampler on random parameters, initialised on device inside
jit and sharded as in training (`--config.mesh.*`; d30's fsdp=8 needs `--config.mesh.fsdp=1` on
one GPU). VAR gets a randomly initialised multi-scale quantizer in place of the frozen VQVAE
export; MaskGIT needs no tokenizer. Pixel decoding (VQVAE / TiTok decoder) is not timed: the
output is VAR's f_hat or MaskGIT's token ids.

Compilation (`compile_s`) and `--warmup` calls are excluded; `seconds_per_batch` is the median of
`--runs` timed calls. Model FLOPs come from XLA's cost analysis of the compiled sampler; where
that analysis counts a loop body once (MaskGIT's step scan, where a probe scan of the same length
shows it), the other T - 1 network passes are added from the cost analysis of one guided forward. The flags --config,
--batch_size, --warmup and --peak_tflops are those of bench/train_step.py (imported, shared).
"""

import dataclasses
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable

# `python bench/sample_throughput.py` puts bench/ first on sys.path; the repo root holds the
# packages (titok_var, configs, bench).
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from bench import train_step  # noqa: E402  (defines --config, --batch_size, --warmup, --peak_tflops)
from titok_var.generation import maskgit_sampling  # noqa: E402
from titok_var.generation.var_sampling import QuantizerOps, sample_scales  # noqa: E402
from titok_var.quantizers import multiscale  # noqa: E402
from titok_var.quantizers.multiscale import MultiScaleResidualQuantizer  # noqa: E402
from titok_var.sharding import mesh as mesh_lib  # noqa: E402
from titok_var.tasks.titok import DTYPES  # noqa: E402
from titok_var.training import state_init, trainer  # noqa: E402

_RUNS = flags.DEFINE_integer("runs", 5, "Timed sampler calls (the median is reported).")
_DTYPE = flags.DEFINE_enum("dtype", None, sorted(DTYPES), "Compute dtype (default: config.model.dtype).")
_CFG = flags.DEFINE_float("cfg", None, "Guidance scale: VAR sampling.cfg, MaskGIT sampling.guidance_scale "
                                       "(default: the config's).")
_NUM_DEVICES = flags.DEFINE_integer("num_devices", 0, "Use the first N devices (0: all).")

GENERATORS = ("var", "maskgit")
REPORT_FIELDS = ("compile_s", "seconds_per_batch", "images_per_s", "tokens_per_s", "model_flops_per_image", "mfu")


def guidance_scale(config) -> float:
    return float(config.sampling.cfg if config.model_name == "var" else config.sampling.guidance_scale)


def apply_overrides(config, dtype: str | None, cfg: float | None):
    """Returns a copy of `config` with the benchmark's dtype and guidance scale."""
    if config.model_name not in GENERATORS:
        raise ValueError(f"sample_throughput benchmarks generators {GENERATORS}, got model_name {config.model_name!r}")
    config = config.copy_and_resolve_references()
    if dtype is not None:
        config.model.dtype = dtype
    if cfg is not None:
        if config.model_name == "var":
            config.sampling.cfg = cfg
        else:
            config.sampling.guidance_scale = cfg
    return config


def cost_flops(compiled) -> float:
    """FLOPs of a compiled program (per device) from XLA's cost analysis; 0 when unavailable."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


@functools.cache
def loop_body_counted_once(trip_count: int) -> bool:
    """Whether this backend's cost analysis counts the body of a `trip_count`-step scan once (XLA
    keeps the loop and does not multiply) rather than per step (it multiplies, or unrolls the loop)."""
    weight, x = jnp.ones((64, 64)), jnp.ones((64, 64))

    def loop(x):
        return jax.lax.scan(lambda carry, _: (carry @ weight, None), x, None, length=trip_count)[0]

    single = cost_flops(jax.jit(lambda x: x @ weight).lower(x).compile())
    looped = cost_flops(jax.jit(loop).lower(x).compile())
    return looped < 2 * single


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A jittable `sample(*args, key)` and what the report needs to interpret it."""

    sample: Callable
    args: tuple  # every argument but the key, already on device
    tokens_per_image: int
    uncounted_flops: Callable  # () -> per-device FLOPs the sampler's cost analysis leaves out


def random_quantizer_params(quantizer: MultiScaleResidualQuantizer, seed: int, sharding) -> dict:
    """Quantizer-shaped random params drawn on the host, placed with `sharding`."""
    return jax.device_put(multiscale.random_host_params(quantizer, seed), sharding)


def var_sampler(exp, params, labels, seed: int) -> Sampler:
    """VAR next-scale sampling with a random quantizer (codebook + phi) standing in for the VQVAE's."""
    model = exp.task.model
    quantizer = MultiScaleResidualQuantizer(codebook_size=model.vocab_size, code_dim=model.vae_channels,
                                            patch_nums=tuple(int(p) for p in model.patch_nums))
    size = quantizer.full_size
    replicated = jax.sharding.NamedSharding(exp.mesh, jax.sharding.PartitionSpec())
    quantizer_params = random_quantizer_params(quantizer, seed, replicated)
    settings = exp.task.settings

    def sample(params, quantizer_params, labels, key):
        bound = quantizer.bind({"params": quantizer_params})
        ops = QuantizerOps(lookup=bound.lookup, codebook=lambda: quantizer_params["embedding"],
                           next_input=bound.next_autoregressive_input, full_size=size, code_dim=quantizer.code_dim)
        _, f_hat = sample_scales(model, params, ops, labels, key, settings)
        return f_hat

    return Sampler(sample, (params, quantizer_params, labels), model.num_tokens, lambda: 0.0)


def maskgit_sampler(exp, params, labels, seed: int) -> Sampler:
    """MaskGIT parallel decoding (one scan over the steps) of the generator alone."""
    del seed
    task = exp.task
    settings = task.settings
    seq_len = int(exp.config.model.seq_len)
    guided = bool(np.any(maskgit_sampling.guidance_scales(settings) != 0))

    def uncounted_flops():
        if settings.num_steps == 1 or not loop_body_counted_once(settings.num_steps):
            return 0.0
        # One step's network pass on the (doubled, when guided) batch; the step's own sampling
        # arithmetic is left out, so this slightly undercounts.
        rows = labels.shape[0] * (2 if guided else 1)
        tokens = jax.device_put(np.full((rows, seq_len), task.model.mask_token_id, np.int32),
                                mesh_lib.batch_sharding(exp.mesh))
        step_labels = jax.device_put(np.zeros((rows,), np.int32), mesh_lib.batch_sharding(exp.mesh))
        forward = jax.jit(lambda p, t, c: task.model.apply({"params": p}, t, c, deterministic=True))
        return (settings.num_steps - 1) * cost_flops(forward.lower(params, tokens, step_labels).compile())

    return Sampler(task.sample, (params, labels), seq_len, uncounted_flops)


SAMPLERS = {"var": var_sampler, "maskgit": maskgit_sampler}


def run_benchmark(config, batch_size: int, *, runs: int, warmup: int, num_devices: int = 0, seed: int = 0) -> dict:
    """Compiles and times the sampler of `config` (already overridden); returns the report's numbers."""
    if config.model_name not in SAMPLERS:
        raise ValueError(f"sample_throughput benchmarks generators {GENERATORS}, got model_name {config.model_name!r}")
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    devices = jax.devices()
    if num_devices:
        if not 0 < num_devices <= len(devices):
            raise ValueError(f"--num_devices {num_devices} but {len(devices)} devices are available")
        devices = devices[:num_devices]
    exp = trainer.build_experiment(config, "/tmp/bench_unused", devices)
    divisor = mesh_lib.batch_divisor(exp.mesh)
    if batch_size < 1 or batch_size % divisor:
        raise ValueError(f"batch size {batch_size} must be a positive multiple of the batch-sharding "
                         f"devices {divisor} (mesh {dict(exp.mesh.shape)}); change --batch_size or --num_devices")
    rng = np.random.default_rng(seed)
    labels_host = rng.integers(0, exp.task.num_classes, (batch_size,), np.int32)
    with exp.context():
        replicated = jax.sharding.NamedSharding(exp.mesh, jax.sharding.PartitionSpec())
        # An rbg key compiles the init faster than threefry; the parameter values do not matter here.
        init_key = jax.device_put(jax.random.key(seed, impl="rbg"), replicated)
        params = jax.jit(functools.partial(state_init.unboxed_params, exp.task),
                         out_shardings=exp.layout.shardings.params)(init_key)
        sampler_key = jax.random.key(seed)
        labels = jax.device_put(labels_host, mesh_lib.batch_sharding(exp.mesh))
        sampler = SAMPLERS[config.model_name](exp, params, labels, seed)
        keys = [jax.device_put(jax.random.fold_in(sampler_key, i), replicated) for i in range(warmup + runs)]
        start = time.perf_counter()
        compiled = jax.jit(sampler.sample).lower(*sampler.args, keys[0]).compile()
        compile_s = time.perf_counter() - start
        flops = cost_flops(compiled) + sampler.uncounted_flops()
        for key in keys[:warmup]:
            jax.block_until_ready(compiled(*sampler.args, key))
        times = []
        for key in keys[warmup:]:
            start = time.perf_counter()
            jax.block_until_ready(compiled(*sampler.args, key))
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {
        "device_kind": devices[0].device_kind,
        "num_devices": exp.mesh.size,
        "mesh": dict(exp.mesh.shape),
        "model_name": config.model_name,
        "dtype": config.model.dtype,
        "num_params": sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params)),
        "guidance": guidance_scale(config),
        "batch_size": batch_size,
        "runs": runs,
        "compile_s": compile_s,
        "seconds_per_batch": seconds,
        "min_s": min(times),
        "max_s": max(times),
        "images_per_s": batch_size / seconds,
        "tokens_per_image": sampler.tokens_per_image,
        "tokens_per_s": batch_size * sampler.tokens_per_image / seconds,
        # cost_analysis counts the whole SPMD program once per device (as bench/train_step.py).
        "flops_per_device": flops,
        "model_flops_per_image": flops * exp.mesh.size / batch_size,
    }


def format_report(report: dict, peak_tflops: float) -> str:
    """`key: value` lines; MFU against `peak_tflops` per device (n/a when 0 or no FLOPs)."""
    lines = [
        f"device: {report['device_kind']} x{report['num_devices']}  mesh: {report['mesh']}  "
        f"dtype: {report['dtype']}  jax {jax.__version__}",
        f"config: {report['model_name']}  params: {report['num_params'] / 1e6:.1f}M  "
        f"batch: {report['batch_size']}  guidance: {report['guidance']:g}",
        f"compile_s: {report['compile_s']:.2f}",
        f"seconds_per_batch: {report['seconds_per_batch']:.4f} (median of {report['runs']} runs; "
        f"min {report['min_s']:.4f}, max {report['max_s']:.4f})",
        f"images_per_s: {report['images_per_s']:.2f}",
        f"tokens_per_s: {report['tokens_per_s']:.1f} ({report['tokens_per_image']} tokens per image)",
        f"model_flops_per_image: {report['model_flops_per_image']:.3e}",
    ]
    if peak_tflops > 0 and report["flops_per_device"] > 0:
        mfu = report["flops_per_device"] / report["seconds_per_batch"] / (peak_tflops * 1e12)
        lines.append(f"mfu: {100 * mfu:.3g}% of {peak_tflops:g} TFLOP/s per device")
    else:
        lines.append("mfu: n/a (pass --peak_tflops, the device's dense peak at the compute dtype)")
    return "\n".join(lines)


def main(argv):
    del argv
    config = apply_overrides(train_step._CONFIG.value, _DTYPE.value, _CFG.value)
    batch_size = train_step._BATCH.value or config.sample.global_batch_size
    report = run_benchmark(config, batch_size, runs=_RUNS.value, warmup=train_step._WARMUP.value,
                           num_devices=_NUM_DEVICES.value, seed=int(config.seed))
    print(format_report(report, train_step._PEAK.value))


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
