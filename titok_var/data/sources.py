"""Random-access image source protocol, data errors and image decoding."""

import io
import struct
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image


class CorruptImageError(ValueError):
    """An image file or record exists but cannot be decoded."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is missing from the place it was expected."""


class UnknownDatasetError(ValueError):
    """A dataset name that no loader recognises."""


@runtime_checkable
class ImageSource(Protocol):
    """Indexable labelled image collection; `load` returns uint8 (H, W, 3) RGB and an int label."""

    num_classes: int

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[np.ndarray, int]: ...


# PIL reports undecodable input through many exception types depending on the codec.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


ALPHA_MODES = ("drop", "white")


def _to_rgb(image: Image.Image, alpha: str = "drop") -> Image.Image:
    """Converts any PIL mode to RGB. alpha="drop" is the official loaders' `convert("RGB")` (colours
    under transparent pixels kept as stored); "white" composites transparent images on white."""
    if alpha not in ALPHA_MODES:
        raise ValueError(f"unknown alpha handling {alpha!r}; expected one of {ALPHA_MODES}")
    if image.mode == "RGB":
        return image
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if alpha == "drop" or not has_alpha:
        return image.convert("RGB")
    # Colour values under transparent pixels are arbitrary, so show what a viewer would.
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def decode_image_bytes(data: bytes, what: str, alpha: str = "drop") -> np.ndarray:
    """Decodes encoded image bytes to uint8 (H, W, 3) RGB; `what` names the image in errors and
    `alpha` says what becomes of transparency (`_to_rgb`)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            # `open` only parses the header; `load` decodes and so detects truncation.
            image.load()
            rgb = _to_rgb(image, alpha)
            array = np.asarray(rgb, dtype=np.uint8)
    except _DECODE_ERRORS as error:
        raise CorruptImageError(f"Cannot decode image {what}: {type(error).__name__}: {error}") from error
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] == 0 or array.shape[1] == 0:
        raise CorruptImageError(f"Decoded image {what} has unusable shape {array.shape}")
    return array
