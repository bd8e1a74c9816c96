"""`main.py --mode sample`: class-balanced samples of a generator checkpoint as PNG grid and .npz.

Samples a work dir's checkpoint or an export (`--export_dir`, e.g. imported released weights).
Writes <workdir>/samples/step_<step>/{grid.png, samples_p<process>.npz}; the .npz holds uint8
images `arr_0` (N, H, W, 3) (the ADM evaluation suite's layout) and `labels`. A fixed
`sample.seed` gives the same images on any number of devices.
"""

import json
import os

import jax
import numpy as np
from absl import logging

from titok_var.evaluation import image_grid
from titok_var import registry
from titok_var.training import inference


SOURCE_FILE = "source.json"  # which weights and settings made the samples beside it


def sample_record(config, source: str, compute_dtype: str | None) -> dict:
    """What made a folder of samples: generative eval reuses them only when this matches."""
    sections = {name: config[name].to_dict() if name in config else None for name in ("sampling", "sample")}
    return {"weights": source, **sections, "compute_dtype": compute_dtype}


def class_balanced_labels(num_classes: int, num_per_class: int) -> np.ndarray:
    """[0]*n + [1]*n + ...: classes in order, as the official benchmark sampling."""
    return np.repeat(np.arange(num_classes, dtype=np.int32), num_per_class)


UINT8_CONVERSIONS = ("truncate", "round")


def to_uint8(images: np.ndarray, conversion: str = "truncate") -> np.ndarray:
    """[0, 1] floats -> uint8. "truncate" is the official samplers' `(clamp(x, 0, 1) * 255).to(uint8)`
    (TiTok/MaskGIT and VAR alike), which the papers' numbers were measured on; "round" is the unbiased
    choice (half of all pixels one level higher)."""
    if conversion not in UINT8_CONVERSIONS:
        raise ValueError(f"unknown uint8 conversion {conversion!r} (config.sample.to_uint8); "
                         f"expected one of {UINT8_CONVERSIONS}")
    scaled = np.clip(images, 0.0, 1.0) * 255.0
    return (np.round(scaled) if conversion == "round" else scaled).astype(np.uint8)


def sample_checkpoint(config, workdir: str, step: int | None = None, devices=None, *,
                      export_dir: str | None = None, compute_dtype: str | None = None) -> str:
    """Samples the generator of `workdir`'s checkpoint, or of `export_dir`; writes into `workdir`."""
    if not hasattr(registry.TASKS.get(config.model_name), "sample"):
        raise ValueError(f"model {config.model_name!r} is not a generator; --mode sample needs one")
    loaded = inference.load_inference_params(config, workdir, step=step, export_dir=export_dir,
                                             purpose="sample from", devices=devices, compute_dtype=compute_dtype)
    exp, task, step, config = loaded.exp, loaded.exp.task, loaded.step, loaded.config
    settings = config.sample
    conversion = settings.get("to_uint8", "truncate")
    to_uint8(np.zeros((0,)), conversion)  # an unknown name fails before the model runs
    labels = class_balanced_labels(task.num_classes, settings.num_per_class)
    # Each process samples a contiguous slice; batches are keyed by their index, not the device count.
    mine = np.array_split(np.arange(len(labels)), jax.process_count())[jax.process_index()]
    with exp.context():
        params = loaded.params
        sample = jax.jit(task.sample)
        images = []
        batch = settings.global_batch_size
        for start in range(0, len(mine), batch):
            rows = mine[start:start + batch]
            key = jax.random.fold_in(jax.random.key(settings.seed), int(rows[0]))
            tokens = sample(params, labels[rows], key)
            images.append(to_uint8(task.decode_samples(np.asarray(tokens)), conversion))
            logging.info("sampled %d/%d images", start + len(rows), len(mine))
    images = np.concatenate(images)
    out_dir = os.path.join(workdir, "samples", f"step_{step:09d}")
    os.makedirs(out_dir, exist_ok=True)
    npz_path = os.path.join(out_dir, f"samples_p{jax.process_index():03d}.npz")
    tmp = npz_path + ".tmp.npz"
    np.savez(tmp, arr_0=images, labels=labels[mine])
    os.replace(tmp, npz_path)
    if jax.process_index() == 0:
        record = sample_record(config, loaded.source, compute_dtype)
        with open(os.path.join(out_dir, SOURCE_FILE + ".tmp"), "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)
        os.replace(os.path.join(out_dir, SOURCE_FILE + ".tmp"), os.path.join(out_dir, SOURCE_FILE))
    if jax.process_index() == 0:
        per_class = min(settings.grid_per_class, settings.num_per_class)
        rows = [images[labels[mine] == c][:per_class].astype(np.float32) / 255.0
                for c in range(task.num_classes)]
        rows = [row for row in rows if len(row) == per_class]  # classes split across processes are left out
        image_grid.save_png(os.path.join(out_dir, "grid.png"), image_grid.make_grid(rows))
    return out_dir
