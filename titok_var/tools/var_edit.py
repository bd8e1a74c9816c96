"""VAR zero-shot editing of one image: in-painting, out-painting, class-conditional editing.

Paper App. B and the official `demo_zero_shot_edit.ipynb`: the image is centre-cropped to the
frozen VQVAE's size and tokenized at every scale; a keep mask on the finest token grid (a box or a
mask image) is resized per scale (`edit_masks.per_scale_keep_masks`); VAR then samples scale by
scale as usual, but kept positions take the image's tokens before f_hat is updated, so the
generated region is conditioned on the kept content. `class_label` None samples with the null
class (pure in-/out-painting); a class steers the generated region towards it.

  python -m titok_var.tools.var_edit --config configs/var_tiny.py --workdir runs/var_quickstart/var
      --image photo.png (--box 0.25,0.25,0.75,0.75 | --mask mask.png) [--outpaint] [--class_label 3]

  python -m titok_var.tools.var_edit --config configs/var_d16.py --config.tokenizer.export_dir=exports/var_vqvae
      --export_dir exports/var_d16 --workdir runs/edits --image photo.png --box 0,0,0.5,1

Writes a new <workdir>/edits/<image stem>_<mode>_<NNN>/ (or --output_dir) with input.png, mask.png,
edits.png, edits.npz and settings.json; mode is "inpaint" or "outpaint", with "_class<N>" appended
for class-conditional edits. An export is only read.
"""

import dataclasses
import functools
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from titok_var import logs
from titok_var.data.sources import decode_image_bytes
from titok_var.data.transforms import eval_transform, resize_from_config
from titok_var.evaluation import image_grid
from titok_var.generation.edit_masks import box_keep_mask, mask_from_image, per_scale_keep_masks
from titok_var.generation.var_sampling import VarSamplingSettings, sample_scales
from titok_var.tasks.var import VarTask
from titok_var.tasks.var_vqvae import split_token_maps
from titok_var.training import inference

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


def load_mask_file(mask_path, finest: int, inpaint: bool, image_size: int | None = None) -> np.ndarray:
    """(finest, finest) bool keep mask from a black-and-white mask image.

    White marks the region, as the box does: in-painting generates it, out-painting keeps it. The
    mask is in the coordinates of the centre-cropped image: its side is the image size or any
    multiple of the finest token grid (see `edit_masks.mask_from_image`).
    """
    pixels = read_image_file(mask_path, "edit mask")
    allowed = sorted({finest} | ({image_size} if image_size else set()))
    if pixels.shape[0] != pixels.shape[1] or pixels.shape[0] not in allowed:
        raise ValueError(
            f"edit mask {str(mask_path)!r} is {pixels.shape[0]}x{pixels.shape[1]}; it must match the centre-cropped "
            f"image ({image_size}x{image_size}) or the finest token grid ({finest}x{finest})")
    if not (np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2])):
        raise ValueError(f"edit mask {str(mask_path)!r} must be black and white (grayscale), not colour")
    return mask_from_image(pixels[..., 0], finest, invert=inpaint)


def edit_keep_mask(patch_nums, *, box=None, mask_path=None, inpaint: bool = True,
                   image_size: int | None = None) -> np.ndarray:
    """(finest, finest) bool keep mask (True = keep the image's token) from a box or a mask file.

    box (y0, x0, y1, x1) holds fractions in [0, 1] of the image; in-painting generates inside it,
    out-painting (inpaint=False) keeps it and generates the rest.
    """
    if (box is None) == (mask_path is None):
        raise ValueError("give exactly one of box=(y0, x0, y1, x1) and mask_path")
    patch_nums = tuple(int(p) for p in patch_nums)
    if box is not None:
        keep = box_keep_mask(patch_nums, tuple(box), inpainting=inpaint)
        what = f"box {tuple(box)}"
    else:
        keep = load_mask_file(mask_path, patch_nums[-1], inpaint, image_size)
        what = f"mask {str(mask_path)!r}"
    n = patch_nums[-1]
    if keep.all():
        raise ValueError(f"the {what} leaves no token of the {n}x{n} grid to generate "
                         f"({'it covers no token' if inpaint else 'it covers the whole image'}); nothing would change")
    if not keep.any():
        raise ValueError(f"the {what} keeps no token of the {n}x{n} grid "
                         f"({'it covers the whole image' if inpaint else 'it covers no token'}); that is plain sampling")
    return keep


