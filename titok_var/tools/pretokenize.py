"""Encodes an image dataset once with an exported tokenizer into token shards for a generator.

  python -m titok_var.tools.pretokenize --config configs/maskgit_tiny.py --split train

Any tokenizer task with `encode_tokens` works: TiTok stores its K ids per image, VAR's VQVAE its
L = sum p^2 ids of all scales flattened coarse to fine. The generator config names the tokenizer export (`tokenizer.export_dir`), the image dataset
(`tokenizer.image_data`) and the output folder (`data.data_dir`). Every image is centre-cropped
and, with `flips`, also encoded mirrored (two rows per image, as the paper's App. A). Each process
encodes every process_count-th shard on its local devices; finished shards are skipped on restart.
"""

import dataclasses
import time

import jax
import numpy as np
from absl import app, flags, logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import config_flags

from titok_var import logs
from titok_var.data import builder, pipeline, token_shards, transforms
from titok_var.tools.export import load_exported


@dataclasses.dataclass
class IndexRange:
    """A contiguous slice [start, stop) of an ImageSource, itself an ImageSource."""

    source: object
    start: int
    stop: int

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    def __len__(self) -> int:
        return self.stop - self.start

    def load(self, index: int):
        return self.source.load(self.start + index)


class Progress:
    """Logs images done, rate and time left at most every `every_seconds`."""

    def __init__(self, total: int, every_seconds: float = 10.0):
        self.total, self.every_seconds = total, every_seconds
        self.done, self.started = 0, time.monotonic()
        self.last_report = self.started

    def advance(self, count: int):
        self.done += count
        now = time.monotonic()
        if now - self.last_report >= self.every_seconds or self.done >= self.total:
            self.last_report = now
            rate = self.done / max(now - self.started, 1e-9)
            eta = (self.total - self.done) / max(rate, 1e-9)
            logging.info("pretokenize: %d/%d images, %.1f img/s, ETA %s", self.done, self.total, rate,
                         time.strftime("%H:%M:%S", time.gmtime(eta)))


def make_encoder(encode_tokens, mesh: Mesh):
    """Jitted (params, images (B, S, S, 3)) -> token ids (B, K), batch split over the mesh's devices."""
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    encode = jax.jit(encode_tokens)

    def run(params, images: np.ndarray) -> np.ndarray:
        return np.asarray(encode(params, jax.device_put(images, batch_sharding)))

    return run


def pretokenize(
    export_dir: str, image_data, output_dir: str, split: str, *, batch_size: int = 256,
    shard_size: int = 10_000, flips: bool = True, num_workers: int = 8,
    process_index: int | None = None, process_count: int | None = None,
) -> list:
    """Writes this process's shards of `split` ("train"/"eval"); returns the shard paths it owns."""
    mesh = Mesh(np.array(jax.local_devices()), ("data",))
    task, params, tokenizer_config = load_exported(export_dir, mesh=mesh)
    if not hasattr(task, "encode_tokens"):
        raise ValueError(f"{export_dir} holds a {tokenizer_config.model_name!r} export, not a tokenizer")
    if tokenizer_config.data.image_size != image_data.image_size:
        raise ValueError(
            f"the tokenizer takes {tokenizer_config.data.image_size} px images but the image data is "
            f"{image_data.image_size} px"
        )
    encode = make_encoder(task.encode_tokens, mesh)
    return encode_split(lambda images: encode(params, images), image_data, output_dir, split,
                        batch_size=batch_size, shard_size=shard_size, flips=flips, num_workers=num_workers,
                        process_index=process_index, process_count=process_count)


def encode_split(
    encode, image_data, output_dir: str, split: str, *, batch_size: int = 256, shard_size: int = 10_000,
    flips: bool = True, num_workers: int = 8, process_index: int | None = None, process_count: int | None = None,
) -> list:
    """Centre crops (and mirrored copies) of `split`, through `encode` (images -> (B, K) ids), into
    this process's token shards; returns the shard paths it owns (finished ones are skipped)."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if batch_size % jax.local_device_count():
        raise ValueError(f"batch_size {batch_size} is not divisible by the {jax.local_device_count()} local devices")
    source = builder.build_source(image_data, split)
    dataset_split = builder.split_name(image_data, split)
    num_shards = -(-len(source) // shard_size)
    owned = list(range(process_index, num_shards, process_count))
    pending = [s for s in owned if not token_shards.shard_path(output_dir, dataset_split, process_index, s).exists()]
    logging.info("encode %s: %d images, %d of this process's %d shards left", dataset_split,
                 len(source), len(pending), len(owned))
    progress = Progress(sum(min(shard_size, len(source) - s * shard_size) for s in pending))
    num_views = 2 if flips else 1
    for shard in pending:
        subset = IndexRange(source, shard * shard_size, min((shard + 1) * shard_size, len(source)))
        tokens, labels, indices = [[] for _ in range(num_views)], [], []
        batches = pipeline.eval_batches(subset, image_size=image_data.image_size, global_batch_size=batch_size,
                                        resize=transforms.resize_from_config(image_data), num_workers=num_workers)
        for batch_index, batch in enumerate(batches):
            keep = batch["mask"]
            views = [batch["image"], batch["image"][:, :, ::-1]][:num_views]
            for view_tokens, view in zip(tokens, views):
                view_tokens.append(encode(np.ascontiguousarray(view))[keep])
            labels.append(batch["label"][keep])
            indices.append(subset.start + batch_index * batch_size + np.flatnonzero(keep))
            progress.advance(int(keep.sum()))
        # Rows: every image of the shard, then (with flips) the same images mirrored.
        num_rows = sum(map(len, labels))
        path = token_shards.shard_path(output_dir, dataset_split, process_index, shard)
        token_shards.write_shard(path, np.concatenate([np.concatenate(t) for t in tokens]),
                                 np.tile(np.concatenate(labels), num_views),
                                 np.tile(np.concatenate(indices), num_views),
                                 np.repeat(np.arange(num_views) == 1, num_rows))
    return [token_shards.shard_path(output_dir, dataset_split, process_index, s) for s in owned]


def define_flags(flag_values=flags.FLAGS):
    """Command-line flags, defined only when run as a program (importing must not claim --config)."""
    fv = dict(flag_values=flag_values)
    return (config_flags.DEFINE_config_file("config", None, "Generator config naming tokenizer and data.", **fv),
            flags.DEFINE_enum("split", "both", ["train", "eval", "both"], "Which split to encode.", **fv),
            flags.DEFINE_bool("distributed", False, "jax.distributed.initialize() auto-detect (SLURM, TPU "
                              "VMs): each host encodes its share of the shards.", **fv))


def main(argv, config_flag, split_flag, distributed_flag):
    del argv
    from titok_var import distributed

    distributed.initialize(None, 1, 0, distributed_flag.value)
    config = config_flag.value
    settings = config.tokenizer
    for split in (["train", "eval"] if split_flag.value == "both" else [split_flag.value]):
        pretokenize(settings.export_dir, settings.image_data, config.data.data_dir, split,
                    batch_size=settings.batch_size, shard_size=settings.shard_size, flips=settings.flips)


if __name__ == "__main__":
    logs.configure()  # TITOK_VAR_VERBOSE_LOGS=1 shows the libraries' INFO lines
    _config_flag, _split_flag, _distributed_flag = define_flags()
    flags.mark_flag_as_required("config")
    app.run(lambda argv: main(argv, _config_flag, _split_flag, _distributed_flag))
