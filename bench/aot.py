"""Ahead-of-time compilation of a config's train step or sampler for a TPU slice, on this CPU host.

  pip install -e '.[aot]'      # libtpu, at our jax version
  python bench/aot.py --config configs/maskgit_titok_l32.py --topology v5p:2x2x1 --batch_size 2048
  python bench/aot.py --config configs/var_d16.py --topology v6e:2x2 --batch_size 768 --config.mesh.fsdp=4
  python bench/aot.py --config configs/var_d30.py --topology v5p:2x2x1 --batch_size 64 --what sample

JAX lowers and compiles the real sharded program (the same `jit_train_step` as training, or the
task's sampler) for the abstract devices of a TPU topology; nothing runs. Printed per device:
HBM the program needs (arguments + outputs - donated aliases + temporaries + code) against the
chip's HBM, XLA's flops and the compiler's step-time estimate where it gives one (and the
utilisation of the chip's peak that flops / estimate imply), bytes moved by each kind of
collective as the optimized HLO states them (the result buffer of every collective, async
starts included, summed per kind), and seconds to lower and to compile.

`--batch_size` sets `train.global_batch_size` (train) or the number of images sampled at once (sample);
the mesh is the config's `mesh` (override with `--config.mesh.fsdp=...`). VAR needs no VQVAE export
here: a random quantizer of the same shapes stands in (see `VarTask.use_random_quantizer`).
"""

import os
import re
import sys
import time

# Host arrays stay on the CPU; libtpu provides only the compiler for the abstract TPU devices.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # silences libtpu's host probing
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from bench import train_step  # noqa: E402  (defines --config and --batch_size, shared with the other benchmarks)
from bench.train_step import synthetic_batch  # noqa: E402
from titok_var.checkpointing.manager import placed  # noqa: E402
from titok_var.sharding import mesh as mesh_lib  # noqa: E402
from titok_var.training import trainer  # noqa: E402

_TOPOLOGY = flags.DEFINE_string("topology", "v5p:2x2x1", "TPU topology, e.g. v5p:2x2x1, v6e:2x2, v5e:2x4, v4:2x2x1.")
_WHAT = flags.DEFINE_enum("what", "train", ["train", "sample"], "The train step or the generator's sampler.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of VAR's stand-in quantizer.")

# Per chip: HBM in GiB and dense bf16 peak in TFLOP/s (Cloud TPU documentation).
CHIPS = {
    "v4": (32, 275),
    "v5e": (16, 197),
    "v5litepod": (16, 197),
    "v5p": (95, 459),
    "v6e": (32, 918),
}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
                "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
_COLLECTIVE_LINE = re.compile(r"=\s*(.+?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_SHAPE = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\]")


def chip_of(topology: str) -> str:
    chip = topology.split(":", 1)[0].lower()
    if chip not in CHIPS:
        raise ValueError(f"unknown TPU generation {chip!r} in --topology {topology!r}; known: {sorted(CHIPS)}")
    return chip


def shape_bytes(text: str) -> list[int]:
    """Bytes of every array shape written in an HLO result type, e.g. '(f32[8,128], bf16[4])'."""
    sizes = []
    for dtype, dims in _SHAPE.findall(text):
        if dtype in _DTYPE_BYTES:
            sizes.append(_DTYPE_BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d] or [1])))
    return sizes


def collective_bytes(hlo_text: str) -> dict[str, int]:
    """Per kind, the summed result bytes of the collectives of an optimized HLO module (per device).
    An async start's result tuple holds its operand and its output: the largest buffer is counted."""
    totals = dict.fromkeys(COLLECTIVES, 0)
    for line in hlo_text.splitlines():
        match = _COLLECTIVE_LINE.search(line)
        if not match:
            continue
        sizes = shape_bytes(match.group(1))
        if sizes:
            totals[match.group(2)] += max(sizes) if match.group(3) else sum(sizes)
    return totals


def train_program(exp, batch_size: int):
    """(jitted train step, abstract args): the state and a batch, sharded as in training."""
    batch_sharding = mesh_lib.batch_sharding(exp.mesh)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
             for k, v in synthetic_batch_shapes(exp.config, batch_size).items()}
    return trainer.jit_train_step(exp), (placed(exp.layout.abstract, exp.layout.shardings), batch)


def synthetic_batch_shapes(config, batch_size: int) -> dict:
    """The train batch's shapes and dtypes (the host pipeline's arrays), without drawing them."""
    example = synthetic_batch(config, 1)
    return {k: jax.ShapeDtypeStruct((batch_size,) + v.shape[1:], v.dtype) for k, v in example.items()}


def sample_program(exp, batch_size: int):
    """(jitted sampler, abstract args): parameters as in training, labels split like a batch."""
    task = exp.task
    if exp.config.model_name not in ("var", "maskgit"):
        raise ValueError(f"--what sample needs a generator config (var, maskgit), got {exp.config.model_name!r}")
    sample = task.sample_tokens if exp.config.model_name == "var" else task.sample
    replicated = NamedSharding(exp.mesh, PartitionSpec())
    labels = jax.ShapeDtypeStruct((batch_size,), np.int32, sharding=mesh_lib.batch_sharding(exp.mesh))
    key = jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype, sharding=replicated)
    params = placed(exp.layout.abstract.params, exp.layout.shardings.params)
    return jax.jit(sample), (params, labels, key)


