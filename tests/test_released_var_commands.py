"""README "Use released weights", VAR-d16 + VQVAE block, run command by command on random weights
in the official layout (see tests/released_commands.py): samples of an imported VAR have the right
shape and range, zero-shot in-painting from the export keeps the input image's tokens at every
scale outside the box, nothing is written into the exports, and the generator eval gives a finite gFID."""

import json
import os

import numpy as np
from PIL import Image

from tests import released_commands as rc
from titok_var.data import shapes
from titok_var.generation.edit_masks import box_keep_mask, per_scale_keep_masks
from titok_var.tasks.var_vqvae import split_token_maps


def test_var_release_through_every_command(tmp_path):
    cwd = str(tmp_path)
    rc.write_released_file("var_vqvae", os.path.join(cwd, "vae_ch160v4096z32.pth"), seed=4)
    rc.write_released_file("var_d16", os.path.join(cwd, "var_d16.pth"), seed=5)
    rc.write_inception_file(os.path.join(cwd, "pt_inception-2015-12-05-6726825d.pth"))
    rc.run("python -m titok_var.tools.convert --arch inception_fid --input pt_inception-2015-12-05-6726825d.pth "
           "--output weights", cwd)
    # A non-square photo: the command resizes its shorter side and centre-crops it.
    Image.fromarray(shapes.render_example(5, 48, np.random.default_rng(0))[:, 4:44]).save(tmp_path / "photo.jpg")
    for command in rc.readme_commands("released-var"):
        if "--mode eval" in command:
            rc.write_reference_statistics(os.path.join(cwd, "VIRTUAL_imagenet256_labeled.npz"),
                                          os.path.join(cwd, "weights", "inception_fid.npz"))
        rc.run(command, cwd)

    for name in ("var_vqvae", "var_d16"):
        assert set(os.listdir(tmp_path / "exports" / name)) == {"checksums.json", "config.json", "export.json", "params"}
        assert json.loads((tmp_path / "exports" / name / "config.json").read_text())["model"]["dtype"] == "float32"

    with np.load(tmp_path / "runs/var_d16/samples/step_000000000/samples_p000.npz") as samples:
        images, labels = samples["arr_0"], samples["labels"]
    assert images.shape == (32, 32, 32, 3) and images.dtype == np.uint8 and images.std() > 1.0
    np.testing.assert_array_equal(labels, np.repeat(np.arange(16), 2))

    # In-painting the top half: every scale keeps the input's tokens where its mask keeps them.
    edit_dir = tmp_path / "runs/var_d16/edits/photo_inpaint_001"
    patch_nums = (1, 2, 4, 8)
    with np.load(edit_dir / "edits.npz") as edits:
        tokens, input_tokens, keep = edits["tokens"], edits["input_tokens"], edits["keep_mask"]
        assert edits["edits"].shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(keep, box_keep_mask(patch_nums, (0.0, 0.0, 0.5, 1.0), inpainting=True))
    edited = split_token_maps(tokens, patch_nums)
    original = split_token_maps(input_tokens[None], patch_nums)
    for si, kept in enumerate(per_scale_keep_masks(keep, patch_nums)):
        assert kept.any()
        np.testing.assert_array_equal(edited[si][:, kept], np.broadcast_to(original[si][0][kept], edited[si][:, kept].shape))
    assert json.loads((edit_dir / "settings.json").read_text())["weights"].startswith("export ")

    generation = json.loads((tmp_path / "runs/var_d16/eval/step_000000000/generation_metrics.json").read_text())
    assert np.isfinite(generation["gfid"]) and generation["num_samples"] == 32
