"""Converted weights (a converter's flat .npz) become an export that loads, evaluates with
`main.py --mode eval --export_dir`, and names every mismatch when they belong to another model."""

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
