"""Zero-shot editing masks for VAR (in-/outpainting, class-conditional editing).

Follows `demo_zero_shot_edit.ipynb` (FoundationVision/VAR). A keep mask lives on the finest token
grid (patch_nums[-1] squared): 1 = keep the ground-truth token of the image being edited, 0 = let
VAR generate it. At every scale the mask is bilinearly resized to (pn, pn) exactly as torch's
`F.interpolate(mode='bilinear', align_corners=False)` (no antialias) and thresholded at > 0.5;
scales with pn * pn <= 3 (the 1x1 scale) always keep the ground truth. The sampler still samples
every position, then overwrites the kept ones (`blend_known_tokens`) before f_hat is updated, so
later scales are conditioned on the known content.

Masks are small static inputs of the sampler, built on the host with NumPy. The bilinear resize
follows torch's float32 kernel: the source index scale * (d + 0.5) - 0.5 is rounded once, as the
fused multiply-add of torch's vectorised CPU kernel (and of nvcc's default contraction on GPUs)
rounds it; lambdas and the two-tap sums are float32 steps in torch's order, so values of exactly
0.5 (frequent: 16 -> 8 averages 2x2 blocks) stay below the threshold as in torch. The single
rounding matters at 16 -> 13: output index 6 gets weights 0.49999952 / 0.5000005, not 0.5 / 0.5,
which changes which tokens of the 13x13 scale are kept for some boxes, so exact rational
arithmetic is not the reference here.
"""

import functools
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np


def _finest(patch_nums: Sequence[int]) -> int:
    patch_nums = tuple(int(p) for p in patch_nums)
    if not patch_nums or min(patch_nums) < 1:
        raise ValueError(f"patch_nums must be a non-empty sequence of positive ints, got {patch_nums}")
    if max(patch_nums) != patch_nums[-1]:
        raise ValueError(f"the last of patch_nums must be the largest (the finest grid), got {patch_nums}")
    return patch_nums[-1]


# ---------------------------------------------------------------------------------------------
# torch-exact bilinear resize (align_corners=False, antialias=False)


@functools.cache
def _bilinear_taps(out_size: int, in_size: int):
    """Per output index: (first source index, second source index, weight0, weight1), float32.

    torch: scale = in / out; src = max(scale (d + 0.5) - 0.5, 0); i0 = min(floor(src), in - 1);
    i1 = i0 + 1 unless i0 is the last index; lambda = clip(src - i0, 0, 1); weights (1 - lambda,
    lambda). scale and the rest are float32 steps; src is rounded to float32 once, as a fused
    multiply-add does: the float64 product of two float32 numbers is exact, and so is
    subtracting 0.5 at these magnitudes.
    """
    if out_size < 1 or in_size < 1:
        raise ValueError(f"resize sizes must be positive, got out={out_size}, in={in_size}")
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    dst = np.arange(out_size, dtype=f32)
    fused = np.float64(scale) * (dst + f32(0.5)).astype(np.float64) - 0.5
    source = np.maximum(fused.astype(f32), f32(0.0))
    first = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    second = first + (first < in_size - 1)
    lam = np.clip(source - first.astype(f32), f32(0.0), f32(1.0))
    taps = (first, second, f32(1.0) - lam, lam)
    for array in taps:
        array.flags.writeable = False
    return taps


@functools.cache
def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out, in) float32 matrix of torch's bilinear resize along one axis (align_corners=False)."""
    first, second, w0, w1 = _bilinear_taps(out_size, in_size)
    matrix = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, first), w0)
    np.add.at(matrix, (rows, second), w1)
    matrix.flags.writeable = False
    return matrix


def _resize_axis(x, out_size: int, axis: int):
    first, second, w0, w1 = _bilinear_taps(out_size, x.shape[axis])
    shape = [1] * x.ndim
    shape[axis] = out_size
    return np.take(x, first, axis=axis) * w0.reshape(shape) + np.take(x, second, axis=axis) * w1.reshape(shape)


def bilinear_resize(x, out_hw: tuple[int, int]) -> np.ndarray:
    """torch `F.interpolate(x, out_hw, mode='bilinear', align_corners=False)` on (..., H, W), float32.

    Equal to bilinear_matrix(out_h, H) @ x @ bilinear_matrix(out_w, W).T, evaluated in torch's
    order (width taps first, then height) with float32 rounding.
    """
    x = np.asarray(x, np.float32)
    if x.ndim < 2:
        raise ValueError(f"bilinear_resize needs an (..., H, W) array, got shape {x.shape}")
    out_h, out_w = (int(s) for s in out_hw)
    return _resize_axis(_resize_axis(x, out_w, x.ndim - 1), out_h, x.ndim - 2)


# ---------------------------------------------------------------------------------------------
# keep masks


