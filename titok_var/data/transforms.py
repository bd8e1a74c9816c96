"""Image preprocessing on uint8 (H, W, 3) arrays; randomness only from a passed Generator.

Geometry follows torchvision, as the official loaders use it: `Resize(n)` scales the shorter side
to n and truncates the longer one (`int(n * long / short)`), `CenterCrop` rounds its offset
(`int(round((H - S) / 2))`, Python's half-to-even), `RandomCrop` draws the offset uniformly.
`Resize` chooses the shorter side n = round(ratio * S) and the PIL filter: TiTok and MaskGIT
resize to S with bicubic (ratio 1); VAR resizes to round(1.125 * S) with LANCZOS, then crops
(`utils/data.py::build_dataset` of FoundationVision/VAR).
"""

import dataclasses

import numpy as np
from PIL import Image

RESIZE_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
                  "bilinear": Image.Resampling.BILINEAR}


@dataclasses.dataclass(frozen=True)
class Resize:
    """How an image is scaled before its crop: shorter side round(ratio * crop size), PIL `filter`."""

    ratio: float = 1.0
    filter: str = "bicubic"

    def __post_init__(self):
        if not self.ratio >= 1.0:
            raise ValueError(f"resize ratio must be at least 1 (the crop must fit), got {self.ratio}")
        if self.filter not in RESIZE_FILTERS:
            raise ValueError(f"unknown resize filter {self.filter!r}; expected one of {sorted(RESIZE_FILTERS)}")

    def shorter_side(self, image_size: int) -> int:
        return round(self.ratio * image_size)


def resize_from_config(data_config) -> Resize:
    """The Resize of a data config (`data.resize_ratio`, `data.resize_filter`; TiTok's defaults)."""
    return Resize(data_config.get("resize_ratio", 1.0), data_config.get("resize_filter", "bicubic"))


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"Expected a uint8 (H, W, 3) image, got dtype {image.dtype} shape {image.shape}")


def _check_crop(image: np.ndarray, size: int) -> None:
    height, width = image.shape[:2]
    if height < size or width < size:
        raise ValueError(f"Cannot crop {size}x{size} from an image of size {height}x{width}")


def shorter_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after scaling so the shorter side equals `size`; the longer side truncated,
    as torchvision's Resize computes it."""
    if height <= width:
        return size, max(size, int(size * width / height))
    return max(size, int(size * height / width)), size


def resize_shorter_side(image: np.ndarray, size: int, filter: str = "bicubic") -> np.ndarray:
    """PIL resize with `filter` (antialiased when shrinking) so the shorter side is `size`."""
    _check_image(image)
    height, width = image.shape[:2]
    new_height, new_width = shorter_side_shape(height, width, size)
    if (new_height, new_width) == (height, width):
        return image
    resized = Image.fromarray(image).resize((new_width, new_height), resample=RESIZE_FILTERS[filter],
                                            reducing_gap=None)
    return np.asarray(resized)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Central size x size crop, offsets rounded as torchvision's CenterCrop does."""
    _check_crop(image, size)
    top = int(round((image.shape[0] - size) / 2.0))
    left = int(round((image.shape[1] - size) / 2.0))
    return image[top : top + size, left : left + size]


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Uniformly placed size x size crop."""
    _check_crop(image, size)
    top = int(rng.integers(0, image.shape[0] - size + 1))
    left = int(rng.integers(0, image.shape[1] - size + 1))
    return image[top : top + size, left : left + size]


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Horizontal flip with probability 1/2."""
    return image[:, ::-1] if rng.random() < 0.5 else image


# train_transform_with_flip's boolean keyword argument shadows this op's name inside it.
_random_crop = random_crop


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1], C-contiguous (crops and flips are strided views)."""
    out = np.empty(image.shape, dtype=np.float32)
    np.divide(image, np.float32(255.0), out=out, dtype=np.float32)
    return out


def train_transform(
    image: np.ndarray,
    image_size: int,
    rng: np.random.Generator,
    random_crop: bool = True,
    random_flip: bool = True,
    resize: Resize = Resize(),
) -> np.ndarray:
    """Shorter-side resize, random (or centre) crop, optional flip -> float32 (S, S, 3) in [0, 1]."""
    return train_transform_with_flip(image, image_size, rng, random_crop, random_flip, resize)[0]


def train_transform_with_flip(
    image: np.ndarray,
    image_size: int,
    rng: np.random.Generator,
    random_crop: bool = True,
    random_flip: bool = True,
    resize: Resize = Resize(),
) -> tuple[np.ndarray, bool]:
    """train_transform plus whether the image was mirrored (to pick pre-computed targets)."""
    resized = resize_shorter_side(image, resize.shorter_side(image_size), resize.filter)
    cropped = _random_crop(resized, image_size, rng) if random_crop else center_crop(resized, image_size)
    # Same single draw as random_flip(), so both functions give identical images for one rng.
    flipped = bool(random_flip and rng.random() < 0.5)
    return to_unit_float(cropped[:, ::-1] if flipped else cropped), flipped


def eval_transform(image: np.ndarray, image_size: int, resize: Resize = Resize()) -> np.ndarray:
    """Shorter-side resize and centre crop -> float32 (S, S, 3) in [0, 1]."""
    resized = resize_shorter_side(image, resize.shorter_side(image_size), resize.filter)
    return to_unit_float(center_crop(resized, image_size))
