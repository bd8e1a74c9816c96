"""`--mode probe`: features of a TiTok checkpoint's frozen encoder, a trained probe, metrics JSON."""

import json

import ml_collections
import pytest

from titok_var.tools import linear_probe_run
from titok_var.training import trainer
from tests.helpers import tiny_titok_config


def test_probe_of_a_checkpoint_writes_metrics(tmp_path):
    config = tiny_titok_config(num_steps=2, checkpoint_every_steps=2)
    config.data.update(shapes_num_train=64, shapes_num_eval=32)
    trainer.train(config, str(tmp_path))
    config.probe = ml_collections.ConfigDict(dict(batch_size=16, epochs=2, warmup_epochs=1, base_lr=10.0,
                                                  eval_batch_size=16))
    metrics = linear_probe_run.probe_checkpoint(config, str(tmp_path))
    assert metrics["probe_num_examples"] == 32 and 0.0 <= metrics["probe_top1"] <= metrics["probe_top5"] <= 1.0
    saved = json.loads((tmp_path / "probe" / "step_000000002" / "metrics.json").read_text())
    assert saved["probe_top1"] == metrics["probe_top1"] and len(saved["history"]) == 2


def test_probe_rejects_a_generator_config(tmp_path):
    from configs import maskgit_tiny

    with pytest.raises(ValueError, match="TiTok tokenizer"):
        linear_probe_run.probe_checkpoint(maskgit_tiny.get_config(), str(tmp_path))
