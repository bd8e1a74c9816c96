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

    # The same probe from an export of that checkpoint (EMA parameters, as the checkpoint's eval)
    # gives the same numbers; the outputs go to the other work dir, the export is only read.
    from titok_var.tools import export

    export_dir = export.export_checkpoint(config, str(tmp_path), str(tmp_path / "export"))
    from_export = linear_probe_run.probe_checkpoint(config, str(tmp_path / "probe_work"), export_dir=export_dir)
    assert from_export == metrics
    assert (tmp_path / "probe_work" / "probe" / "step_000000002" / "metrics.json").exists()
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["checksums.json", "config.json", "export.json",
                                                                        "params"]


def test_probe_rejects_a_generator_config(tmp_path):
    from configs import maskgit_tiny

    with pytest.raises(ValueError, match="TiTok tokenizer"):
        linear_probe_run.probe_checkpoint(maskgit_tiny.get_config(), str(tmp_path))
