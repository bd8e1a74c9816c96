"""MaskGIT task end to end: tokens from an exported tokenizer, training, eval, --mode sample."""

import os

import jax
import numpy as np
import pytest

from configs import maskgit_tiny
from titok_var.tools import export, pretokenize, sample
from titok_var.training import trainer
from tests.helpers import tiny_titok_config


@pytest.fixture(scope="module")
def generator_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("generator")
    tokenizer_config = tiny_titok_config(num_steps=2, checkpoint_every_steps=2)
    tokenizer_config.data.update(shapes_num_train=64, shapes_num_eval=32)
    trainer.train(tokenizer_config, str(root / "tokenizer"))
    export_dir = export.export_checkpoint(tokenizer_config, str(root / "tokenizer"), str(root / "export"))

    config = maskgit_tiny.get_config()
    config.model.update(seq_len=8, codebook_size=64, hidden_size=32, depth=1, num_heads=2, mlp_dim=64)
    config.tokenizer.update(export_dir=export_dir, image_data=tokenizer_config.data, batch_size=16)
    config.data.update(data_dir=str(root / "tokens"), train_split=tokenizer_config.data.train_split,
                       eval_split=tokenizer_config.data.eval_split)
    config.train.update(num_steps=40, global_batch_size=16, log_every_steps=10, eval_every_steps=40,
                        checkpoint_every_steps=40, async_checkpointing=False)
    config.eval.update(global_batch_size=16, num_examples=32, grid_images=4)
    config.sample.update(num_per_class=2, global_batch_size=16, grid_per_class=2)
    for split in ("train", "eval"):
        pretokenize.pretokenize(export_dir, tokenizer_config.data, config.data.data_dir, split, batch_size=16)
    return config, root


def test_generator_trains_evaluates_and_samples_reproducibly(generator_config):
    config, root = generator_config
    workdir = str(root / "work")
    result = trainer.train(config, workdir)
    early = np.mean([result.losses[s] for s in range(1, 6)])
    late = np.mean([result.losses[s] for s in range(36, 41)])
    assert late < early, (early, late)
    assert {"masked_token_loss", "masked_token_accuracy"} <= set(result.eval_metrics)
    assert os.path.exists(os.path.join(workdir, "eval", "step_000000040", "reconstructions.png"))

    out_dir = sample.sample_checkpoint(config, workdir)
    first = dict(np.load(os.path.join(out_dir, "samples_p000.npz")))
    assert first["arr_0"].shape == (16 * 2, 16, 16, 3) and first["arr_0"].dtype == np.uint8
    np.testing.assert_array_equal(first["labels"], np.repeat(np.arange(16), 2))
    assert os.path.exists(os.path.join(out_dir, "grid.png"))
    again = dict(np.load(os.path.join(sample.sample_checkpoint(config, workdir), "samples_p000.npz")))
    np.testing.assert_array_equal(first["arr_0"], again["arr_0"])
    config.sample.seed += 1
    other = dict(np.load(os.path.join(sample.sample_checkpoint(config, workdir), "samples_p000.npz")))
    assert not np.array_equal(first["arr_0"], other["arr_0"])


def test_tokens_of_another_length_are_a_clear_error(generator_config, tmp_path):
    config, _ = generator_config
    config = config.copy_and_resolve_references()
    config.model.seq_len = 12
    config.train.num_steps = 1
    with pytest.raises(ValueError, match="token sequences of length 8 do not fit a generator of seq_len 12"):
        trainer.train(config, str(tmp_path))


def test_sampling_a_tokenizer_checkpoint_is_refused(tmp_path):
    config = tiny_titok_config(num_steps=1, checkpoint_every_steps=1)
    trainer.train(config, str(tmp_path))
    with pytest.raises(ValueError, match="'titok' is not a generator"):
        sample.sample_checkpoint(config, str(tmp_path))


def test_sharded_generator_training_matches_one_device(generator_config, tmp_path):
    config, _ = generator_config
    config = config.copy_and_resolve_references()
    config.train.update(num_steps=3, eval_every_steps=0, checkpoint_every_steps=3)
    config.model.update(dropout_rate=0.1, attention_dropout_rate=0.1)  # dropout keys must agree too
    config.mesh.update(data=2, fsdp=4)
    sharded = trainer.train(config, str(tmp_path / "sharded")).losses
    config.mesh.update(data=1, fsdp=1)
    single = trainer.train(config, str(tmp_path / "single"), devices=jax.devices()[:1]).losses
    np.testing.assert_allclose([sharded[s] for s in (1, 2, 3)], [single[s] for s in (1, 2, 3)], rtol=2e-5)


def test_samples_become_uint8_by_the_official_truncation_unless_rounding_is_asked():
    # Official samplers: (clamp(x, 0, 1) * 255).to(uint8) (1d-tokenizer sample_imagenet_*.py) and
    # .mul(255) then astype(uint8) (VAR), both truncating; "round" is the unbiased alternative.
    values = np.asarray([-0.5, 0.0, 0.5 / 255, 0.999 / 255, 1.5 / 255, 254.5 / 255, 1.0, 2.0], np.float32)
    np.testing.assert_array_equal(sample.to_uint8(values), [0, 0, 0, 0, 1, 254, 255, 255])
    np.testing.assert_array_equal(sample.to_uint8(values, "round"), [0, 0, 0, 1, 2, 254, 255, 255])
    assert maskgit_tiny.get_config().sample.to_uint8 == "truncate"
    with pytest.raises(ValueError, match="unknown uint8 conversion 'floor'.*config.sample.to_uint8"):
        sample.to_uint8(values, "floor")
