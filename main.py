"""Entry point: train, evaluate, summarise or export a model described by an ml_collections config.

  python main.py --config configs/titok_tiny.py --workdir runs/quickstart --mode train
  python main.py --config configs/titok_l32.py:runlocal --workdir /tmp/l32 --config.train.num_steps=10
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

MODES = ["train", "eval", "summary", "export", "import", "sample", "probe"]


def define_flags(flag_values=flags.FLAGS) -> dict:
    """The command line of main.py (a function, so tests can parse README lines with it)."""
    fv = dict(flag_values=flag_values)
    return dict(
        config=config_flags.DEFINE_config_file("config", None, "Experiment config file (path.py[:arg]).",
                                               lock_config=True, **fv),
        workdir=flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.", **fv),
        mode=flags.DEFINE_enum(
            "mode", "train", MODES,
            "train | eval (of the newest checkpoint, or of --export_dir; generators with eval.reference_stats also "
            "get gFID/IS/PR) | summary (parameter counts) | export | import (--converted weights -> --export_dir) | "
            "sample | probe (linear probing).", **fv),
        converted=flags.DEFINE_string("converted", None, "Converted weights (.npz from titok_var.tools.convert) "
                                      "for --mode import.", **fv),
        step=flags.DEFINE_integer("step", None, "Checkpoint step for eval/export (default: newest).", **fv),
        export_dir=flags.DEFINE_string("export_dir", None, "Output folder of --mode export / import; for eval, "
                                       "sample and probe: the export to use instead of the work dir's checkpoints "
                                       "(read only).", **fv),
        compute_dtype=flags.DEFINE_enum("compute_dtype", None, ["float32", "bfloat16", "float16"],
                                        "eval / sample / probe: compute dtype (default: the export's model.dtype, "
                                        "float32 for imported weights; a checkpoint's config dtype).", **fv),
        import_dtype=flags.DEFINE_enum("import_dtype", "float32", ["float32", "bfloat16", "float16"],
                                       "--mode import: model.dtype recorded in the export (inference precision).", **fv),
        coordinator_address=flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).",
                                                **fv),
        num_processes=flags.DEFINE_integer("num_processes", 1, "Number of processes (with coordinator).", **fv),
        process_id=flags.DEFINE_integer("process_id", 0, "This process's index (with coordinator).", **fv),
        distributed=flags.DEFINE_bool("distributed", False, "jax.distributed.initialize() auto-detect.", **fv),
        verbose_logs=flags.DEFINE_bool("verbose_logs", False, "Also show the libraries' INFO lines (orbax, jax, "
                                       "TensorFlow); by default only this package's lines, progress and warnings.",
                                       **fv),
    )


def main(argv, f: dict):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from titok_var import logs

    logs.configure(verbose=f["verbose_logs"].value)
    from titok_var import distributed

    distributed.initialize(f["coordinator_address"].value, f["num_processes"].value, f["process_id"].value, f["distributed"].value)
    config = f["config"].value
    mode = f["mode"].value
    if mode == "summary":
        from titok_var.tools import summary

        print(summary.format_counts(summary.parameter_counts(config)), flush=True)
        return
    if not f["workdir"].value and mode != "import":
        raise app.UsageError(f"--workdir is required for --mode {mode}")
    workdir = os.path.abspath(f["workdir"].value or ".")
    from titok_var.training import trainer

    if mode == "train":
        result = trainer.train(config, workdir)
        if result.preempted:
            logging.warning("stopped for preemption at step %d; run again to resume", int(result.state.step))
        return
    if mode == "import":
        if not (f["converted"].value and f["export_dir"].value):
            raise app.UsageError("--mode import needs --converted FILE.npz and --export_dir")
        from titok_var.tools import export

        print(export.import_converted(config, f["converted"].value, f["export_dir"].value, dtype=f["import_dtype"].value),
              flush=True)
        return
    if mode == "export":
        if not f["export_dir"].value:
            raise app.UsageError("--export_dir is required for --mode export")
        from titok_var.tools import export

        print(export.export_checkpoint(config, workdir, f["export_dir"].value, f["step"].value), flush=True)
        return
    # Inference: the work dir's checkpoint, or --export_dir (only read; outputs go to the work dir).
    if f["export_dir"].value and os.path.abspath(f["export_dir"].value) == workdir:
        raise app.UsageError("--workdir receives the outputs: give one other than --export_dir")
    source = dict(export_dir=f["export_dir"].value, compute_dtype=f["compute_dtype"].value)
    if mode == "eval":
        from titok_var.training import inference

        metrics = inference.evaluate(config, workdir, step=f["step"].value, **source)
        print({k: round(v, 5) for k, v in metrics.items()}, flush=True)
        if config.eval.get("reference_stats"):
            from titok_var.tools import generative_eval

            generation = generative_eval.generative_eval_checkpoint(config, workdir, f["step"].value, **source)
            print({k: round(float(v), 5) for k, v in generation.items()}, flush=True)
    elif mode == "sample":
        from titok_var.tools import sample

        print(sample.sample_checkpoint(config, workdir, f["step"].value, **source), flush=True)
    elif mode == "probe":
        from titok_var.tools import linear_probe_run

        print(linear_probe_run.probe_checkpoint(config, workdir, f["step"].value, **source), flush=True)


if __name__ == "__main__":
    _FLAGS = define_flags()
    flags.mark_flag_as_required("config")
    app.run(lambda argv: main(argv, _FLAGS))
