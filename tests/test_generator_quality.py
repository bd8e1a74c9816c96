"""Samples of a briefly trained generator show the requested class's colour far above chance."""

import numpy as np

from configs import maskgit_tiny
from titok_var.data import shapes
from titok_var.tools import export, pretokenize, sample
from titok_var.training import trainer
from tests.helpers import tiny_titok_config


def dominant_colour(image: np.ndarray) -> int:
    """Index of the class colour nearest to the image's most saturated pixels (the shape)."""
    pixels = image.reshape(-1, 3).astype(np.float32) / 255.0
    saturation = pixels.max(axis=1) - pixels.min(axis=1)
    shape_pixels = pixels[saturation >= np.quantile(saturation, 0.8)]
    distances = np.linalg.norm(shape_pixels.mean(axis=0)[None] - shapes._COLOUR_RGB, axis=1)
    return int(np.argmin(distances))


def test_samples_have_the_requested_colour_more_often_than_chance(tmp_path):
    # 300 tokenizer steps sat on the mean-image plateau on some CPUs (colour of reconstructions 0.31);
    # 600 left it on every seed tried (reconstructions 0.63-0.88 right colour).
    tokenizer_config = tiny_titok_config(num_steps=600, checkpoint_every_steps=600, log_every_steps=100)
    tokenizer_config.optimizer.update(learning_rate=3e-3, warmup_steps=5)
    tokenizer_config.data.update(shapes_num_train=512, shapes_num_eval=32)
    trainer.train(tokenizer_config, str(tmp_path / "tokenizer"))
    export_dir = export.export_checkpoint(tokenizer_config, str(tmp_path / "tokenizer"), str(tmp_path / "export"))

    config = maskgit_tiny.get_config()
    config.model.update(seq_len=8, codebook_size=64, hidden_size=64, depth=2, num_heads=4, mlp_dim=128)
    config.tokenizer.update(export_dir=export_dir, image_data=tokenizer_config.data, batch_size=64)
    config.data.update(data_dir=str(tmp_path / "tokens"), train_split=tokenizer_config.data.train_split,
                       eval_split=tokenizer_config.data.eval_split)
    config.train.update(num_steps=300, global_batch_size=32, log_every_steps=100, eval_every_steps=0,
                        checkpoint_every_steps=300, async_checkpointing=False)
    config.eval.update(global_batch_size=16, num_examples=16, grid_images=4)
    config.sample.update(num_per_class=4, global_batch_size=64)
    for split in ("train", "eval"):
        pretokenize.pretokenize(export_dir, tokenizer_config.data, config.data.data_dir, split, batch_size=64)
    trainer.train(config, str(tmp_path / "generator"))

    out_dir = sample.sample_checkpoint(config, str(tmp_path / "generator"))
    samples = np.load(f"{out_dir}/samples_p000.npz")
    predicted = np.array([dominant_colour(image) for image in samples["arr_0"]])
    requested = samples["labels"] % len(shapes.COLOUR_NAMES)
    accuracy = float(np.mean(predicted == requested))
    # Chance is 0.25 (64 samples: 16 ± 3.5 hits); measured 0.94 here (0.91 and 0.97 with model
    # seeds 1 and 2), the real 16 px images 0.98, and the full quickstart generator 0.99.
    assert accuracy >= 0.6, accuracy
