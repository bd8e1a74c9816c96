"""Image grids for eyeballing reconstructions and samples, and atomic PNG writing."""

import os
import uuid
from typing import Sequence, Union

import numpy as np
from PIL import Image

PathLike = Union[str, os.PathLike]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] -> uint8, clipping out-of-range values and rounding; NaN -> 0."""
    # NaNs (a diverged model) would otherwise cast to arbitrary bytes.
    images = np.nan_to_num(np.asarray(images, dtype=np.float32), nan=0.0)
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def _check_rows(rows: Sequence[np.ndarray]) -> tuple:
    if len(rows) == 0:
        raise ValueError("make_grid needs at least one row")
    shape = rows[0].shape
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"rows must be (N, H, W, 3), got {shape}")
    for row in rows[1:]:
        if row.shape != shape:
            raise ValueError(f"all rows must share one shape: {shape} vs {row.shape}")
    return shape


def make_grid(rows: Sequence[np.ndarray], pad: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Tiles R rows of (N, H, W, 3) float [0, 1] images into one uint8 image.

    Output shape is (R * (H + pad) + pad, N * (W + pad) + pad, 3), with `pad` pixels of
    `pad_value` around and between tiles.
    """
    if pad < 0:
        raise ValueError(f"pad must be non-negative, got {pad}")
    rows = [np.asarray(row, dtype=np.float32) for row in rows]
    num_cols, height, width, channels = _check_rows(rows)
    canvas = np.full(
        (len(rows) * (height + pad) + pad, num_cols * (width + pad) + pad, channels),
        pad_value,
        dtype=np.float32,
    )
    for r, row in enumerate(rows):
        top = pad + r * (height + pad)
        for c, tile in enumerate(row):
            left = pad + c * (width + pad)
            canvas[top : top + height, left : left + width] = tile
    return to_uint8(canvas)


def reconstruction_grid(
    originals: np.ndarray, reconstructions: np.ndarray, max_images: int = 8
) -> np.ndarray:
    """Two-row uint8 grid: the first `max_images` originals on top, reconstructions below."""
    originals = np.asarray(originals)
    reconstructions = np.asarray(reconstructions)
    if originals.shape != reconstructions.shape:
        raise ValueError(f"shape mismatch: {originals.shape} vs {reconstructions.shape}")
    if max_images < 1:
        raise ValueError(f"max_images must be positive, got {max_images}")
    return make_grid([originals[:max_images], reconstructions[:max_images]])


def save_png(path: PathLike, image_uint8: np.ndarray) -> None:
    """Writes an (H, W, 3) or (H, W) uint8 image to `path` atomically, creating parent dirs."""
    image = np.asarray(image_uint8)
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {image.dtype}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (1, 3, 4)):
        raise ValueError(f"expected (H, W), (H, W, 1|3|4) pixels, got shape {image.shape}")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Same directory so os.replace is an atomic rename; a plain open() (not mkstemp) keeps
    # the usual umask-derived permissions on the final file.
    tmp_path = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp_path, "xb") as f:
            Image.fromarray(image).save(f, format="PNG")
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
