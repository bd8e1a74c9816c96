"""VAR zero-shot editing of one image: in-painting, out-painting, class-conditional editing.

Paper App. B and the official `demo_zero_shot_edit.ipynb`: the image is centre-cropped to the
frozen VQVAE's size and tokenized at every scale; a keep mask on the finest token grid (a box or a
mask image) is resized per scale (`edit_masks.per_scale_keep_masks`); VAR then samples scale by
scale as usual, but kept positions take the image's tokens before f_hat is updated, so the
generated region is conditioned on the kept content. `class_label` None samples with the null
class (pure in-/out-painting); a class steers the generated region towards it.

  python -m titok_var.tools.var_edit --config configs/var_tiny.py --workdir runs/var_quickstart/var
      --image photo.png (--box 0.25,0.25,0.75,0.75 | --mask mask.png) [--outpaint] [--class_label 3]

Writes <workdir>/edits/<image stem>_<mode>/{input.png, mask.png, edits.png, edits.npz}; mode is
"inpaint" or "outpaint", with "_class<N>" appended for class-conditional edits.
"""

import dataclasses
import functools
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from titok_var.data.sources import decode_image_bytes
from titok_var.data.transforms import eval_transform
from titok_var.evaluation import image_grid
from titok_var.generation.edit_masks import box_keep_mask, mask_from_image, per_scale_keep_masks
from titok_var.generation.var_sampling import VarSamplingSettings, sample_scales
from titok_var.tasks.var_generator import VarGeneratorTask
from titok_var.tasks.var_tokenizer import split_token_maps
from titok_var.training import evaluation, trainer

# Pixels the VAR generates are shown as this grey in the "masked input" tile.
MASKED_GREY = 0.5


# ---------------------------------------------------------------------------------------------
# inputs


