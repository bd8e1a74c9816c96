"""Procedural class-conditional dataset: one coloured shape on a varied background."""

import zlib

import numpy as np

SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLOUR_NAMES: tuple[str, ...] = ("red", "green", "blue", "yellow")
NUM_CLASSES = len(SHAPE_NAMES) * len(COLOUR_NAMES)

_COLOUR_RGB = np.array(
    [
        [0.85, 0.15, 0.15],  # red
        [0.15, 0.75, 0.20],  # green
        [0.15, 0.30, 0.90],  # blue
        [0.90, 0.85, 0.15],  # yellow
    ],
    dtype=np.float32,
)
_MIN_SIZE, _MAX_SIZE = 0.35, 0.70  # shape side as a fraction of the image side
_COLOUR_JITTER = 0.08
_BACKGROUND_TINT = 0.08  # small per-channel offsets keep backgrounds muted (low saturation)
_NOISE_STD = 0.02
_CROSS_ARM_HALF_WIDTH = 0.2  # relative to the shape's half size


def class_shape(label: int) -> str:
    """Shape name of a class id."""
    return SHAPE_NAMES[label // len(COLOUR_NAMES)]


def class_colour(label: int) -> str:
    """Colour name of a class id."""
    return COLOUR_NAMES[label % len(COLOUR_NAMES)]


def class_name(label: int) -> str:
    """Human-readable class name such as "red circle"."""
    if not 0 <= label < NUM_CLASSES:
        raise ValueError(f"Shapes class id must be in [0, {NUM_CLASSES}), got {label}")
    return f"{class_colour(label)} {class_shape(label)}"


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, half: float) -> np.ndarray:
    """Boolean mask of `shape` given pixel offsets from its centre and its half size."""
    if shape == "circle":
        return dx * dx + dy * dy <= half * half
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= half
    if shape == "triangle":
        # Apex at the top, base at the bottom: the half width grows linearly with dy.
        return (np.abs(dy) <= half) & (np.abs(dx) <= (dy + half) / 2)
    if shape == "cross":
        arm = _CROSS_ARM_HALF_WIDTH * half
        inside = np.maximum(np.abs(dx), np.abs(dy)) <= half
        return inside & ((np.abs(dx) <= arm) | (np.abs(dy) <= arm))
    raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPE_NAMES}")


def _pixel_grid(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1): (y, x) arrays of shape (S, 1) and (1, S)."""
    centres = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size
    return centres[:, None], centres[None, :]


def _background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Smooth two-colour gradient in muted tones, float32 (S, S, 3)."""
    greys = rng.uniform(0.25, 0.75, size=(2, 1))
    tints = rng.uniform(-_BACKGROUND_TINT, _BACKGROUND_TINT, size=(2, 3))
    start, end = (greys + tints).astype(np.float32)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    # Projection onto the gradient direction, rescaled so corners map to about [0, 1].
    t = ((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle)) / np.sqrt(2.0) + 0.5
    return start + (end - start) * t[..., None]


def render_example(label: int, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Draws one image of class `label` as uint8 (S, S, 3)."""
    yy, xx = _pixel_grid(image_size)
    image = _background(rng, yy, xx)
    half = rng.uniform(_MIN_SIZE, _MAX_SIZE) / 2
    cx, cy = rng.uniform(half, 1.0 - half, size=2)
    colour = _COLOUR_RGB[label % len(COLOUR_NAMES)] + rng.uniform(-_COLOUR_JITTER, _COLOUR_JITTER, size=3)
    mask = shape_mask(class_shape(label), xx - cx, yy - cy, half)
    image = np.where(mask[..., None], colour.astype(np.float32), image)
    image = image + rng.normal(0.0, _NOISE_STD, size=image.shape).astype(np.float32)
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _split_key(split: str) -> int:
    """Stable integer for a split name (Python's hash() is salted per process)."""
    return zlib.crc32(split.encode("utf-8"))


class ShapesSource:
    """Deterministic procedural dataset: example i depends only on (seed, split, i); label = i % 16."""

    num_classes: int = NUM_CLASSES

    def __init__(self, num_examples: int, image_size: int, split: str = "train", seed: int = 0):
        if num_examples <= 0:
            raise ValueError(f"ShapesSource needs num_examples > 0, got {num_examples}")
        if image_size <= 0:
            raise ValueError(f"ShapesSource needs image_size > 0, got {image_size}")
        self.num_examples = num_examples
        self.image_size = image_size
        self.split = split
        self.seed = seed
        self.class_names = [class_name(label) for label in range(NUM_CLASSES)]
        self._split_key = _split_key(split)

    def __len__(self) -> int:
        return self.num_examples

    def load(self, index: int) -> tuple[np.ndarray, int]:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"ShapesSource index {index} out of range [0, {self.num_examples})")
        label = index % NUM_CLASSES
        rng = np.random.default_rng([self.seed, self._split_key, index])
        return render_example(label, self.image_size, rng), label

    def __repr__(self) -> str:
        return (
            f"ShapesSource(num_examples={self.num_examples}, image_size={self.image_size}, "
            f"split={self.split!r}, seed={self.seed})"
        )
