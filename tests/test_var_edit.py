"""VAR zero-shot editing with a tiny, briefly trained VQVAE + VAR (16 px, scales 1, 2, 4): kept
tokens equal the image's at every scale, seeds change only the generated region, an all-keep mask
reproduces the VQVAE reconstruction, out-painting keeps the centre, box and mask file agree, bad
inputs fail clearly, and the command writes its files."""

import jax
import numpy as np
import pytest
from PIL import Image

from titok_var.data import shapes
from titok_var.data.sources import CorruptImageError
from titok_var.data.transforms import eval_transform
from titok_var.generation.edit_masks import per_scale_keep_masks
from titok_var.tasks.var_vqvae import split_token_maps
from titok_var.tools import var_edit
from titok_var.training import trainer

PATCH_NUMS = (1, 2, 4)
TOP_HALF = (0.0, 0.0, 0.5, 1.0)
CENTRE = (0.25, 0.25, 0.75, 0.75)
SAMPLES = 3  # one batch size everywhere: the sampler compiles once


@pytest.fixture(scope="module")
def setup(tiny_var_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("var_edit")
    one_device = jax.devices()[:1]  # compiles faster than the 8 fake devices
    config, workdir = tiny_var_run["config"], tiny_var_run["workdir"]

    exp = trainer.build_experiment(config, workdir, one_device)
    checkpointer = trainer.open_checkpointer(config, workdir)
    with exp.context():
        params = trainer.restore_or_create(exp, checkpointer).params
    checkpointer.close()
    # A non-square photo: the command resizes its shorter side to 16 and centre-crops.
    photo = shapes.render_example(5, 24, np.random.default_rng(0))[:, 2:22]
    image_path = root / "photo.png"
    Image.fromarray(photo).save(image_path)
    image = eval_transform(photo, 16)
    vq_task, vq_params, _ = exp.task._vqvae
    image_tokens = np.asarray(vq_task.encode_tokens(vq_params, image[None]))[0]
    return dict(devices=one_device, config=config, workdir=workdir, root=root, task=exp.task, exp=exp, params=params,
                image_path=str(image_path), image=image, image_tokens=image_tokens)


def _edit(setup, keep_mask, seed, label=None):
    task = setup["task"]
    labels = var_edit.edit_labels(label, task.num_classes, SAMPLES)
    with setup["exp"].context():
        tokens, f_hat = var_edit.edit_tokens(task, setup["params"], setup["image_tokens"], keep_mask,
                                             labels, jax.random.key(seed))
    return split_token_maps(np.asarray(tokens), PATCH_NUMS), f_hat


def test_kept_tokens_equal_the_image_and_seeds_change_only_the_generated_region(setup):
    keep = var_edit.edit_keep_mask(PATCH_NUMS, box=TOP_HALF, inpaint=True)
    scale_masks = per_scale_keep_masks(keep, PATCH_NUMS)
    # The top half is generated at scales 2x2 and 4x4; the 1x1 scale always keeps the image.
    assert scale_masks[0].all() and scale_masks[1].tolist() == [[False, False], [True, True]]
    assert not scale_masks[2][:2].any() and scale_masks[2][2:].all()
    known = split_token_maps(setup["image_tokens"][None], PATCH_NUMS)
    first, _ = _edit(setup, keep, seed=1)
    compiled = var_edit._sample_edits._cache_size()
    second, _ = _edit(setup, keep, seed=2)
    assert var_edit._sample_edits._cache_size() == compiled  # a new seed reuses the program
    for si, kept in enumerate(scale_masks):
        for out in (first, second):
            np.testing.assert_array_equal(out[si][:, kept], np.broadcast_to(known[si][0][kept], out[si][:, kept].shape))
    generated_differ = [not np.array_equal(first[si][:, ~kept], second[si][:, ~kept]) for si, kept in
                        enumerate(scale_masks) if (~kept).any()]
    assert any(generated_differ), "two seeds sampled the same generated region"


def test_a_fully_kept_mask_reproduces_the_vqvae_reconstruction(setup):
    task = setup["task"]
    keep = np.ones((4, 4), bool)
    maps, f_hat = _edit(setup, keep, seed=0, label=3)
    np.testing.assert_array_equal(np.concatenate([m.reshape(SAMPLES, -1) for m in maps], 1),
                                  np.tile(setup["image_tokens"], (SAMPLES, 1)))
    vq_task, vq_params, _ = task._vqvae
    reconstruction, _ = vq_task.reconstruct(vq_params, setup["image"][None])
    edits = task.decode_samples(f_hat)
    np.testing.assert_allclose(edits, np.repeat(np.asarray(reconstruction), SAMPLES, axis=0), atol=1e-5)


def test_outpainting_keeps_the_centre_and_generates_the_border(setup):
    keep = var_edit.edit_keep_mask(PATCH_NUMS, box=CENTRE, inpaint=False)
    expected = np.zeros((4, 4), bool)
    expected[1:3, 1:3] = True
    np.testing.assert_array_equal(keep, expected)
    maps, _ = _edit(setup, keep, seed=0)
    finest = split_token_maps(setup["image_tokens"][None], PATCH_NUMS)[2][0]
    np.testing.assert_array_equal(maps[2][:, 1:3, 1:3], np.broadcast_to(finest[1:3, 1:3], (SAMPLES, 2, 2)))
    assert (maps[2][:, ~expected] != finest[~expected]).any(), "the border was not generated"


@pytest.mark.parametrize("inpaint", [True, False])
def test_box_and_mask_file_give_the_same_keep_mask(setup, inpaint, tmp_path):
    region = np.zeros((16, 16), np.uint8)
    region[:8] = 255  # the top half, white = the region, at image resolution
    Image.fromarray(region).save(tmp_path / "pixels.png")
    Image.fromarray(region[::4, ::4]).convert("1").save(tmp_path / "tokens.png")  # on the token grid
    from_box = var_edit.edit_keep_mask(PATCH_NUMS, box=TOP_HALF, inpaint=inpaint)
    np.testing.assert_array_equal(from_box[:2], not inpaint)
    np.testing.assert_array_equal(from_box[2:], inpaint)
    for name in ("pixels.png", "tokens.png"):
        from_file = var_edit.edit_keep_mask(PATCH_NUMS, mask_path=tmp_path / name, inpaint=inpaint, image_size=16)
        np.testing.assert_array_equal(from_file, from_box)


def test_edit_image_writes_the_outputs(setup, tmp_path):
    region = np.zeros((16, 16), np.uint8)
    region[4:12, 4:12] = 255
    mask_path = tmp_path / "centre.png"
    Image.fromarray(region).save(mask_path)
    out_dir = var_edit.edit_image(setup["config"], setup["workdir"], setup["image_path"], mask_path=str(mask_path),
                                  inpaint=True, class_label=3, num_samples=3, seed=7,
                                  devices=setup["devices"])
    assert out_dir.endswith("edits/photo_inpaint_class3_001")
    keep = ~np.pad(np.ones((2, 2), bool), 1)
    input_png = np.asarray(Image.open(f"{out_dir}/input.png"))
    np.testing.assert_array_equal(input_png, np.round(setup["image"] * 255).astype(np.uint8))
    mask_png = np.asarray(Image.open(f"{out_dir}/mask.png"))
    np.testing.assert_array_equal(mask_png, np.where(np.kron(keep, np.ones((4, 4), bool)), 0, 255))
    assert np.asarray(Image.open(f"{out_dir}/edits.png")).shape == (18 + 2, 5 * 18 + 2, 3)
    with np.load(f"{out_dir}/edits.npz") as saved:
        assert saved["edits"].shape == (3, 16, 16, 3) and saved["edits"].dtype == np.uint8
        np.testing.assert_array_equal(saved["input"], input_png)
        np.testing.assert_array_equal(saved["keep_mask"], keep)
        np.testing.assert_array_equal(saved["labels"], [3, 3, 3])
        np.testing.assert_array_equal(saved["input_tokens"], setup["image_tokens"])
        finest = saved["tokens"][:, -16:].reshape(3, 4, 4)
        np.testing.assert_array_equal(finest[:, keep], np.tile(setup["image_tokens"][-16:].reshape(4, 4)[keep], (3, 1)))


def test_bad_inputs_fail_clearly(setup, tmp_path):
    config, workdir, image = setup["config"], setup["workdir"], setup["image_path"]
    with pytest.raises(FileNotFoundError, match="image to edit .*missing.png"):
        var_edit.edit_image(config, workdir, str(tmp_path / "missing.png"), box=CENTRE)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(CorruptImageError, match="corrupt.png"):
        var_edit.edit_image(config, workdir, str(corrupt), box=CENTRE)
    with pytest.raises(ValueError, match=r"fractions in \[0, 1\]"):
        var_edit.edit_image(config, workdir, image, box=(0.2, 0.2, 1.3, 0.8))
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match=r"small.png' is 10x10; it must match the centre-cropped image \(16x16\) "
                                         r"or the finest token grid \(4x4\)"):
        var_edit.edit_image(config, workdir, image, mask_path=str(tmp_path / "small.png"))
    with pytest.raises(FileNotFoundError, match="edit mask"):
        var_edit.edit_image(config, workdir, image, mask_path=str(tmp_path / "nope.png"))
    with pytest.raises(ValueError, match="exactly one of"):
        var_edit.edit_image(config, workdir, image)
    with pytest.raises(ValueError, match="exactly one of"):
        var_edit.edit_image(config, workdir, image, box=CENTRE, mask_path=str(tmp_path / "small.png"))
    with pytest.raises(ValueError, match="class_label must be a class in .0, 16., or 16 .or omitted. for plain"):
        var_edit.edit_image(config, workdir, image, box=CENTRE, class_label=17)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "double.png")  # twice the image size
    with pytest.raises(ValueError, match="double.png' is 32x32; it must match"):
        var_edit.edit_image(config, workdir, image, mask_path=str(tmp_path / "double.png"))
    with pytest.raises(ValueError, match=r"box \(0.0, 0.0, 0.1, 0.1\) leaves no token of the 4x4 grid to generate"):
        var_edit.edit_image(config, workdir, image, box=(0.0, 0.0, 0.1, 0.1))  # rounds to rows 0:0
    with pytest.raises(ValueError, match="keeps no token"):
        var_edit.edit_image(config, workdir, image, box=(0.0, 0.0, 1.0, 1.0))
    # Settings are checked before any model loads: a work dir without checkpoints is not reached.
    empty = tmp_path / "no_checkpoints"
    with pytest.raises(ValueError, match=r"top_k must be in \[0, 32\]"):
        var_edit.edit_image(config, str(empty), image, box=CENTRE, top_k=33)
    with pytest.raises(FileNotFoundError, match="no checkpoint to edit with"):
        var_edit.edit_image(config, str(empty), image, box=CENTRE)
    assert not empty.exists()  # a failed command leaves nothing behind
    with pytest.raises(ValueError, match="four comma-separated"):
        var_edit.parse_box("0.1,0.2,0.3")
    assert var_edit.parse_box("0.1, 0.2,0.8,0.9") == (0.1, 0.2, 0.8, 0.9)


