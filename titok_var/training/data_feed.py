"""Host-local numpy batches -> global jax.Arrays sharded over the mesh's batch axes."""

import jax
from jax.sharding import Mesh

from titok_var.data import builder, pipeline, token_shards
from titok_var.sharding import mesh as mesh_lib


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    divisor = mesh_lib.batch_divisor(mesh)
    if global_batch_size % divisor:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by the {divisor} devices of the "
            f"mesh's data x fsdp axes"
        )
    if global_batch_size % jax.process_count():
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by {jax.process_count()} processes"
        )
    return global_batch_size // jax.process_count()


def to_global(batch: dict, mesh: Mesh) -> dict:
    sharding = mesh_lib.batch_sharding(mesh)
    return {key: jax.make_array_from_process_local_data(sharding, value) for key, value in batch.items()}


def train_iterator(config, mesh: Mesh, start_step: int, stats: pipeline.PipelineStats):
    """Global batches from `start_step` on; the data of a step depends only on (seed, step)."""
    local_batch_size(config.train.global_batch_size, mesh)
    if config.data.name == "tokens":
        batches = token_shards.train_batches(
            token_dataset(config, "train"),
            global_batch_size=config.train.global_batch_size,
            seed=config.data.seed,
            start_step=start_step,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        for batch in batches:
            yield to_global(batch, mesh)
        return
    source = builder.build_source(config.data, "train")
    batches = pipeline.train_batches(
        source,
        image_size=config.data.image_size,
        global_batch_size=config.train.global_batch_size,
        seed=config.data.seed,
        start_step=start_step,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        random_crop=config.data.random_crop,
        random_flip=config.data.random_flip,
        num_workers=config.train.data_workers,
        stats=stats,
    )
    for batch in batches:
        yield to_global(batch, mesh)


def eval_iterator(config, mesh: Mesh, stats: pipeline.PipelineStats):
    """One padded pass over the eval split (same number of batches on every host)."""
    local_batch_size(config.eval.global_batch_size, mesh)
    if config.data.name == "tokens":
        batches = token_shards.eval_batches(
            token_dataset(config, "eval"),
            global_batch_size=config.eval.global_batch_size,
            max_examples=config.eval.num_examples,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        for batch in batches:
            yield to_global(batch, mesh)
        return
    source = builder.build_source(config.data, "eval")
    batches = pipeline.eval_batches(
        source,
        image_size=config.data.image_size,
        global_batch_size=config.eval.global_batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        max_examples=config.eval.num_examples,
        num_workers=config.train.data_workers,
        stats=stats,
    )
    for batch in batches:
        yield to_global(batch, mesh)


def token_dataset(config, split: str) -> token_shards.TokenDataset:
    """Pre-tokenized split named by data.train_split / data.eval_split under data.data_dir."""
    if not config.data.get("data_dir"):
        raise ValueError("data.name='tokens' needs data.data_dir (the pre-tokenized shard folder)")
    return token_shards.TokenDataset(config.data.data_dir, builder.split_name(config.data, split))
