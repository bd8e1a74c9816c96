"""README "Use released weights", TiTok-L-32 + MaskGIT block, run command by command on random
weights in the official layout (see tests/released_commands.py): the released-layout TiTok (proxy
head + MaskGIT-VQGAN pixel decoder) reconstructs images, MaskGIT samples over it decode to images
of the right shape and range, and the generator eval reports a finite gFID. Also: TiTok stage 1
starts from converted MaskGIT-VQGAN weights."""

import json
import os

import jax
import numpy as np
from PIL import Image

from tests import released_commands as rc
from titok_var.tools import convert


def test_titok_and_maskgit_release_through_every_command(tmp_path):
    cwd = str(tmp_path)
    rc.write_released_file("titok_l32", os.path.join(cwd, "tokenizer_titok_l32.bin"), seed=1)
    rc.write_released_file("maskgit_l32", os.path.join(cwd, "generator_titok_l32.bin"), seed=2)
    rc.write_inception_file(os.path.join(cwd, "pt_inception-2015-12-05-6726825d.pth"))
    commands = rc.readme_commands("released-titok")
    outputs = []
    for command in commands:
        if "--mode eval" in command and "maskgit" in command:  # needs the reference batch
            rc.write_reference_statistics(os.path.join(cwd, "VIRTUAL_imagenet256_labeled.npz"),
                                          os.path.join(cwd, "weights", "inception_fid.npz"))
        outputs.append(rc.run(command, cwd))

    records = convert.read_records(os.path.join(cwd, "weights"))
    assert sorted(records) == ["inception_fid.npz", "maskgit_l32.npz", "titok_l32.npz"]
    meta = json.loads((tmp_path / "exports/titok_l32/export.json").read_text())
    exported_config = json.loads((tmp_path / "exports/titok_l32/config.json").read_text())
    assert meta["compute_dtype"] == "float32" and exported_config["model"]["dtype"] == "float32"

    # The tokenizer decodes to pictures: inputs above reconstructions, 8 images of 32 px.
    eval_dir = tmp_path / "runs/titok_l32/eval/step_000000000"
    grid = np.asarray(Image.open(eval_dir / "reconstructions.png"))
    assert grid.ndim == 3 and grid.shape[2] == 3 and grid.shape[0] == 2 * (32 + 2) + 2
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert np.isfinite(metrics["psnr"]) and metrics["num_examples"] == 32
    assert set(os.listdir(tmp_path / "exports/titok_l32")) == {"checksums.json", "config.json", "export.json", "params"}

    with np.load(next((tmp_path / "tokens/titok_l32").glob("validation-*.npz"))) as shard:
        assert shard["tokens"].shape[1] == 32 and shard["tokens"].max() < 4096

    # MaskGIT samples are images (B, 32, 32, 3) uint8, class-balanced, not the proxy-code logits.
    with np.load(tmp_path / "runs/maskgit_l32/samples/step_000000000/samples_p000.npz") as samples:
        images, labels = samples["arr_0"], samples["labels"]
    assert images.shape == (32, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, np.repeat(np.arange(16), 2))
    assert images.std() > 1.0  # pictures, not a constant
    generation = json.loads((tmp_path / "runs/maskgit_l32/eval/step_000000000/generation_metrics.json").read_text())
    assert np.isfinite(generation["gfid"]) and generation["num_samples"] == 32
    assert generation["export_dir"].endswith("exports/maskgit_l32")


def test_titok_stage1_starts_from_converted_maskgit_vqgan_weights(tmp_path):
    from titok_var.tools import convert_maskgit_vqgan
    from titok_var.training import trainer

    cwd = str(tmp_path)
    official = rc.write_released_file("maskgit_vqgan", os.path.join(cwd, "maskgit-vqgan-imagenet-f16-256.bin"), seed=3)
    rc.run("python -m titok_var.tools.convert --arch maskgit_vqgan --input maskgit-vqgan-imagenet-f16-256.bin "
           "--output weights", cwd)
    converted = os.path.join(cwd, "weights", "maskgit_vqgan.npz")
    config = convert.load_config_file(os.path.join(rc.REPO, "configs/titok_l32.py:stage1,runlocal"))
    config.proxy.update(vqgan_weights=converted, random_init=False)
    config.train.update(num_steps=1, checkpoint_every_steps=1, async_checkpointing=False)
    result = trainer.train(config, os.path.join(cwd, "stage1"), devices=jax.devices()[:1])
    assert np.isfinite(result.losses[1])
    frozen = jax.device_get(result.state.task_state)
    from titok_var.models.maskgit_vqgan import PIXEL_DECODER_PRESETS, MaskGitVQGAN

    expected = convert_maskgit_vqgan.load_params(converted, MaskGitVQGAN(**PIXEL_DECODER_PRESETS[config.proxy.preset]))
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(frozen)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len(jax.tree.leaves(frozen)) == len(official)  # every official tensor is a frozen VQGAN parameter
