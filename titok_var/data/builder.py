"""Creates the ImageSource a data config asks for."""

import pathlib

import ml_collections

from titok_var.data.image_folder import ImageFolderSource
from titok_var.data.shapes import ShapesSource
from titok_var.data.sources import ImageSource, UnknownDatasetError

SPLITS = ("train", "eval")


def split_name(data_config: ml_collections.ConfigDict, split: str) -> str:
    """The dataset's own split name ("train", "validation", ...) for "train" or "eval"."""
    if split == "train":
        return data_config.train_split
    if split == "eval":
        return data_config.eval_split
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def build_source(data_config: ml_collections.ConfigDict, split: str) -> ImageSource:
    """Source for `split` ("train" or "eval") of the dataset named by data_config.name.

    name "shapes": procedural dataset; "image_folder": folders under data_dir/<split name>;
    anything else: a tfds dataset name read from data_dir (tfds's default when empty).
    """
    name = data_config.name
    dataset_split = split_name(data_config, split)
    data_dir = data_config.get("data_dir") or None
    if name == "shapes":
        num_examples = data_config.shapes_num_train if split == "train" else data_config.shapes_num_eval
        return ShapesSource(
            num_examples=num_examples,
            image_size=data_config.image_size,
            split=dataset_split,
            seed=data_config.seed,
        )
    if name == "image_folder":
        if data_dir is None:
            raise ValueError("data.name='image_folder' needs data.data_dir (the folder holding the split folders)")
        return ImageFolderSource(pathlib.Path(data_dir) / dataset_split, alpha=data_config.get("alpha", "drop"))
    # Imported lazily: tensorflow_datasets is slow to import and unneeded for the other sources.
    from titok_var.data.tfds_source import TfdsSource

    try:
        return TfdsSource(name, dataset_split, data_dir=data_dir, alpha=data_config.get("alpha", "drop"))
    except UnknownDatasetError as error:
        raise UnknownDatasetError(
            f"Unknown dataset name {name!r}: expected 'shapes', 'image_folder' or a tfds dataset name "
            f"(e.g. 'imagenet2012'). {error}"
        ) from error
