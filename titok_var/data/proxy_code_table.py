"""Pre-computed TiTok stage-1 targets: the frozen MaskGIT-VQGAN's codes of every training image's
centre crop and of its mirror image, looked up by (source index, flipped).

Written by `python -m titok_var.tools.precompute_proxy_codes` as token shards
(data/token_shards.py) plus `proxy_codes.json` naming the VQGAN that made them. Held in memory
as int16 (ImageNet, 256 codes, both views: about 1.3 GB per host).
"""

import json
import os
import pathlib

import numpy as np

from titok_var.data import token_shards
from titok_var.data.sources import DatasetNotFoundError
from titok_var.models.titok import proxy_code_grid

DESCRIPTION_FILE = "proxy_codes.json"


def write_description(directory: str | os.PathLike, description: dict) -> None:
    """Records which VQGAN made the codes (checked when a run reads them)."""
    path = pathlib.Path(directory) / DESCRIPTION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(description, indent=2, sort_keys=True))
    os.replace(temporary, path)


def read_description(directory: str | os.PathLike) -> dict:
    path = pathlib.Path(directory) / DESCRIPTION_FILE
    if not path.exists():
        raise DatasetNotFoundError(
            f"{path} does not exist: {directory} holds no pre-computed proxy codes; run "
            "`python -m titok_var.tools.precompute_proxy_codes --config <stage-1 config>` first")
    return json.loads(path.read_text())


class ProxyCodeTable:
    """codes[source_index, flipped] -> (grid, grid) proxy-code ids of one split."""

    def __init__(self, directory: str | os.PathLike, split: str, *, num_examples: int, grid: int,
                 codebook_size: int, expected_description: dict, need_flipped: bool):
        description = read_description(directory)
        for key, value in expected_description.items():
            if description.get(key) != value:
                raise ValueError(
                    f"proxy codes in {directory} were made with {key}={description.get(key)!r}, this run "
                    f"uses {value!r}: re-run precompute_proxy_codes for this configuration")
        paths = token_shards.list_shards(directory, split)
        if not paths:
            raise DatasetNotFoundError(f"no '{split}' proxy-code shards in {directory}")
        self.grid = grid
        self.codes = np.full((num_examples, 2, grid * grid), -1, np.int16)
        for path in paths:
            try:
                with np.load(path) as shard:
                    tokens, indices, flipped = shard["tokens"], shard["source_indices"], shard["flipped"]
            except (OSError, ValueError, KeyError) as error:
                raise ValueError(f"proxy-code shard {path} is unreadable: {error}") from error
            if tokens.shape[1] != grid * grid:
                raise ValueError(f"{path} holds {tokens.shape[1]} codes per image; the model predicts "
                                 f"{grid}x{grid} = {grid * grid}")
            if len(tokens) and (int(tokens.min()) < 0 or int(tokens.max()) >= codebook_size):
                raise ValueError(f"{path} holds code ids outside [0, {codebook_size})")
            if len(indices) and int(indices.max()) >= num_examples:
                raise ValueError(f"{path} refers to image {int(indices.max())} but the dataset has "
                                 f"{num_examples}: the codes belong to another dataset or split")
            self.codes[indices, flipped.astype(np.int64)] = tokens
        views = (0, 1) if need_flipped else (0,)
        for view in views:
            missing = np.flatnonzero(self.codes[:, view, 0] < 0)
            if len(missing):
                raise ValueError(
                    f"{len(missing)} of {num_examples} images have no pre-computed proxy codes"
                    f"{' for their mirror image' if view else ''} in {directory} (first: image "
                    f"{int(missing[0])}); finish precompute_proxy_codes (it resumes) or turn off "
                    f"{'data.random_flip' if view else 'proxy.precomputed_dir'}")

    def lookup(self, source_index: np.ndarray, flipped: np.ndarray) -> np.ndarray:
        rows = self.codes[source_index, flipped.astype(np.int64)].astype(np.int32)
        return rows.reshape(len(rows), self.grid, self.grid)


def expected_description(config) -> dict:
    """What the codes of this stage-1 config must have been made with (see precompute_proxy_codes)."""
    return {"preset": config.proxy.preset, "image_size": config.data.image_size,
            "vqgan_weights": os.path.basename(config.proxy.get("vqgan_weights", "") or "")}


def require_centre_crops(config) -> None:
    """Pre-computed codes are of centre crops: a run reading them must not crop at random."""
    if config.proxy.get("precomputed_dir") and config.data.get("random_crop", True):
        raise ValueError("proxy.precomputed_dir holds codes of centre crops: set data.random_crop=False "
                         "(or clear proxy.precomputed_dir to compute codes of random crops on the fly)")


def attach_proxy_codes(config, batches, *, split: str, num_examples: int):
    """Adds "proxy_codes" (L, grid, grid) to batches that carry "source_index"/"flipped" (dropped).
    The table is read (and checked) now, not at the first batch."""
    require_centre_crops(config)
    table = ProxyCodeTable(
        config.proxy.precomputed_dir, split, num_examples=num_examples, grid=proxy_code_grid(config.model),
        codebook_size=config.model.proxy_codebook_size, expected_description=expected_description(config),
        need_flipped=config.data.get("random_flip", True))

    def with_codes():
        for batch in batches:
            batch["proxy_codes"] = table.lookup(batch.pop("source_index"), batch.pop("flipped"))
            yield batch

    return with_codes()