def read_image_file(path, what: str) -> np.ndarray:
    """uint8 (H, W, 3) RGB pixels of an image file; clear errors for a missing or corrupt file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist or is not a file")
    return decode_image_bytes(path.read_bytes(), what=f"{what} {str(path)!r}")


def load_edit_image(image_path, image_size: int) -> np.ndarray:
    """The image to edit as float32 (S, S, 3) in [0, 1]: shorter side resized to S, centre crop."""
    return eval_transform(read_image_file(image_path, "image to edit"), image_size)


def load_mask_file(mask_path, finest: int, inpaint: bool) -> np.ndarray:
    """(finest, finest) bool keep mask from a black-and-white mask image.

    White marks the region, as the box does: in-painting generates it, out-painting keeps it. The
    mask is in the coordinates of the centre-cropped image: its side is the image size or any
    multiple of the finest token grid (see `edit_masks.mask_from_image`).
    """
    pixels = read_image_file(mask_path, "edit mask")
    if not (np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])):
        raise ValueError(f"edit mask {str(mask_path)!r} must be black and white (grayscale), not colour")
    return mask_from_image(pixels[..., 0], finest, invert=inpaint)


def edit_keep_mask(patch_nums, *, box=None, mask_path=None, inpaint: bool = True) -> np.ndarray:
    """(finest, finest) bool keep mask (True = keep the image's token) from a box or a mask file.

    box (y0, x0, y1, x1) holds fractions in [0, 1] of the image; in-painting generates inside it,
    out-painting (inpaint=False) keeps it and generates the rest.
    """
    if (box is None) == (mask_path is None):
        raise ValueError("give exactly one of box=(y0, x0, y1, x1) and mask_path")
    patch_nums = tuple(int(p) for p in patch_nums)
    if box is not None:
        return box_keep_mask(patch_nums, tuple(box), inpainting=inpaint)
    return load_mask_file(mask_path, patch_nums[-1], inpaint)


def edit_labels(class_label: int | None, num_classes: int, num_samples: int) -> np.ndarray:
    """(num_samples,) int32 labels: the class, or the null class (num_classes) for None."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    if class_label is None:
        class_label = num_classes
    elif not 0 <= int(class_label) < num_classes:
        raise ValueError(f"class_label must be in [0, {num_classes}) (or None for the null class), got {class_label}")
    return np.full((num_samples,), int(class_label), np.int32)


def override_settings(settings: VarSamplingSettings, *, cfg=None, top_k=None, top_p=None,
                      more_smooth=None) -> VarSamplingSettings:
    """The config's sampling settings with the given (non-None) values replaced."""
    changes = {"cfg": None if cfg is None else float(cfg), "top_k": None if top_k is None else int(top_k),
               "top_p": None if top_p is None else float(top_p),
               "more_smooth": None if more_smooth is None else bool(more_smooth)}
    return dataclasses.replace(settings, **{k: v for k, v in changes.items() if v is not None})


# ---------------------------------------------------------------------------------------------
# sampling


@functools.partial(jax.jit, static_argnames=("task", "settings"))
def _sample_edits(task, settings, params, known_maps, scale_masks, labels, key):
    # Masks are traced (not static): one compiled program serves every mask and seed.
    batch = labels.shape[0]
    known = [jnp.broadcast_to(m, (batch,) + m.shape) for m in known_maps]
    return sample_scales(task.model, params, task.quantizer_ops(), labels, key, settings,
                         known_tokens=known, keep_masks=scale_masks)


def edit_tokens(task: VarGeneratorTask, params, image_tokens, keep_mask, labels, key,
                settings: VarSamplingSettings | None = None):
    """Samples edits of one tokenized image -> (tokens (B, L) int32, f_hat (B, h, w, C)).

    image_tokens: (L,) ids of the image (all scales, coarse to fine); keep_mask: (n, n) bool on
    the finest grid; labels: (B,) classes (num_classes = null). Kept positions of the returned
    tokens equal the image's at every scale; decode f_hat with `task.decode_samples`.
    """
    image_tokens = np.asarray(image_tokens)
    if image_tokens.ndim == 2 and image_tokens.shape[0] == 1:
        image_tokens = image_tokens[0]
    if image_tokens.shape != (task.model.num_tokens,):
        raise ValueError(f"image_tokens must be ({task.model.num_tokens},) ids for patch_nums {task.patch_nums}, "
                         f"got shape {image_tokens.shape}")
    scale_masks = per_scale_keep_masks(keep_mask, task.patch_nums)
    known_maps = split_token_maps(image_tokens[None].astype(np.int32), task.patch_nums)
    settings = task.settings if settings is None else settings
    return _sample_edits(task, settings, params, [m[0] for m in known_maps], scale_masks,
                         jnp.asarray(labels, jnp.int32), key)


# ---------------------------------------------------------------------------------------------
# outputs


def upsample_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """(n, n) token mask -> (size, size) pixel mask (each token covers a size/n square)."""
    factor = size // mask.shape[0]
    return np.repeat(np.repeat(mask, factor, axis=0), factor, axis=1)


def edit_mode(inpaint: bool, class_label: int | None) -> str:
    mode = "inpaint" if inpaint else "outpaint"
    return mode if class_label is None else f"{mode}_class{int(class_label)}"


def write_edit_outputs(out_dir: str, image: np.ndarray, keep_mask: np.ndarray, edits: np.ndarray, *,
                       tokens, image_tokens, labels) -> None:
    """input.png, mask.png (white = generated), edits.png (input, masked input, edits) and
    edits.npz (uint8 images and the token ids), each written atomically."""
    size = image.shape[0]
    keep_pixels = upsample_mask(np.asarray(keep_mask, bool), size)
    masked = np.where(keep_pixels[..., None], image, np.float32(MASKED_GREY))
    os.makedirs(out_dir, exist_ok=True)
    image_grid.save_png(os.path.join(out_dir, "input.png"), image_grid.to_uint8(image))
    image_grid.save_png(os.path.join(out_dir, "mask.png"), np.where(keep_pixels, 0, 255).astype(np.uint8))
    tiles = np.concatenate([image[None], masked[None], edits]).astype(np.float32)
    image_grid.save_png(os.path.join(out_dir, "edits.png"), image_grid.make_grid([tiles]))
    npz_path = os.path.join(out_dir, "edits.npz")
    tmp = npz_path + ".tmp.npz"
    np.savez(tmp, edits=image_grid.to_uint8(edits), input=image_grid.to_uint8(image),
             keep_mask=np.asarray(keep_mask, bool), tokens=np.asarray(tokens, np.int32),
             input_tokens=np.asarray(image_tokens, np.int32), labels=np.asarray(labels, np.int32))
    os.replace(tmp, npz_path)


# ---------------------------------------------------------------------------------------------
# the command


def edit_image(config, workdir: str, image_path, *, box=None, mask_path=None, inpaint: bool = True,
               class_label: int | None = None, num_samples: int = 4, seed: int = 0, step: int | None = None,
               cfg=None, top_k=None, top_p=None, more_smooth=None, devices=None) -> str:
    """Edits an image with a VAR checkpoint of `workdir`; returns the folder of the outputs.

    cfg, top_k, top_p, more_smooth default to `config.sampling`; devices to all of them."""
    if config.model_name != "var":
        raise ValueError(f"zero-shot editing needs a VAR generator config (model_name 'var'), got {config.model_name!r}")
    # Every input is checked before the models load.
    pixels = read_image_file(image_path, "image to edit")
    keep_mask = edit_keep_mask(config.model.patch_nums, box=box, mask_path=mask_path, inpaint=inpaint)
    labels = edit_labels(class_label, int(config.model.num_classes), num_samples)

    exp = trainer.build_experiment(config, workdir, devices)
    task = exp.task
    settings = override_settings(task.settings, cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth)
    vq_task, vq_params, _ = task._vqvae
    image = eval_transform(pixels, vq_task.model.image_size)
    image_tokens = np.asarray(jax.jit(vq_task.encode_tokens)(vq_params, image[None]))[0]

    checkpointer = trainer.open_checkpointer(config, workdir)
    try:
        step = checkpointer.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no VAR checkpoint to edit with in {checkpointer.directory}")
        with exp.context():
            state = trainer.restore_or_create(exp, checkpointer, step)
            params = evaluation.eval_params(state, config)
            tokens, f_hat = edit_tokens(task, params, image_tokens, keep_mask, labels, jax.random.key(seed), settings)
    finally:
        checkpointer.close()
    edits = task.decode_samples(f_hat)

    out_dir = os.path.join(workdir, "edits", f"{pathlib.Path(image_path).stem}_{edit_mode(inpaint, class_label)}")
    if jax.process_index() == 0:
        write_edit_outputs(out_dir, image, keep_mask, edits, tokens=jax.device_get(tokens),
                           image_tokens=image_tokens, labels=labels)
        logging.info("wrote %d edits of %s (step %d) to %s", num_samples, image_path, step, out_dir)
    return out_dir


def parse_box(text: str) -> tuple[float, float, float, float]:
    """"y0,x0,y1,x1" -> four floats (range checks happen in `box_keep_mask`)."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ValueError(f"--box must be four comma-separated fractions y0,x0,y1,x1, got {text!r}")
    return values


def define_flags() -> dict:
    """The command-line flags; defined on demand so importing this module (e.g. next to
    pretokenize, which also owns --config) registers nothing."""
    return dict(
        config=config_flags.DEFINE_config_file("config", None, "VAR generator config."),
        workdir=flags.DEFINE_string("workdir", None, "Work dir holding the VAR checkpoints."),
        image=flags.DEFINE_string("image", None, "Image to edit."),
        box=flags.DEFINE_string("box", None, "Region y0,x0,y1,x1 as fractions of the centre-cropped image."),
        mask=flags.DEFINE_string("mask", None, "Black-and-white mask image; white marks the region."),
        outpaint=flags.DEFINE_bool("outpaint", False, "Keep the region and generate the rest."),
        class_label=flags.DEFINE_integer("class_label", None, "Class to steer the edit to (default: null class)."),
        num_samples=flags.DEFINE_integer("num_samples", 4, "Edits to sample."),
        seed=flags.DEFINE_integer("seed", 0, "Sampling seed."),
        step=flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest)."),
        cfg=flags.DEFINE_float("cfg", None, "Guidance scale (default: config.sampling.cfg)."),
        top_k=flags.DEFINE_integer("top_k", None, "Top-k (default: config.sampling.top_k)."),
        top_p=flags.DEFINE_float("top_p", None, "Top-p (default: config.sampling.top_p)."),
        more_smooth=flags.DEFINE_bool("more_smooth", None, "Gumbel smoothing (default: config.sampling.more_smooth)."),
    )


def run_from_flags(values: dict) -> str:
    """Runs `edit_image` with the parsed flag holders of `define_flags`."""
    v = {name: holder.value for name, holder in values.items()}
    if (v["box"] is None) == (v["mask"] is None):
        raise app.UsageError("give exactly one of --box and --mask")
    return edit_image(
        v["config"], v["workdir"], v["image"], box=None if v["box"] is None else parse_box(v["box"]),
        mask_path=v["mask"], inpaint=not v["outpaint"], class_label=v["class_label"],
        num_samples=v["num_samples"], seed=v["seed"], step=v["step"], cfg=v["cfg"], top_k=v["top_k"],
        top_p=v["top_p"], more_smooth=v["more_smooth"])


if __name__ == "__main__":
    _FLAGS = define_flags()
    flags.mark_flags_as_required(["config", "workdir", "image"])
    app.run(lambda argv: print(run_from_flags(_FLAGS)))