def compile_for_topology(config, topology: str, batch_size: int, what: str, seed: int = 0) -> dict:
    from jax.experimental import topologies

    chip = chip_of(topology)
    chips = int(np.prod([int(n) for n in topology.split(":", 1)[1].split("x")]))
    # libtpu probes the host for its accelerator type unless told; v4 and v5p names count cores (2 per chip).
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{chip}-{chips * (2 if chip in ('v4', 'v5p') else 1)}")
    devices = topologies.get_topology_desc(topology_name=topology, platform="tpu").devices
    if what == "train":
        config.train.global_batch_size = batch_size
    exp = trainer.build_experiment(config, "/tmp/aot_unused", devices)
    divisor = mesh_lib.batch_divisor(exp.mesh)
    if batch_size % divisor:
        raise ValueError(f"batch {batch_size} does not split over the {divisor} batch devices of mesh "
                         f"{dict(exp.mesh.shape)}")
    if config.model_name == "var":
        exp.task.use_random_quantizer(seed)
    with exp.context():
        fn, args = (train_program if what == "train" else sample_program)(exp, batch_size)
        start = time.perf_counter()
        lowered = fn.lower(*args)
        lower_s = time.perf_counter() - start
        start = time.perf_counter()
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as e:
            # The TPU compiler refuses a program whose temporaries exceed HBM: report by how much.
            needed = _OUT_OF_HBM.search(str(e))
            if not needed:
                raise
            return _report(config, what, topology, devices, exp, batch_size, chip, lower_s=lower_s,
                           compile_s=time.perf_counter() - start, out_of_hbm_gb=(float(needed[1]), float(needed[2])))
        compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    needed = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
              + memory.temp_size_in_bytes + memory.generated_code_size_in_bytes)
    hbm_gib, peak_tflops = CHIPS[chip]
    return {
        **_report(config, what, topology, devices, exp, batch_size, chip, lower_s=lower_s, compile_s=compile_s),
        "argument_bytes": memory.argument_size_in_bytes, "output_bytes": memory.output_size_in_bytes,
        "alias_bytes": memory.alias_size_in_bytes, "temp_bytes": memory.temp_size_in_bytes,
        "code_bytes": memory.generated_code_size_in_bytes, "hbm_needed_bytes": needed,
        "hbm_bytes": hbm_gib * 2**30, "fits": needed <= hbm_gib * 2**30,
        "flops": float(cost.get("flops", 0.0)), "optimal_seconds": float(cost.get("optimal_seconds", 0.0) or 0.0),
        "peak_tflops": peak_tflops, "collective_bytes": collective_bytes(compiled.as_text()),
    }


_OUT_OF_HBM = re.compile(r"required for HLO temporaries \(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)")


def _report(config, what, topology, devices, exp, batch_size, chip, *, lower_s, compile_s, out_of_hbm_gb=None):
    """The fields every report has; `out_of_hbm_gb` = (temporaries, available) when the compiler refused."""
    return {
        "config": config.model_name, "what": what, "topology": topology, "chips": len(devices),
        "mesh": {k: int(v) for k, v in exp.mesh.shape.items()}, "batch": batch_size,
        "dtype": config.model.get("dtype", "float32"),
        "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(exp.layout.abstract.params)),
        "lower_s": lower_s, "compile_s": compile_s, "out_of_hbm_gb": out_of_hbm_gb, "fits": out_of_hbm_gb is None,
        "peak_tflops": CHIPS[chip][1],
    }


def format_report(r: dict) -> str:
    gib = 2.0**30
    header = (f"{r['config']} {r['what']} on {r['topology']} ({r['chips']} chips), mesh {r['mesh']}, global batch "
              f"{r['batch']}, {r['dtype']}, {r['params'] / 1e6:.1f}M parameters; jax {jax.__version__}")
    if r["out_of_hbm_gb"]:
        temporaries, available = r["out_of_hbm_gb"]
        return "\n".join([header, f"hbm_per_chip_gib: does NOT fit: temporaries alone need {temporaries:.1f} G of "
                                  f"{available:.1f} G available (the compiler stops there; short by at least "
                                  f"{temporaries - available:.1f} G)", f"lower_s: {r['lower_s']:.1f}  compile_s: "
                                  f"{r['compile_s']:.1f} (until refused)"])
    lines = [
        header,
        f"hbm_per_chip_gib: {r['hbm_needed_bytes'] / gib:.2f} of {r['hbm_bytes'] / gib:.0f} "
        f"({'fits' if r['fits'] else 'does NOT fit: short by %.2f GiB' % ((r['hbm_needed_bytes'] - r['hbm_bytes']) / gib)})",
        f"  arguments {r['argument_bytes'] / gib:.2f}  outputs {r['output_bytes'] / gib:.2f}  donated aliases "
        f"-{r['alias_bytes'] / gib:.2f}  temporaries {r['temp_bytes'] / gib:.2f}  code {r['code_bytes'] / gib:.3f}",
        f"flops_per_chip: {r['flops']:.3e}",
    ]
    if r["optimal_seconds"] > 0:
        utilisation = r["flops"] / r["optimal_seconds"] / (r["peak_tflops"] * 1e12)
        lines.append(f"compiler_estimate_s: {r['optimal_seconds']:.4f} (implies {100 * utilisation:.0f}% of "
                     f"{r['peak_tflops']} TFLOP/s bf16 peak)")
    else:
        lines.append("compiler_estimate_s: n/a (the compiler gave none)")
    moved = ", ".join(f"{k} {v / 2**20:.1f}" for k, v in r["collective_bytes"].items() if v)
    lines.append(f"collective_mib_per_chip: {moved or 'none'}")
    lines.append(f"lower_s: {r['lower_s']:.1f}  compile_s: {r['compile_s']:.1f}")
    return "\n".join(lines)


def main(argv):
    del argv
    config = train_step._CONFIG.value
    batch = train_step._BATCH.value or (config.train.global_batch_size if _WHAT.value == "train"
                                        else config.sample.global_batch_size)
    print(format_report(compile_for_topology(config, _TOPOLOGY.value, batch, _WHAT.value, _SEED.value)), flush=True)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