def box_keep_mask(patch_nums: Sequence[int], box: tuple[float, float, float, float], inpainting: bool) -> np.ndarray:
    """(finest, finest) bool keep mask of a box (y0, x0, y1, x1) given as fractions in [0, 1].

    The box covers rows round(y0 n):round(y1 n) and columns round(x0 n):round(x1 n) of the finest
    grid (n = patch_nums[-1], Python's round, as the official `get_edit_mask`). Outpainting keeps
    the box and generates the rest; inpainting (inverted) generates the box and keeps the rest.
    """
    n = _finest(patch_nums)
    if len(box) != 4:
        raise ValueError(f"box must be (y0, x0, y1, x1), got {box!r}")
    y0, x0, y1, x1 = (float(v) for v in box)
    if not all(0.0 <= v <= 1.0 for v in (y0, x0, y1, x1)):
        raise ValueError(f"box coordinates must be fractions in [0, 1], got {box!r}")
    if y0 > y1 or x0 > x1:
        raise ValueError(f"box must satisfy y0 <= y1 and x0 <= x1, got {box!r}")
    inside = np.zeros((n, n), bool)
    inside[round(y0 * n):round(y1 * n), round(x0 * n):round(x1 * n)] = True
    return ~inside if inpainting else inside


def mask_from_image(mask_array, finest: int, invert: bool = False) -> np.ndarray:
    """(finest, finest) bool keep mask from a user mask image (H, W) or (H, W, 1) of 0/1 or 0/255.

    Non-zero pixels mean "keep" (pass invert=True for files where white marks the region to
    generate). H = W must be a multiple of `finest` (the image resolution or the token grid); a
    token is kept when more than half of the pixels it covers are kept. The official demo builds
    its masks on the token grid directly, so this pixel-to-token reduction is ours.
    """
    mask = np.asarray(mask_array)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(
            f"edit mask must be a single-channel (H, W) image, got shape {mask.shape} "
            "(convert colour masks to grayscale first)"
        )
    height, width = mask.shape
    if height != width or height == 0 or height % finest:
        raise ValueError(
            f"edit mask must be square with a side that is a multiple of the finest token grid "
            f"{finest} (e.g. {finest} or {16 * finest}), got {height}x{width}"
        )
    values = np.unique(mask)
    if np.issubdtype(mask.dtype, np.bool_):
        keep = mask
    elif set(values.tolist()) <= {0, 1}:
        keep = mask == 1
    elif set(values.tolist()) <= {0, 255}:
        keep = mask == 255
    else:
        shown = values[:8].tolist()
        more = " ..." if values.size > 8 else ""
        raise ValueError(f"edit mask values must be 0/1 or 0/255, got values {shown}{more}")
    if invert:
        keep = ~keep
    factor = height // finest
    kept_fraction = keep.reshape(finest, factor, finest, factor).mean(axis=(1, 3))
    return kept_fraction > 0.5


def per_scale_keep_masks(finest_mask, patch_nums: Sequence[int]) -> tuple[np.ndarray, ...]:
    """One bool keep mask (..., pn, pn) per scale from a (..., n, n) finest-grid mask.

    bilinear_resize(mask, (pn, pn)) > 0.5, with every pn * pn <= 3 scale forced to all-keep.
    `finest_mask` may be bool or float in [0, 1] and may carry leading (batch) axes.
    """
    n = _finest(patch_nums)
    mask = np.asarray(finest_mask)
    if mask.ndim < 2 or mask.shape[-2:] != (n, n):
        raise ValueError(
            f"finest keep mask must have shape (..., {n}, {n}) for patch_nums {tuple(patch_nums)}, got {mask.shape}"
        )
    mask = mask.astype(np.float32)
    if np.any((mask < 0) | (mask > 1)) or not np.all(np.isfinite(mask)):
        raise ValueError("finest keep mask values must lie in [0, 1]")
    masks = []
    for pn in patch_nums:
        pn = int(pn)
        if pn * pn <= 3:
            masks.append(np.ones(mask.shape[:-2] + (pn, pn), bool))
        else:
            masks.append(bilinear_resize(mask, (pn, pn)) > 0.5)
    return tuple(masks)


def blend_known_tokens(sampled_h, known_h, keep_mask):
    """Ground-truth codes where keep_mask is set, sampled codes elsewhere.

    sampled_h, known_h: (B, pn, pn, C) maps or (B, pn * pn, C) row-major sequences of one scale;
    keep_mask: (pn, pn) or (B, pn, pn) from `per_scale_keep_masks`. Works under jit.
    """
    sampled_h = jnp.asarray(sampled_h)
    known_h = jnp.asarray(known_h)
    keep = jnp.asarray(keep_mask).astype(bool)
    if sampled_h.shape != known_h.shape:
        raise ValueError(
            f"sampled and known codes must have the same shape, got {sampled_h.shape} and {known_h.shape}"
        )
    if keep.ndim not in (2, 3):
        raise ValueError(f"keep mask must be (pn, pn) or (batch, pn, pn), got shape {keep.shape}")
    spatial = keep.shape[-2:]
    if sampled_h.ndim == 3:
        keep = keep.reshape(keep.shape[:-2] + (spatial[0] * spatial[1],))
        expected = (spatial[0] * spatial[1],)
    else:
        expected = spatial
    if sampled_h.ndim not in (3, 4) or sampled_h.shape[1:-1] != expected:
        raise ValueError(
            f"codes must be (batch, {spatial[0]}, {spatial[1]}, C) or (batch, {spatial[0] * spatial[1]}, C) "
            f"to match a keep mask of shape {tuple(jnp.shape(keep_mask))}, got {sampled_h.shape}"
        )
    if keep.ndim == sampled_h.ndim - 1 and keep.shape[0] != sampled_h.shape[0]:
        raise ValueError(f"keep mask batch {keep.shape[0]} does not match the codes' batch {sampled_h.shape[0]}")
    return jnp.where(keep[..., None], known_h, sampled_h)
