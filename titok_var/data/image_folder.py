"""Image-folder dataset: one sub-folder of images per class."""

import os
import pathlib

import numpy as np

from titok_var.data.sources import DatasetNotFoundError, decode_image_bytes

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


def is_image_file(path: pathlib.Path) -> bool:
    """True for regular files with an image extension (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def list_class_dirs(root: pathlib.Path) -> list[pathlib.Path]:
    """Visible sub-folders of `root`, sorted by name."""
    return sorted(
        (child for child in root.iterdir() if child.is_dir() and not child.name.startswith(".")),
        key=lambda child: child.name,
    )


def list_class_images(class_dir: pathlib.Path) -> list[pathlib.Path]:
    """Image files anywhere below `class_dir`, in sorted path order."""
    return sorted(path for path in class_dir.rglob("*") if is_image_file(path))


class ImageFolderSource:
    """Images under `root/<class name>/...`; labels are indices of the sorted class names."""

    def __init__(self, root: str | os.PathLike[str], alpha: str = "drop"):
        self.root = pathlib.Path(root)
        self.alpha = alpha
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                f"Image folder {str(self.root)!r} does not exist or is not a directory; "
                "expected one sub-folder of images per class there."
            )
        class_dirs = list_class_dirs(self.root)
        if not class_dirs:
            raise ValueError(f"Image folder {str(self.root)!r} has no class sub-folders.")
        self.class_names: list[str] = [class_dir.name for class_dir in class_dirs]
        self.num_classes: int = len(class_dirs)
        files: list[pathlib.Path] = []
        labels: list[int] = []
        for label, class_dir in enumerate(class_dirs):
            class_files = list_class_images(class_dir)
            files.extend(class_files)
            labels.extend([label] * len(class_files))
        if not files:
            extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise ValueError(
                f"Image folder {str(self.root)!r} has {len(class_dirs)} class sub-folders but no "
                f"image files ({extensions})."
            )
        self.files: list[pathlib.Path] = files
        self.labels: np.ndarray = np.asarray(labels, dtype=np.int32)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> tuple[np.ndarray, int]:
        path = self.files[index]
        image = decode_image_bytes(path.read_bytes(), what=f"file {str(path)!r}", alpha=self.alpha)
        return image, int(self.labels[index])

    def __repr__(self) -> str:
        return f"ImageFolderSource(root={str(self.root)!r}, num_examples={len(self)}, num_classes={self.num_classes})"