def edit_labels(class_label: int | None, num_classes: int, num_samples: int) -> np.ndarray:
    """(num_samples,) int32 labels: the class, or the null class (num_classes) for None."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    if class_label is None:
        class_label = num_classes  # the null class, as the official demo's label num_classes
    elif not 0 <= int(class_label) <= num_classes:
        raise ValueError(f"class_label must be a class in [0, {num_classes}), or {num_classes} (or omitted) for "
                         f"plain in-/out-painting with the null class; got {class_label}")
    return np.full((num_samples,), int(class_label), np.int32)


def override_settings(settings: VarSamplingSettings, *, cfg=None, top_k=None, top_p=None,
                      more_smooth=None, vocab_size: int | None = None) -> VarSamplingSettings:
    """The config's sampling settings with the given (non-None) values replaced, range-checked."""
    changes = {"cfg": None if cfg is None else float(cfg), "top_k": None if top_k is None else int(top_k),
               "top_p": None if top_p is None else float(top_p),
               "more_smooth": None if more_smooth is None else bool(more_smooth)}
    settings = dataclasses.replace(settings, **{k: v for k, v in changes.items() if v is not None})
    if settings.cfg < 0:
        raise ValueError(f"cfg must be >= 0, got {settings.cfg}")
    if settings.top_k < 0 or (vocab_size is not None and settings.top_k > vocab_size):
        raise ValueError(f"top_k must be in [0, {vocab_size}] (0 = off; the codebook has {vocab_size} codes), "
                         f"got {settings.top_k}")
    if not 0.0 <= settings.top_p <= 1.0:
        raise ValueError(f"top_p must be in [0, 1] (0 or 1 = off), got {settings.top_p}")
    return settings


# ---------------------------------------------------------------------------------------------
# sampling


@functools.partial(jax.jit, static_argnames=("task", "settings"))
def _sample_edits(task, settings, params, known_maps, scale_masks, labels, key):
    # Masks are traced (not static): one compiled program serves every mask and seed.
    batch = labels.shape[0]
    known = [jnp.broadcast_to(m, (batch,) + m.shape) for m in known_maps]
    return sample_scales(task.model, params, task.quantizer_ops(), labels, key, settings,
                         known_tokens=known, keep_masks=scale_masks)


