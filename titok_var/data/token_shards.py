"""Pre-tokenized datasets: `.npz` shards of token sequences and class labels.

Each process writes its own shards (`<split>-p<process>-s<shard>.npz`, keys `tokens` (n, K) int32,
`labels` (n,) int32, `source_indices` (n,) int64 and `flipped` (n,) bool), atomically, so an interrupted run resumes by
skipping the shards already on disk. Token datasets are small (ImageNet at K=32 with flips is
~330 MB as int32), so readers hold them in memory and batch them with the same deterministic
(seed, step) order as the image pipeline.
"""

import os
import pathlib
import re
import tempfile
from typing import Iterator

import numpy as np

from titok_var.data import pipeline
from titok_var.data.sources import DatasetNotFoundError

_SHARD_RE = re.compile(r"^(?P<split>[\w.]+)-p(?P<process>\d{3})-s(?P<shard>\d{5})\.npz$")


def shard_path(directory: str | os.PathLike, split: str, process_index: int, shard_index: int) -> pathlib.Path:
    return pathlib.Path(directory) / f"{split}-p{process_index:03d}-s{shard_index:05d}.npz"


def write_shard(path: pathlib.Path, tokens: np.ndarray, labels: np.ndarray, source_indices: np.ndarray,
                flipped: np.ndarray) -> None:
    """Writes through a temporary file and a rename: a shard on disk is always complete."""
    if tokens.ndim != 2 or not len(tokens) == len(labels) == len(source_indices) == len(flipped):
        raise ValueError(
            f"shard arrays disagree: tokens {tokens.shape}, labels {labels.shape}, indices {source_indices.shape}, "
            f"flipped {flipped.shape}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        np.savez(
            handle,
            tokens=tokens.astype(np.int32),
            labels=labels.astype(np.int32),
            source_indices=source_indices.astype(np.int64),
            flipped=flipped.astype(bool),
        )
    os.replace(handle.name, path)


def list_shards(directory: str | os.PathLike, split: str) -> list[pathlib.Path]:
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise DatasetNotFoundError(f"token directory {directory} does not exist; run the pre-tokenization first")
    found = [p for p in directory.iterdir() if (m := _SHARD_RE.match(p.name)) and m["split"] == split]
    return sorted(found)


class TokenDataset:
    """All shards of one split, in memory: `tokens` (N, K) int32 and `labels` (N,) int32."""

    def __init__(self, directory: str | os.PathLike, split: str, *, codebook_size: int | None = None):
        paths = list_shards(directory, split)
        if not paths:
            raise DatasetNotFoundError(
                f"no '{split}' token shards in {directory}; run `python -m titok_var.tools.pretokenize` first"
            )
        tokens, labels = [], []
        for path in paths:
            try:
                with np.load(path) as shard:
                    tokens.append(shard["tokens"])
                    labels.append(shard["labels"])
            except (OSError, ValueError, KeyError) as error:
                raise ValueError(f"token shard {path} is unreadable: {error}") from error
        lengths = {t.shape[1] for t in tokens}
        if len(lengths) != 1:
            raise ValueError(f"token shards in {directory} hold different sequence lengths {sorted(lengths)}")
        self.tokens = np.concatenate(tokens)
        self.labels = np.concatenate(labels)
        self.sequence_length = lengths.pop()
        if codebook_size is not None and len(self.tokens) and int(self.tokens.max()) >= codebook_size:
            raise ValueError(
                f"token shards in {directory} hold ids up to {int(self.tokens.max())}, beyond the "
                f"codebook size {codebook_size}: they come from another tokenizer"
            )

    def __len__(self) -> int:
        return len(self.tokens)


def train_batches(
    dataset: TokenDataset, *, global_batch_size: int, seed: int, start_step: int,
    process_index: int = 0, process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless batches; the rows of a step depend only on (seed, step), so resuming is exact."""
    for step in range(start_step, np.iinfo(np.int64).max):
        positions = pipeline.host_positions(step, global_batch_size, process_index, process_count)
        indices = pipeline.positions_to_indices(positions, len(dataset), seed)
        yield {"tokens": dataset.tokens[indices], "label": dataset.labels[indices]}


def eval_batches(
    dataset: TokenDataset, *, global_batch_size: int, max_examples: int | None = None,
    process_index: int = 0, process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """One in-order pass, the last batch padded with rows whose mask is False."""
    num_examples = len(dataset) if max_examples is None else min(len(dataset), max_examples)
    for batch_index in range(pipeline.num_eval_batches(num_examples, global_batch_size)):
        positions = pipeline.host_positions(batch_index, global_batch_size, process_index, process_count)
        mask = positions < num_examples
        safe = np.where(mask, positions, 0)
        yield {"tokens": dataset.tokens[safe], "label": dataset.labels[safe], "mask": mask}