def test_edits_from_an_export_never_write_into_it_nor_replace_earlier_edits(setup, tmp_path):
    """Released or trained weights as an export: the export is only read; each run gets a new
    folder; the official demo's null label (num_classes) equals omitting the class."""
    from titok_var.tools import export

    export_dir = export.export_checkpoint(setup["config"], setup["workdir"], str(tmp_path / "var_export"),
                                          devices=setup["devices"])
    before = sorted(p.relative_to(export_dir) for p in __import__("pathlib").Path(export_dir).rglob("*"))
    out = tmp_path / "out"
    kwargs = dict(box=TOP_HALF, num_samples=SAMPLES, seed=5, devices=setup["devices"], export_dir=export_dir)
    first = var_edit.edit_image(setup["config"], str(out), setup["image_path"], **kwargs)
    second = var_edit.edit_image(setup["config"], str(out), setup["image_path"], class_label=16, **kwargs)
    assert first.endswith("photo_inpaint_001") and second.endswith("photo_inpaint_002")  # 16 = the null class
    third = var_edit.edit_image(setup["config"], str(out), setup["image_path"], **kwargs)
    assert third.endswith("photo_inpaint_003")
    after = sorted(p.relative_to(export_dir) for p in __import__("pathlib").Path(export_dir).rglob("*"))
    assert after == before
    with np.load(f"{first}/edits.npz") as a, np.load(f"{second}/edits.npz") as b, np.load(f"{third}/edits.npz") as c:
        np.testing.assert_array_equal(a["tokens"], b["tokens"])  # null label num_classes == omitted
        np.testing.assert_array_equal(a["tokens"], c["tokens"])  # same seed, same edit, new folder
        # The export's parameters are the checkpoint's: the same edit as from the work dir.
        maps, _ = _edit(setup, var_edit.edit_keep_mask(PATCH_NUMS, box=TOP_HALF, inpaint=True), seed=5)
        np.testing.assert_array_equal(a["tokens"], np.concatenate([m.reshape(SAMPLES, -1) for m in maps], 1))
    settings = __import__("json").loads(open(f"{first}/settings.json").read())
    assert settings["seed"] == 5 and settings["box"] == list(TOP_HALF) and settings["weights"] == f"export {export_dir}"