def edit_tokens(task: VarTask, params, image_tokens, keep_mask, labels, key,
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


def edit_mode(inpaint: bool, class_label: int | None, num_classes: int | None = None) -> str:
    mode = "inpaint" if inpaint else "outpaint"
    null = class_label is None or (num_classes is not None and int(class_label) == num_classes)
    return mode if null else f"{mode}_class{int(class_label)}"


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


def edit_output_dir(workdir: str, image_path, mode: str) -> str:
    """Creates and returns <workdir>/edits/<image stem>_<mode>_<NNN>: a new folder per run (claimed
    with mkdir, so two runs at once never share one), so no edit replaces another."""
    base = os.path.join(workdir, "edits", f"{pathlib.Path(image_path).stem}_{mode}")
    os.makedirs(os.path.dirname(base), exist_ok=True)
    run = 1
    while True:
        try:
            os.mkdir(f"{base}_{run:03d}")
            return f"{base}_{run:03d}"
        except FileExistsError:
            run += 1


def edit_image(config, workdir: str, image_path, *, box=None, mask_path=None, inpaint: bool = True,
               class_label: int | None = None, num_samples: int = 4, seed: int = 0, step: int | None = None,
               cfg=None, top_k=None, top_p=None, more_smooth=None, devices=None, export_dir: str | None = None,
               output_dir: str | None = None, compute_dtype: str | None = None) -> str:
    """Edits an image with the VAR of `workdir`'s checkpoint, or of `export_dir` (released weights
    imported, or a trained export: only read); returns the folder of the outputs, by default a new
    <workdir>/edits/<image stem>_<mode>_<NNN> (settings.json records what made it).

    cfg, top_k, top_p, more_smooth default to `config.sampling`; devices to all of them."""
    if config.model_name != "var":
        raise ValueError(f"zero-shot editing needs a VAR generator config (model_name 'var'), got {config.model_name!r}")
    # Every input is checked before the models load.
    pixels = read_image_file(image_path, "image to edit")
    labels = edit_labels(class_label, int(config.model.num_classes), num_samples)
    settings = override_settings(VarSamplingSettings(**dict(config.sampling)), cfg=cfg, top_k=top_k, top_p=top_p,
                                 more_smooth=more_smooth, vocab_size=int(config.model.vocab_size))
    if output_dir and os.path.exists(os.path.join(output_dir, "edits.npz")):
        raise FileExistsError(f"{output_dir} already holds edits; choose another --output_dir")
    vqvae_config = inference.read_export_json(config.tokenizer.export_dir, inference.EXPORT_CONFIG_FILE)
    image_size = int(vqvae_config["data"]["image_size"])  # masks are drawn on the centre crop it encodes (= the model's)
    keep_mask = edit_keep_mask(config.model.patch_nums, box=box, mask_path=mask_path, inpaint=inpaint,
                               image_size=image_size)

    loaded = inference.load_inference_params(config, workdir, step=step, export_dir=export_dir,
                                             purpose="edit with", devices=devices, compute_dtype=compute_dtype)
    exp, task = loaded.exp, loaded.exp.task
    vq_task, vq_params, _ = task._vqvae
    # Resized and cropped as the VQVAE saw its images (VAR's: 1.125x LANCZOS, centre crop).
    image = eval_transform(pixels, vq_task.model.image_size, resize_from_config(vqvae_config["data"]))
    image_tokens = np.asarray(jax.jit(vq_task.encode_tokens)(vq_params, image[None]))[0]
    with exp.context():
        tokens, f_hat = edit_tokens(task, loaded.params, image_tokens, keep_mask, labels, jax.random.key(seed),
                                    settings)
    edits = task.decode_samples(f_hat)

    out_dir = output_dir or ""
    if jax.process_index() == 0:
        out_dir = output_dir or edit_output_dir(workdir, image_path,
                                                edit_mode(inpaint, class_label, int(config.model.num_classes)))
        write_edit_outputs(out_dir, image, keep_mask, edits, tokens=jax.device_get(tokens),
                           image_tokens=image_tokens, labels=labels)
        record = {"image": os.path.abspath(image_path), "box": list(box) if box is not None else None,
                  "mask": os.path.abspath(mask_path) if mask_path else None, "inpaint": inpaint,
                  "class_label": class_label, "num_samples": num_samples, "seed": seed,
                  "sampling": dataclasses.asdict(settings), "weights": loaded.source}
        with open(os.path.join(out_dir, "settings.json.tmp"), "w") as f:
            json.dump(record, f, indent=2)
        os.replace(os.path.join(out_dir, "settings.json.tmp"), os.path.join(out_dir, "settings.json"))
        logging.info("wrote %d edits of %s (%s) to %s", num_samples, image_path, loaded.source, out_dir)
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


def define_flags(flag_values=flags.FLAGS) -> dict:
    """The command-line flags; defined on demand so importing this module (e.g. next to
    pretokenize, which also owns --config) registers nothing."""
    fv = dict(flag_values=flag_values)
    return dict(
        config=config_flags.DEFINE_config_file("config", None, "VAR generator config.", **fv),
        workdir=flags.DEFINE_string("workdir", None, "Work dir: its checkpoints (unless --export_dir) and the outputs.", **fv),
        export_dir=flags.DEFINE_string("export_dir", None, "Edit with this export (e.g. imported released VAR weights).", **fv),
        output_dir=flags.DEFINE_string("output_dir", None, "Output folder (default: a new <workdir>/edits/<image>_<mode>_NNN).", **fv),
        image=flags.DEFINE_string("image", None, "Image to edit.", **fv),
        box=flags.DEFINE_string("box", None, "Region y0,x0,y1,x1 as fractions of the centre-cropped image.", **fv),
        mask=flags.DEFINE_string("mask", None, "Black-and-white mask image; white marks the region.", **fv),
        outpaint=flags.DEFINE_bool("outpaint", False, "Keep the region and generate the rest.", **fv),
        class_label=flags.DEFINE_integer("class_label", None, "Class to steer the edit to (omit, or num_classes as in "
                                         "the official demo, for plain in-/out-painting).", **fv),
        num_samples=flags.DEFINE_integer("num_samples", 4, "Edits to sample.", **fv),
        seed=flags.DEFINE_integer("seed", 0, "Sampling seed.", **fv),
        step=flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", **fv),
        cfg=flags.DEFINE_float("cfg", None, "Guidance scale (default: config.sampling.cfg).", **fv),
        top_k=flags.DEFINE_integer("top_k", None, "Top-k (default: config.sampling.top_k).", **fv),
        top_p=flags.DEFINE_float("top_p", None, "Top-p (default: config.sampling.top_p).", **fv),
        more_smooth=flags.DEFINE_bool("more_smooth", None, "Gumbel smoothing (default: config.sampling.more_smooth).", **fv),
        compute_dtype=flags.DEFINE_enum("compute_dtype", None, ["float32", "bfloat16", "float16"],
                                        "Compute dtype (default: an export's model.dtype, float32 for imported "
                                        "weights; a checkpoint's config dtype).", **fv),
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
        top_p=v["top_p"], more_smooth=v["more_smooth"], export_dir=v["export_dir"], output_dir=v["output_dir"],
        compute_dtype=v["compute_dtype"])


if __name__ == "__main__":
    logs.configure()  # TITOK_VAR_VERBOSE_LOGS=1 shows the libraries' INFO lines
    _FLAGS = define_flags()
    flags.mark_flags_as_required(["config", "workdir", "image"])
    app.run(lambda argv: print(run_from_flags(_FLAGS)))
