"""Image preprocessing on uint8 (H, W, 3) arrays; randomness only from a passed Generator."""

import numpy as np
from PIL import Image


def _check_image(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"Expected a uint8 (H, W, 3) image, got dtype {image.dtype} shape {image.shape}")


def _check_crop(image: np.ndarray, size: int) -> None:
    height, width = image.shape[:2]
    if height < size or width < size:
        raise ValueError(f"Cannot crop {size}x{size} from an image of size {height}x{width}")


def shorter_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after scaling so the shorter side equals `size`."""
    if height <= width:
        return size, max(size, round(width * size / height))
    return max(size, round(height * size / width)), size


def resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize (antialiased when shrinking) so the shorter side is `size`."""
    _check_image(image)
    height, width = image.shape[:2]
    new_height, new_width = shorter_side_shape(height, width, size)
    if (new_height, new_width) == (height, width):
        return image
    resized = Image.fromarray(image).resize(
        (new_width, new_height), resample=Image.Resampling.BICUBIC, reducing_gap=None
    )
    return np.asarray(resized)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Central size x size crop."""
    _check_crop(image, size)
    top = (image.shape[0] - size) // 2
    left = (image.shape[1] - size) // 2
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


# train_transform's boolean keyword arguments shadow these op names inside it.
_random_crop = random_crop
_random_flip = random_flip


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
) -> np.ndarray:
    """Shorter-side resize, random (or centre) crop, optional flip -> float32 (S, S, 3) in [0, 1]."""
    return train_transform_with_flip(image, image_size, rng, random_crop, random_flip)[0]


def train_transform_with_flip(
    image: np.ndarray,
    image_size: int,
    rng: np.random.Generator,
    random_crop: bool = True,
    random_flip: bool = True,
) -> tuple[np.ndarray, bool]:
    """train_transform plus whether the image was mirrored (to pick pre-computed targets)."""
    resized = resize_shorter_side(image, image_size)
    cropped = _random_crop(resized, image_size, rng) if random_crop else center_crop(resized, image_size)
    # Same single draw as random_flip(), so both functions give identical images for one rng.
    flipped = bool(random_flip and rng.random() < 0.5)
    return to_unit_float(cropped[:, ::-1] if flipped else cropped), flipped


def eval_transform(image: np.ndarray, image_size: int) -> np.ndarray:
    """Shorter-side resize and centre crop -> float32 (S, S, 3) in [0, 1]."""
    return to_unit_float(center_crop(resize_shorter_side(image, image_size), image_size))

