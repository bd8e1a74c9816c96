"""Converted weights (a converter's flat .npz) become an export (`export.import_converted`, what
`main.py --mode import` calls) that loads bit-exactly, evaluates through `inference.evaluate` with
`export_dir` (what `main.py --mode eval --export_dir` calls; the subprocess runs are in
test_export_and_main.py and test_released_*_commands.py), and names every mismatch when the
weights belong to another model."""

import json

import jax
import numpy as np
import pytest

from titok_var.tools import export
from titok_var.tools.convert_var import save_params
from titok_var.training import inference, trainer
from tests.helpers import tiny_titok_config, tiny_var_vqvae_config


def test_imported_weights_load_and_evaluate(tmp_path):
    config = tiny_var_vqvae_config(num_steps=2, checkpoint_every_steps=2)
    result = trainer.train(config, str(tmp_path / "work"))
    params = jax.device_get(result.state.params)
    converted = save_params(params, str(tmp_path / "converted.npz"))  # the converters' output format
    export_dir = export.import_converted(config, converted, str(tmp_path / "imported"))
    _, loaded, loaded_config = export.load_exported(export_dir)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(jax.device_get(loaded))):
        np.testing.assert_array_equal(a, b)
    assert loaded_config.model_name == "var_vqvae"
    metrics = inference.evaluate(config, str(tmp_path / "eval_work"), export_dir=export_dir)
    saved = json.loads((tmp_path / "eval_work" / "eval" / "step_000000000" / "metrics.json").read_text())
    assert saved["psnr"] == pytest.approx(metrics["psnr"]) and metrics["num_examples"] == 32

    with pytest.raises(ValueError, match="missing"):
        export.import_converted(tiny_titok_config(), converted, str(tmp_path / "wrong"))
    with pytest.raises(FileNotFoundError, match="titok_var.tools.convert"):
        export.import_converted(config, str(tmp_path / "absent.npz"), str(tmp_path / "none"))


def test_training_starts_from_an_export_and_refuses_one_of_another_family(tmp_path):
    """train.init_from_export (fine-tuning released or exported weights): step 0 holds the export's
    parameters (learning rate 0 keeps them through one step); a VQVAE export for a TiTok run fails
    naming both."""
    config = tiny_titok_config(num_steps=2, checkpoint_every_steps=2)
    first = trainer.train(config, str(tmp_path / "first"))
    export_dir = export.export_checkpoint(config, str(tmp_path / "first"), str(tmp_path / "export"))
    exported = jax.device_get(first.state.ema_params)

    fine_tune = tiny_titok_config(num_steps=1, checkpoint_every_steps=1)
    fine_tune.seed = 7  # a different init, overwritten by the export
    fine_tune.optimizer.update(learning_rate=0.0, end_learning_rate=0.0)
    fine_tune.train.init_from_export = export_dir
    result = trainer.train(fine_tune, str(tmp_path / "fine_tune"))
    for a, b in zip(jax.tree.leaves(exported), jax.tree.leaves(jax.device_get(result.state.params))):
        np.testing.assert_array_equal(a, b)

    vqvae_config = tiny_var_vqvae_config(num_steps=1, checkpoint_every_steps=1)
    vqvae_export = export.import_converted(
        vqvae_config, save_params(jax.device_get(_vqvae_params(vqvae_config)), str(tmp_path / "vq.npz")),
        str(tmp_path / "vq_export"))
    wrong = tiny_titok_config(num_steps=1, checkpoint_every_steps=1)
    wrong.train.init_from_export = vqvae_export
    with pytest.raises(ValueError, match="holds a 'var_vqvae' model, this config trains a 'titok'"):
        trainer.train(wrong, str(tmp_path / "wrong"))


def _vqvae_params(config):
    from titok_var import registry
    from titok_var.training import state_init

    task = registry.get_task(config)
    return jax.jit(lambda key: state_init.unboxed_params(task, key))(jax.random.key(0))
