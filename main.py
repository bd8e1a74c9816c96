"""Entry point: train, evaluate, summarise or export a model described by an ml_collections config.

  python main.py --config configs/titok_tiny.py --workdir runs/quickstart --mode train
  python main.py --config configs/titok_l32.py:runlocal --workdir /tmp/l32 --config.train.num_steps=10
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (path.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "summary", "export", "import", "sample", "probe"],
                          "train | eval (of the newest checkpoint, or of --export_dir; generators with "
                          "eval.reference_stats also get gFID/IS/PR) | summary (parameter counts) | export | "
                          "import (--converted weights -> --export_dir) | sample | probe (linear probing).")
_CONVERTED = flags.DEFINE_string("converted", None, "Converted weights (.npz from titok_var.tools.convert) for --mode import.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step for eval/export (default: newest).")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Output folder of --mode export / import; for eval, sample "
                                  "and probe: the export to use instead of the work dir's checkpoints (read only).")
_COMPUTE_DTYPE = flags.DEFINE_enum("compute_dtype", None, ["float32", "bfloat16", "float16"],
                                   "eval / sample / probe: compute dtype (default: the export's model.dtype, float32 "
                                   "for imported weights; a checkpoint's config dtype).")
_IMPORT_DTYPE = flags.DEFINE_enum("import_dtype", "float32", ["float32", "bfloat16", "float16"],
                                  "--mode import: model.dtype recorded in the export (inference precision).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Number of processes (with coordinator).")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's index (with coordinator).")
_AUTO_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "jax.distributed.initialize() auto-detect.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from titok_var import distributed

    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _AUTO_DISTRIBUTED.value)
    config = _CONFIG.value
    mode = _MODE.value
    if mode == "summary":
        from titok_var.tools import summary

        print(summary.format_counts(summary.parameter_counts(config)), flush=True)
        return
    if not _WORKDIR.value and mode != "import":
        raise app.UsageError(f"--workdir is required for --mode {mode}")
    workdir = os.path.abspath(_WORKDIR.value or ".")
    from titok_var.training import trainer

    if mode == "train":
        result = trainer.train(config, workdir)
        if result.preempted:
            logging.warning("stopped for preemption at step %d; run again to resume", int(result.state.step))
        return
    if mode == "import":
        if not (_CONVERTED.value and _EXPORT_DIR.value):
            raise app.UsageError("--mode import needs --converted FILE.npz and --export_dir")
        from titok_var.tools import export

        print(export.import_converted(config, _CONVERTED.value, _EXPORT_DIR.value, dtype=_IMPORT_DTYPE.value),
              flush=True)
        return
    if mode == "export":
        if not _EXPORT_DIR.value:
            raise app.UsageError("--export_dir is required for --mode export")
        from titok_var.tools import export

        print(export.export_checkpoint(config, workdir, _EXPORT_DIR.value, _STEP.value), flush=True)
        return
    # Inference: the work dir's checkpoint, or --export_dir (only read; outputs go to the work dir).
    if _EXPORT_DIR.value and os.path.abspath(_EXPORT_DIR.value) == workdir:
        raise app.UsageError("--workdir receives the outputs: give one other than --export_dir")
    source = dict(export_dir=_EXPORT_DIR.value, compute_dtype=_COMPUTE_DTYPE.value)
    if mode == "eval":
        from titok_var.training import inference

        metrics = inference.evaluate(config, workdir, step=_STEP.value, **source)
        print({k: round(v, 5) for k, v in metrics.items()}, flush=True)
        if config.eval.get("reference_stats"):
            from titok_var.tools import generative_eval

            generation = generative_eval.generative_eval_checkpoint(config, workdir, _STEP.value, **source)
            print({k: round(float(v), 5) for k, v in generation.items()}, flush=True)
    elif mode == "sample":
        from titok_var.tools import sample

        print(sample.sample_checkpoint(config, workdir, _STEP.value, **source), flush=True)
    elif mode == "probe":
        from titok_var.tools import linear_probe_run

        print(linear_probe_run.probe_checkpoint(config, workdir, _STEP.value, **source), flush=True)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
