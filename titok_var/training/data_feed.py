"""Host-local numpy batches -> global jax.Arrays sharded over the mesh's batch axes."""

import jax
from jax.sharding import Mesh

from titok_var.data import builder, pipeline, proxy_code_table, token_shards, transforms
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
    for batch in host_train_batches(config, start_step, stats):
        yield to_global(batch, mesh)


def eval_iterator(config, mesh: Mesh, stats: pipeline.PipelineStats):
    """One padded pass over the eval split (same number of batches on every host)."""
    local_batch_size(config.eval.global_batch_size, mesh)
    for batch in host_eval_batches(config, stats):
        yield to_global(batch, mesh)


def host_train_batches(config, start_step: int, stats: pipeline.PipelineStats):
    """This process's rows of each training batch: pre-tokenized shards or decoded images."""
    split = dict(global_batch_size=config.train.global_batch_size, seed=config.data.seed, start_step=start_step,
                 process_index=jax.process_index(), process_count=jax.process_count())
    if config.data.name == "tokens":
        return token_shards.train_batches(token_dataset(config, "train"), **split)
    source = builder.build_source(config.data, "train")
    precomputed_proxy_codes = bool(config.get("proxy") and config.proxy.get("precomputed_dir"))
    batches = pipeline.train_batches(
        source, image_size=config.data.image_size,
        random_crop=config.data.random_crop, random_flip=config.data.random_flip,
        resize=transforms.resize_from_config(config.data), num_workers=config.train.data_workers, stats=stats, with_provenance=precomputed_proxy_codes, **split,
    )
    if precomputed_proxy_codes:
        return proxy_code_table.attach_proxy_codes(
            config, batches, split=builder.split_name(config.data, "train"), num_examples=len(source))
    return batches


def host_eval_batches(config, stats: pipeline.PipelineStats):
    """This process's rows of each padded eval batch: pre-tokenized shards or decoded images."""
    split = dict(global_batch_size=config.eval.global_batch_size, max_examples=config.eval.num_examples,
                 process_index=jax.process_index(), process_count=jax.process_count())
    if config.data.name == "tokens":
        return token_shards.eval_batches(token_dataset(config, "eval"), **split)
    return pipeline.eval_batches(
        builder.build_source(config.data, "eval"), image_size=config.data.image_size,
        resize=transforms.resize_from_config(config.data), num_workers=config.train.data_workers, stats=stats, **split,
    )


def token_dataset(config, split: str) -> token_shards.TokenDataset:
    """Pre-tokenized split named by data.train_split / data.eval_split under data.data_dir."""
    if not config.data.get("data_dir"):
        raise ValueError("data.name='tokens' needs data.data_dir (the pre-tokenized shard folder)")
    return token_shards.TokenDataset(config.data.data_dir, builder.split_name(config.data, split))
