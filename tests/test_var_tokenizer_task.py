"""The VAR VQVAE as a trainable task: training, eval metrics per scale, token round trip,
pre-tokenization into (B, L) shards, sharded equals single-device, config errors."""

import jax
import numpy as np
import pytest

from titok_var import registry
from titok_var.data import builder, token_shards
from titok_var.tasks.var_vqvae import flatten_token_maps, split_token_maps
from titok_var.tools import export, pretokenize
from titok_var.training import trainer
from tests.helpers import tiny_var_vqvae_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqvae")
    config = tiny_var_vqvae_config(num_steps=4, eval_every_steps=4)
    result = trainer.train(config, str(root / "work"))
    export_dir = export.export_checkpoint(config, str(root / "work"), str(root / "export"))
    return config, result, export_dir


def test_training_runs_and_reports_per_scale_codebook_usage(trained):
    config, result, _ = trained
    assert sorted(result.losses) == [1, 2, 3, 4] and all(np.isfinite(list(result.losses.values())))
    metrics = result.eval_metrics
    for si, pn in enumerate(config.model.patch_nums):
        usage = metrics[f"codebook_usage_scale{si}_{pn}x{pn}"]
        # A scale with p*p positions over 32 images can use at most 32*p*p codes.
        assert 0 < usage <= min(1.0, 32 * pn * pn / config.model.codebook_size)
    assert metrics["num_examples"] == 32 and 0 < metrics["psnr"] < 60


def test_token_maps_flatten_and_split_back():
    rng = np.random.default_rng(0)
    maps = [rng.integers(0, 9, (3, p, p)) for p in (1, 2, 4)]
    tokens = np.asarray(flatten_token_maps(maps))
    assert tokens.shape == (3, 21)
    np.testing.assert_array_equal(tokens[:, 1:5], maps[1].reshape(3, 4))
    for original, back in zip(maps, split_token_maps(tokens, (1, 2, 4))):
        np.testing.assert_array_equal(original, back)
    with pytest.raises(ValueError, match="do not match patch_nums"):
        split_token_maps(tokens, (1, 2, 3))


def test_pretokenized_shards_hold_all_scales_and_decode_like_the_model(trained, tmp_path):
    config, _, export_dir = trained
    data = config.data.copy_and_resolve_references()
    data.shapes_num_train = 12
    paths = pretokenize.pretokenize(export_dir, data, str(tmp_path), "train", batch_size=8, shard_size=16,
                                    flips=False)
    dataset = token_shards.TokenDataset(tmp_path, "train", codebook_size=config.model.codebook_size)
    assert len(dataset) == 12 and dataset.sequence_length == 1 + 4 + 16

    task, params, _ = export.load_exported(export_dir)
    source = builder.build_source(data, "train")
    images = np.stack([source.load(i)[0] for i in range(12)]).astype(np.float32) / 255.0
    with np.load(paths[0]) as shard:
        tokens = shard["tokens"]
    np.testing.assert_array_equal(tokens, task.encode_tokens(params, images))
    # Decoding the stored tokens gives the model's own (quantized) reconstruction.
    decoded = np.asarray(task.decode_tokens(params, tokens))
    reconstruction, _ = task.reconstruct(params, images)
    np.testing.assert_allclose(decoded, np.asarray(reconstruction), atol=1e-5)


def _first_loss(config, devices):
    exp = trainer.build_experiment(config, "/tmp/unused", devices)
    with exp.context():
        from titok_var.training import state_init
        state = state_init.create_train_state(exp.task, exp.tx, config, exp.mesh, exp.rules, exp.layout)
        from titok_var.training import data_feed
        from titok_var.data import pipeline
        batch = next(data_feed.train_iterator(config, exp.mesh, 0, pipeline.PipelineStats()))
        _, metrics = trainer.jit_train_step(exp)(state, batch)
    return float(metrics["loss"]), float(metrics["grad_norm"])


def test_sharded_step_equals_single_device():
    config = tiny_var_vqvae_config()
    single = _first_loss(config, jax.devices()[:1])
    sharded = _first_loss(config, jax.devices()[:8])
    np.testing.assert_allclose(sharded, single, rtol=2e-5)


def test_config_mismatches_fail_with_a_named_field():
    config = tiny_var_vqvae_config()
    config.data.image_size = 32
    with pytest.raises(ValueError, match="data.image_size 32"):
        registry.get_task(config)
    config = tiny_var_vqvae_config()
    config.model.unit_range_pixels = False
    with pytest.raises(ValueError, match="unit_range_pixels"):
        registry.get_task(config)
