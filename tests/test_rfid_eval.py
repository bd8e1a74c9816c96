"""rFID inside the tokenizer's eval loop (random Inception weights, explicitly)."""

import numpy as np

from titok_var.data import builder
from titok_var.evaluation import fid, inception
from titok_var.tools import convert_inception
from titok_var.training import inference, trainer
from tests.helpers import tiny_titok_config


def test_eval_reports_rfid_equal_to_a_direct_computation(tmp_path):
    weights = convert_inception.save_params(inception.init_params(seed=0), str(tmp_path / "inception.npz"))
    config = tiny_titok_config(num_steps=2, checkpoint_every_steps=2)
    config.eval.update(num_examples=12, global_batch_size=8, inception_weights=weights)
    trainer.train(config, str(tmp_path / "work"))
    metrics = inference.evaluate(config, str(tmp_path / "work"))

    # Independent path: the same 12 eval images and their reconstructions, one Inception call.
    exp = trainer.build_experiment(config, str(tmp_path / "work"))
    task = exp.task
    checkpointer = trainer.open_checkpointer(config, str(tmp_path / "work"))
    with exp.context():
        state = trainer.restore_or_create(exp, checkpointer)
    checkpointer.close()
    source = builder.build_source(config.data, "eval")
    images = np.stack([source.load(i)[0] for i in range(12)]).astype(np.float32) / 255.0
    reconstructions, _ = task.reconstruct(state.ema_params, images)
    as_8bit = lambda x: np.round(np.asarray(x) * 255.0) / 255.0  # noqa: E731
    features = inception.make_feature_fn()
    params = convert_inception.load_inception_params(weights)
    real, _ = features(params, as_8bit(images))
    fake, _ = features(params, as_8bit(reconstructions))
    expected = fid.fid_from_features(np.asarray(real), np.asarray(fake))
    assert np.isfinite(metrics["rfid"]) and metrics["rfid"] > 0
    np.testing.assert_allclose(metrics["rfid"], expected, rtol=1e-3)
