"""Random-access TFDS datasets (array_record files) as an ImageSource."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from titok_var.data.sources import DatasetNotFoundError, UnknownDatasetError, decode_image_bytes

IMAGE_KEY = "image"
LABEL_KEY = "label"


def _build_instructions(name: str, data_dir: str | None) -> str:
    """How to prepare a dataset for random access."""
    data_dir_flag = f" --data_dir={data_dir}" if data_dir else ""
    if name.startswith("imagenet2012"):
        return (
            "ImageNet must be prepared from the manually downloaded archives with "
            f"`tfds build imagenet2012 --manual_dir=<dir with ILSVRC2012_img_*.tar>{data_dir_flag} "
            "--file_format=array_record`."
        )
    return f"Prepare it with `tfds build {name}{data_dir_flag} --file_format=array_record`."


def _make_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """tfds builder for `name`, with unknown names reported briefly."""
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        # tfds's own message lists every registered dataset; keep only the point.
        raise UnknownDatasetError(
            f"tfds has no dataset named {name!r} (and none is prepared under data_dir={data_dir!r})."
        ) from error


def _check_random_access(builder: tfds.core.DatasetBuilder, name: str, data_dir: str | None) -> None:
    """Raises DatasetNotFoundError unless the dataset is prepared as array_record files."""
    if not builder.is_prepared():
        raise DatasetNotFoundError(
            f"tfds dataset {name!r} is not prepared: looked in {str(builder.data_dir)!r} "
            f"(data_dir={data_dir!r}). Random access needs the array_record file format. "
            + _build_instructions(name, data_dir)
        )
    formats = builder.info.available_file_formats()
    if tfds.core.FileFormat.ARRAY_RECORD not in formats:
        found = ", ".join(sorted(fmt.value for fmt in formats)) or "none"
        raise DatasetNotFoundError(
            f"tfds dataset {name!r} in {str(builder.data_dir)!r} is prepared as [{found}], but random "
            "access needs array_record files. " + _build_instructions(name, data_dir)
        )


def _check_features(features: Any, name: str) -> None:
    """Requires an image feature and a class-label feature."""
    keys = list(features.keys())
    if IMAGE_KEY not in keys or LABEL_KEY not in keys:
        raise ValueError(
            f"tfds dataset {name!r} needs features {IMAGE_KEY!r} and {LABEL_KEY!r}; it has {keys}."
        )
    if not hasattr(features[LABEL_KEY], "num_classes"):
        raise ValueError(f"tfds dataset {name!r}: feature {LABEL_KEY!r} is not a ClassLabel.")


class TfdsSource:
    """A split of a prepared TFDS image-classification dataset, read by index."""

    def __init__(self, name: str, split: str, data_dir: str | None = None, alpha: str = "drop"):
        self.name = name
        self.alpha = alpha
        self.split = split
        builder = _make_builder(name, data_dir)
        _check_random_access(builder, name, data_dir)
        _check_features(builder.info.features, name)
        self.data_dir = str(builder.data_dir)
        self.num_classes: int = int(builder.info.features[LABEL_KEY].num_classes)
        self.class_names: list[str] = list(builder.info.features[LABEL_KEY].names)
        try:
            # Same as tfds.data_source(..., download=False) but reuses the checked builder.
            # SkipDecoding keeps the encoded bytes so decoding happens in our threads with PIL.
            self._records: Sequence[dict[str, Any]] = builder.as_data_source(
                split=split, decoders={IMAGE_KEY: tfds.decode.SkipDecoding()}
            )
        except (KeyError, ValueError) as error:
            available = list(builder.info.splits.keys())
            raise ValueError(
                f"Cannot read split {split!r} of tfds dataset {name!r} in {self.data_dir!r} "
                f"(available splits: {available}): {error}"
            ) from error

    def __len__(self) -> int:
        return len(self._records)

    def load(self, index: int) -> tuple[np.ndarray, int]:
        record = self._records[index]
        what = f"{self.name}/{self.split}[{index}]"
        return decode_image_bytes(record[IMAGE_KEY], what=what, alpha=self.alpha), int(record[LABEL_KEY])

    def __repr__(self) -> str:
        return f"TfdsSource(name={self.name!r}, split={self.split!r}, data_dir={self.data_dir!r}, num_examples={len(self)})"
