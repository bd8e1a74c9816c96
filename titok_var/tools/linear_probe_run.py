"""`main.py --mode probe`: linear probing of a tokenizer checkpoint's frozen TiTok encoder.

Features of the centre-cropped train and eval splits are extracted once (this process's share
of the images), the BatchNorm + linear head is trained with the MAE protocol
(`evaluation/linear_probe.py`, hyper-parameters from `config.probe`, defaults MAE's), and top-1 /
top-5 are written to <workdir>/probe/step_XXXXXXXXX/metrics.json.
"""

import json
import os

import jax
from absl import logging

from titok_var.data import builder, pipeline, transforms
from titok_var.evaluation import linear_probe
from titok_var.training import inference

PROBED_MODELS = ("titok", "titok_stage1", "titok_stage2")


def _features(feature_fn, config, split: str, limit: int | None):
    source = builder.build_source(config.data, split)
    batches = pipeline.eval_batches(source, image_size=config.data.image_size,
                                    global_batch_size=config.eval.global_batch_size,
                                    process_index=jax.process_index(), process_count=jax.process_count(),
                                    max_examples=limit, resize=transforms.resize_from_config(config.data))
    return linear_probe.extract_features(feature_fn, batches), source.num_classes


def probe_checkpoint(config, workdir: str, step: int | None = None, *, export_dir: str | None = None,
                     compute_dtype: str | None = None) -> dict:
    """Linear probing of the frozen encoder of a checkpoint or an export; metrics into `workdir`."""
    if config.model_name not in PROBED_MODELS:
        raise ValueError(f"linear probing needs a TiTok tokenizer config, got model_name {config.model_name!r}")
    probe_settings = config.get("probe", {})
    reduction = probe_settings.get("reduction", "flatten")
    train_limit = probe_settings.get("num_train_examples", None)
    probe_config = linear_probe.ProbeConfig.from_config(
        {k: v for k, v in dict(probe_settings).items() if k not in ("reduction", "num_train_examples")})
    loaded = inference.load_inference_params(config, workdir, step=step, export_dir=export_dir, purpose="probe",
                                             compute_dtype=compute_dtype)
    exp, step = loaded.exp, loaded.step
    params = jax.device_get(loaded.params)
    feature_fn = linear_probe.titok_feature_fn(exp.task.model, {"params": params}, reduction)
    (train_x, train_y), num_classes = _features(feature_fn, config, "train", train_limit)
    (eval_x, eval_y), _ = _features(feature_fn, config, "eval", config.eval.num_examples)
    logging.info("probe: %d train / %d eval features of size %d", len(train_x), len(eval_x), train_x.shape[1])
    variables, history = linear_probe.train_linear_probe(
        train_x, train_y, num_classes, probe_config, eval_features=eval_x, eval_labels=eval_y,
        log_fn=lambda epoch, entry: logging.info("probe epoch %d: %s", epoch, entry))
    metrics = linear_probe.evaluate_linear_probe(variables, eval_x, eval_y, probe_config.eval_batch_size)
    metrics = {f"probe_{k}": float(v) for k, v in metrics.items()}
    out_dir = os.path.join(workdir, "probe", f"step_{step:09d}")
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        tmp = os.path.join(out_dir, "metrics.json.tmp")
        with open(tmp, "w") as f:
            json.dump({"step": step, "reduction": reduction, **metrics, "history": history}, f, indent=2)
        os.replace(tmp, os.path.join(out_dir, "metrics.json"))
    return metrics
