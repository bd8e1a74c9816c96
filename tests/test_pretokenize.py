"""Pre-tokenization into shards: tokens equal a direct encode, flips, resume, readers, bad input."""

import os

import numpy as np
import pytest

from titok_var.data import builder, token_shards
from titok_var.data.sources import DatasetNotFoundError
from titok_var.tools import export, pretokenize
from titok_var.training import trainer
from tests.helpers import tiny_titok_config


@pytest.fixture(scope="module")
def tokenizer_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizer")
    config = tiny_titok_config(num_steps=2, checkpoint_every_steps=2)
    trainer.train(config, str(root / "work"))
    return export.export_checkpoint(config, str(root / "work"), str(root / "export")), config


def image_data(config, num_train=40):
    data = config.data.copy_and_resolve_references()
    data.shapes_num_train = num_train
    return data


def test_shards_hold_the_tokens_of_a_direct_encode_with_flips(tokenizer_export, tmp_path):
    export_dir, config = tokenizer_export
    data = image_data(config)
    paths = pretokenize.pretokenize(export_dir, data, str(tmp_path), "train", batch_size=8, shard_size=16)
    assert [p.name for p in paths] == [f"train-p000-s{i:05d}.npz" for i in range(3)]
    dataset = token_shards.TokenDataset(tmp_path, "train", codebook_size=config.model.codebook_size)
    assert len(dataset) == 2 * 40 and dataset.sequence_length == config.model.num_latent_tokens

    task, params, _ = export.load_exported(export_dir)
    source = builder.build_source(data, "train")
    images = np.stack([source.load(i)[0] for i in range(16)]).astype(np.float32) / 255.0
    _, aux = task.reconstruct(params, images)
    _, flipped_aux = task.reconstruct(params, np.ascontiguousarray(images[:, :, ::-1]))
    with np.load(paths[0]) as shard:
        np.testing.assert_array_equal(shard["tokens"][:16], aux["indices"])
        np.testing.assert_array_equal(shard["tokens"][16:], flipped_aux["indices"])
        np.testing.assert_array_equal(shard["labels"][:16], np.arange(16) % 16)
        np.testing.assert_array_equal(shard["source_indices"][16:], np.arange(16))
        np.testing.assert_array_equal(shard["flipped"], np.arange(32) >= 16)


def test_restart_skips_finished_shards_and_redoes_missing_ones(tokenizer_export, tmp_path):
    export_dir, config = tokenizer_export
    data = image_data(config)
    paths = pretokenize.pretokenize(export_dir, data, str(tmp_path), "train", batch_size=8, shard_size=16)
    before = {p: (os.stat(p).st_mtime_ns, np.load(p)["tokens"]) for p in paths}
    os.remove(paths[1])
    pretokenize.pretokenize(export_dir, data, str(tmp_path), "train", batch_size=8, shard_size=16)
    assert os.stat(paths[0]).st_mtime_ns == before[paths[0]][0]
    np.testing.assert_array_equal(np.load(paths[1])["tokens"], before[paths[1]][1])
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_each_process_writes_only_its_own_shards(tokenizer_export, tmp_path):
    export_dir, config = tokenizer_export
    data = image_data(config)
    mine = pretokenize.pretokenize(export_dir, data, str(tmp_path), "train", batch_size=8, shard_size=16,
                                   flips=False, process_index=1, process_count=2)
    assert [p.name for p in mine] == ["train-p001-s00001.npz"]
    assert sorted(os.listdir(tmp_path)) == ["train-p001-s00001.npz"]


def test_token_batches_are_deterministic_and_eval_is_padded(tmp_path):
    tokens = np.arange(50 * 4).reshape(50, 4) % 7
    token_shards.write_shard(token_shards.shard_path(tmp_path, "train", 0, 0), tokens, np.arange(50) % 5,
                             np.arange(50), np.zeros(50, bool))
    dataset = token_shards.TokenDataset(tmp_path, "train")
    first = [b["tokens"] for _, b in zip(range(4), token_shards.train_batches(
        dataset, global_batch_size=8, seed=3, start_step=0))]
    resumed = next(token_shards.train_batches(dataset, global_batch_size=8, seed=3, start_step=2))
    np.testing.assert_array_equal(first[2], resumed["tokens"])
    host1 = next(token_shards.train_batches(dataset, global_batch_size=8, seed=3, start_step=0,
                                            process_index=1, process_count=2))
    np.testing.assert_array_equal(first[0][4:], host1["tokens"])
    eval_batches = list(token_shards.eval_batches(dataset, global_batch_size=16))
    assert len(eval_batches) == 4 and eval_batches[-1]["mask"].sum() == 2
    np.testing.assert_array_equal(np.concatenate([b["tokens"][b["mask"]] for b in eval_batches]), tokens)


def test_bad_token_data_gives_clear_errors(tokenizer_export, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        token_shards.TokenDataset(tmp_path / "missing", "train")
    with pytest.raises(DatasetNotFoundError, match="no 'train' token shards"):
        token_shards.TokenDataset(tmp_path, "train")
    token_shards.write_shard(token_shards.shard_path(tmp_path, "train", 0, 0), np.full((2, 4), 99),
                             np.zeros(2), np.arange(2), np.zeros(2, bool))
    with pytest.raises(ValueError, match="beyond the codebook size 64: they come from another tokenizer"):
        token_shards.TokenDataset(tmp_path, "train", codebook_size=64)
    (tmp_path / "train-p000-s00001.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="s00001.npz is unreadable"):
        token_shards.TokenDataset(tmp_path, "train")
    export_dir, config = tokenizer_export
    data = image_data(config)
    data.image_size = 32
    with pytest.raises(ValueError, match="takes 16 px images but the image data is 32 px"):
        pretokenize.pretokenize(export_dir, data, str(tmp_path / "out"), "train", batch_size=8)
