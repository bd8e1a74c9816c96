"""Tests for titok_var.data: sources, transforms, the batching pipeline and the config builder."""

import collections
import gc
import io
import itertools
import pathlib
import subprocess
import sys
import threading
import time

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from titok_var.data import builder, pipeline, shapes, transforms
from titok_var.data.image_folder import ImageFolderSource
from titok_var.data.sources import (
    CorruptImageError,
    DatasetNotFoundError,
    ImageSource,
    UnknownDatasetError,
    decode_image_bytes,
)
from titok_var.data.tfds_source import TfdsSource


def _take(iterator, count: int) -> list[dict[str, np.ndarray]]:
    return list(itertools.islice(iterator, count))


def _assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for batch_a, batch_b in zip(a, b):
        assert batch_a.keys() == batch_b.keys()
        for key in batch_a:
            np.testing.assert_array_equal(batch_a[key], batch_b[key], err_msg=key)


def _png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _pattern(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- shapes


def test_shapes_is_deterministic_per_index():
    source = shapes.ShapesSource(num_examples=50, image_size=32, split="train", seed=7)
    again = shapes.ShapesSource(num_examples=50, image_size=32, split="train", seed=7)
    image, label = source.load(17)
    assert image.dtype == np.uint8 and image.shape == (32, 32, 3)
    assert label == 17 % 16
    # Same index, fresh instance, after other loads: identical pixels.
    again.load(3)
    np.testing.assert_array_equal(again.load(17)[0], image)
    assert not np.array_equal(source.load(18)[0], image)
    assert isinstance(source, ImageSource)


def test_shapes_splits_and_seeds_differ():
    train = shapes.ShapesSource(20, 16, split="train", seed=0)
    evaluation = shapes.ShapesSource(20, 16, split="eval", seed=0)
    other_seed = shapes.ShapesSource(20, 16, split="train", seed=1)
    for index in range(20):
        assert not np.array_equal(train.load(index)[0], evaluation.load(index)[0])
        assert not np.array_equal(train.load(index)[0], other_seed.load(index)[0])
        assert train.load(index)[1] == evaluation.load(index)[1]


def test_shapes_labels_balanced_and_named():
    source = shapes.ShapesSource(num_examples=160, image_size=16)
    counts = collections.Counter(source.load(index)[1] for index in range(len(source)))
    assert source.num_classes == 16
    assert counts == {label: 10 for label in range(16)}
    assert shapes.class_name(0) == "red circle"
    assert shapes.class_name(15) == "yellow cross"
    assert len({shapes.class_name(label) for label in range(16)}) == 16
    with pytest.raises(ValueError, match="16"):
        shapes.class_name(16)


def _shape_pixels(image: np.ndarray) -> np.ndarray:
    """Saturated pixels: the shape (backgrounds are muted)."""
    pixels = image.astype(np.float32) / 255.0
    return pixels.max(axis=-1) - pixels.min(axis=-1) > 0.35


def test_shapes_classes_are_distinguishable():
    source = shapes.ShapesSource(num_examples=16 * 12, image_size=32, seed=3)
    colour_means = collections.defaultdict(list)
    fill_ratios = collections.defaultdict(list)
    for index in range(len(source)):
        image, label = source.load(index)
        mask = _shape_pixels(image)
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        box_area = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
        fill_ratios[shapes.class_shape(label)].append(mask.sum() / box_area)
        colour_means[shapes.class_colour(label)].append(image[mask].mean(axis=0) / 255.0)
    red, green, blue, yellow = (np.mean(colour_means[name], axis=0) for name in shapes.COLOUR_NAMES)
    assert red[0] > 0.7 and red[1] < 0.3 and red[2] < 0.3
    assert green[1] > 0.6 and green[0] < 0.3 and green[2] < 0.3
    assert blue[2] > 0.7 and blue[0] < 0.3
    assert yellow[0] > 0.7 and yellow[1] > 0.7 and yellow[2] < 0.3
    # Area / bounding-box area: square 1, circle pi/4, triangle 1/2, cross ~0.36.
    fill = {name: float(np.mean(values)) for name, values in fill_ratios.items()}
    assert fill["square"] > 0.95
    assert 0.7 < fill["circle"] < 0.87
    assert 0.45 < fill["triangle"] < 0.6
    assert 0.25 < fill["cross"] < 0.45
    # Every class's mean image differs from every other class's.
    class_means = np.stack(
        [np.mean([source.load(i)[0] for i in range(label, len(source), 16)], axis=0) for label in range(16)]
    )
    distances = np.abs(class_means[:, None] - class_means[None]).mean(axis=(2, 3, 4))
    assert np.all(distances[~np.eye(16, dtype=bool)] > 1.0)


def test_shapes_any_resolution_and_fast():
    for size in (8, 16, 48):
        image, _ = shapes.ShapesSource(4, size).load(1)
        assert image.shape == (size, size, 3)
    source = shapes.ShapesSource(500, 32)
    start = time.perf_counter()
    for index in range(len(source)):
        source.load(index)
    assert (time.perf_counter() - start) / len(source) < 1e-3


# ----------------------------------------------------------------------------- decoding and image folders


def test_decode_image_bytes_converts_modes_to_rgb():
    rgb = _pattern(6, 5, seed=0)
    np.testing.assert_array_equal(decode_image_bytes(_png_bytes(rgb), "rgb"), rgb)
    grey = decode_image_bytes(_png_bytes(rgb, mode="L"), "grey")
    assert grey.shape == (6, 5, 3) and grey.dtype == np.uint8
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
    rgba = np.concatenate([rgb, np.full((6, 5, 1), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(decode_image_bytes(_png_bytes(rgba), "rgba"), rgb)
    # Transparency: dropped as the official loaders' convert("RGB") (stored colours), or composited on white.
    transparent = np.zeros((2, 2, 4), np.uint8)
    transparent[..., 0] = 90
    np.testing.assert_array_equal(decode_image_bytes(_png_bytes(transparent), "clear"), transparent[..., :3])
    np.testing.assert_array_equal(decode_image_bytes(_png_bytes(transparent), "clear", alpha="white"),
                                  np.full((2, 2, 3), 255))
    with pytest.raises(ValueError, match="unknown alpha handling 'black'"):
        decode_image_bytes(_png_bytes(transparent), "clear", alpha="black")
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, format="JPEG")
    assert decode_image_bytes(cmyk.getvalue(), "cmyk").shape == (6, 5, 3)


@pytest.mark.parametrize(
    "data",
    [b"", b"definitely not an image", _png_bytes(_pattern(32, 32, seed=1))[:200]],
    ids=["empty", "garbage", "truncated"],
)
def test_decode_image_bytes_rejects_corrupt_data(data: bytes):
    with pytest.raises(CorruptImageError, match="thing-42"):
        decode_image_bytes(data, "thing-42")


def _write_image_folder(root: pathlib.Path, corrupt: bool = True) -> pathlib.Path:
    """Two classes, three valid images, plus (optionally) a garbage and a truncated file."""
    (root / "b_dogs").mkdir(parents=True)
    (root / "a_cats" / "nested").mkdir(parents=True)
    (root / "a_cats" / "0.png").write_bytes(_png_bytes(_pattern(20, 30, seed=0)))
    (root / "a_cats" / "nested" / "1.PNG").write_bytes(_png_bytes(_pattern(24, 24, seed=1)))
    (root / "a_cats" / "notes.txt").write_text("not an image")
    (root / "b_dogs" / "2.png").write_bytes(_png_bytes(_pattern(18, 16, seed=2)))
    if corrupt:
        (root / "a_cats" / "garbage.jpg").write_bytes(b"\xff\xd8 this is not a jpeg at all")
        (root / "b_dogs" / "truncated.png").write_bytes(_png_bytes(_pattern(32, 32, seed=3))[:150])
    return root


def test_image_folder_lists_classes_and_files(tmp_path: pathlib.Path):
    source = ImageFolderSource(_write_image_folder(tmp_path / "data", corrupt=False))
    assert source.class_names == ["a_cats", "b_dogs"]
    assert source.num_classes == 2
    assert len(source) == 3
    assert [path.name for path in source.files] == ["0.png", "1.PNG", "2.png"]
    image, label = source.load(1)
    np.testing.assert_array_equal(image, _pattern(24, 24, seed=1))
    assert label == 0 and source.load(2)[1] == 1


def test_image_folder_corrupt_file_is_named(tmp_path: pathlib.Path):
    source = ImageFolderSource(_write_image_folder(tmp_path / "data"))
    assert len(source) == 5
    garbage_index = [path.name for path in source.files].index("garbage.jpg")
    with pytest.raises(CorruptImageError, match="garbage.jpg"):
        source.load(garbage_index)


def test_image_folder_missing_or_empty_root(tmp_path: pathlib.Path):
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(DatasetNotFoundError, match=str(missing)):
        ImageFolderSource(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no class sub-folders") as error:
        ImageFolderSource(empty)
    assert str(empty) in str(error.value)
    (empty / "class0").mkdir()
    (empty / "class0" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files") as error:
        ImageFolderSource(empty)
    assert str(empty) in str(error.value)


# ----------------------------------------------------------------------------- transforms


def test_resize_shorter_side_shapes():
    assert transforms.resize_shorter_side(_pattern(40, 60, 0), 32).shape == (32, 48, 3)
    assert transforms.resize_shorter_side(_pattern(60, 40, 0), 32).shape == (48, 32, 3)
    # Smaller images are upscaled.
    assert transforms.resize_shorter_side(_pattern(10, 20, 0), 16).shape == (16, 32, 3)
    same = _pattern(16, 20, 0)
    assert transforms.resize_shorter_side(same, 16) is same
    flat = np.full((50, 70, 3), 77, np.uint8)
    np.testing.assert_array_equal(transforms.resize_shorter_side(flat, 20), 77)


# torchvision (transforms/functional.py): Resize(n) of a PIL image gives the shorter side n and the
# longer side int(n * long / short); CenterCrop(S) takes top = int(round((H - S) / 2.0)) and the same
# for left (Python's round: half to even). Expected (height, width, top, left) written out from those.
TORCHVISION_GEOMETRY = [
    # (height, width, shorter side, crop) -> (resized height, resized width, top, left)
    ((375, 500, 256, 256), (256, 341, 0, 42)),   # 341.33 -> 341; (341 - 256) / 2 = 42.5 -> 42
    ((375, 500, 512, 512), (512, 682, 0, 85)),   # 682.67 -> 682 (rounding would give 683)
    ((373, 500, 256, 256), (256, 343, 0, 44)),   # 343.16 -> 343; 43.5 -> 44 (flooring would give 43)
    ((357, 500, 256, 256), (256, 358, 0, 51)),   # 358.54 -> 358 (rounding would give 359)
    ((683, 1024, 256, 256), (256, 383, 0, 64)),  # 383.81 -> 383; 63.5 -> 64
    ((1024, 683, 512, 512), (767, 512, 128, 0)),  # 767.63 -> 767; 127.5 -> 128
    ((375, 500, 288, 256), (288, 384, 16, 64)),  # VAR 256: shorter side round(1.125 * 256) = 288
    ((373, 500, 576, 512), (576, 772, 32, 130)),  # VAR 512: 576; 772.12 -> 772
]


@pytest.mark.parametrize("case, expected", TORCHVISION_GEOMETRY)
def test_resize_and_centre_crop_geometry_is_torchvision_s(case, expected):
    height, width, shorter, crop = case
    image = _pattern(height, width, 0)
    resized = transforms.resize_shorter_side(image, shorter)
    assert resized.shape[:2] == expected[:2]
    top, left = expected[2:]
    np.testing.assert_array_equal(transforms.center_crop(resized, crop), resized[top:top + crop, left:left + crop])


@pytest.mark.parametrize("size, ratio, resample", [(256, 1.0, "BICUBIC"), (512, 1.0, "BICUBIC"),
                                                    (256, 1.125, "LANCZOS"), (512, 1.125, "LANCZOS")])
def test_eval_and_train_views_are_the_official_pil_pipelines(size, ratio, resample):
    # TiTok/MaskGIT (1d-tokenizer data/webdataset_reader.py): Resize(S, bicubic, antialias) + CenterCrop(S)
    # or RandomCrop(S) + flip. VAR (VAR utils/data.py::build_dataset): Resize(round(1.125 * S), LANCZOS) +
    # CenterCrop(S) for validation, RandomCrop(S) without flips for training. torchvision resizes PIL images
    # with Image.resize, so PIL itself is the reference here.
    image = _pattern(333, 501, 3)
    shorter = round(ratio * size)
    resize = transforms.Resize(ratio, resample.lower())
    expected_full = np.asarray(Image.fromarray(image).resize(
        (int(shorter * 501 / 333), shorter), resample=getattr(Image.Resampling, resample))).astype(np.float32) / 255
    left = int(round((expected_full.shape[1] - size) / 2.0))
    top = int(round((expected_full.shape[0] - size) / 2.0))
    np.testing.assert_array_equal(transforms.eval_transform(image, size, resize),
                                  expected_full[top:top + size, left:left + size])
    # Training: every view is an exact window of the same resized image, and windows move between draws.
    offsets = set()
    for seed in range(6):
        view = transforms.train_transform(image, size, np.random.default_rng(seed), random_flip=False, resize=resize)
        matches = [(y, x) for y in range(expected_full.shape[0] - size + 1) for x in range(expected_full.shape[1] - size + 1)
                   if view[0, 0, 0] == expected_full[y, x, 0] and np.array_equal(view, expected_full[y:y + size, x:x + size])]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 1


def test_resize_settings_are_checked():
    with pytest.raises(ValueError, match="unknown resize filter 'nearest'"):
        transforms.Resize(1.0, "nearest")
    with pytest.raises(ValueError, match="at least 1"):
        transforms.Resize(0.9)
    assert transforms.resize_from_config({"resize_ratio": 1.125, "resize_filter": "lanczos"}).shorter_side(512) == 576


def test_crops_and_flip():
    image = _pattern(20, 30, 0)
    np.testing.assert_array_equal(transforms.center_crop(image, 10), image[5:15, 10:20])
    crop_a = transforms.random_crop(image, 10, np.random.default_rng(5))
    crop_b = transforms.random_crop(image, 10, np.random.default_rng(5))
    np.testing.assert_array_equal(crop_a, crop_b)
    crops = {transforms.random_crop(image, 10, np.random.default_rng(seed)).tobytes() for seed in range(30)}
    assert len(crops) > 5  # crops move around
    flips = [transforms.random_flip(image, np.random.default_rng(seed)) for seed in range(200)]
    num_flipped = sum(np.array_equal(flipped, image[:, ::-1]) for flipped in flips)
    assert 60 < num_flipped < 140
    with pytest.raises(ValueError, match="10x10"):
        transforms.center_crop(_pattern(8, 30, 0), 10)


def test_train_and_eval_transform_range_and_shape():
    image = _pattern(37, 53, 1)
    train = transforms.train_transform(image, 16, np.random.default_rng(0))
    assert train.shape == (16, 16, 3) and train.dtype == np.float32
    assert 0.0 <= train.min() and train.max() <= 1.0 and train.flags.c_contiguous
    again = transforms.train_transform(image, 16, np.random.default_rng(0))
    np.testing.assert_array_equal(train, again)
    evaluation = transforms.eval_transform(image, 16)
    assert evaluation.shape == (16, 16, 3) and evaluation.dtype == np.float32
    centre_only = transforms.train_transform(image, 16, np.random.default_rng(0), random_crop=False, random_flip=False)
    np.testing.assert_array_equal(centre_only, evaluation)
    flat = transforms.eval_transform(np.full((9, 9, 3), 255, np.uint8), 32)
    np.testing.assert_allclose(flat, 1.0)


# ----------------------------------------------------------------------------- pipeline


def test_epoch_order_is_a_permutation_per_epoch():
    positions = np.arange(30)
    indices = pipeline.positions_to_indices(positions, num_examples=10, seed=4)
    epochs = indices.reshape(3, 10)
    for epoch in epochs:
        assert sorted(epoch.tolist()) == list(range(10))
    assert not np.array_equal(epochs[0], epochs[1])
    np.testing.assert_array_equal(indices, pipeline.positions_to_indices(positions, 10, seed=4))
    assert not np.array_equal(indices, pipeline.positions_to_indices(positions, 10, seed=5))
    np.testing.assert_array_equal(pipeline.host_positions(3, 8, 1, 2), np.arange(28, 32))


def test_train_batches_are_deterministic():
    source = shapes.ShapesSource(num_examples=20, image_size=16)
    kwargs = dict(image_size=16, global_batch_size=8, seed=11, num_workers=2)
    first = _take(pipeline.train_batches(source, **kwargs), 6)  # crosses two epoch boundaries
    second = _take(pipeline.train_batches(source, **kwargs), 6)
    _assert_batches_equal(first, second)
    batch = first[0]
    assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    # Steps 0..4 cover 2 epochs of 20 examples: every label appears in its expected count.
    labels = np.concatenate([b["label"] for b in first[:5]])
    np.testing.assert_array_equal(np.bincount(labels, minlength=16), 2 * np.bincount(np.arange(20) % 16))
    other_seed = _take(pipeline.train_batches(source, **{**kwargs, "seed": 12}), 1)
    assert not np.array_equal(other_seed[0]["image"], first[0]["image"])


def test_train_batches_resume_from_step():
    source = shapes.ShapesSource(num_examples=20, image_size=16)
    kwargs = dict(image_size=16, global_batch_size=8, seed=2, num_workers=3)
    uninterrupted = _take(pipeline.train_batches(source, **kwargs), 7)
    resumed = _take(pipeline.train_batches(source, start_step=4, **kwargs), 3)
    _assert_batches_equal(resumed, uninterrupted[4:])


def test_train_batches_process_split_matches_single_process():
    source = shapes.ShapesSource(num_examples=20, image_size=16)
    kwargs = dict(image_size=16, global_batch_size=8, seed=5, num_workers=2)
    single = _take(pipeline.train_batches(source, **kwargs), 5)
    hosts = [
        _take(pipeline.train_batches(source, process_index=k, process_count=2, start_step=1, **kwargs), 4)
        for k in range(2)
    ]
    for step in range(1, 5):
        for key in ("image", "label"):
            assert hosts[0][step - 1][key].shape[0] == 4
            combined = np.concatenate([hosts[0][step - 1][key], hosts[1][step - 1][key]])
            np.testing.assert_array_equal(combined, single[step][key])
    with pytest.raises(ValueError, match="6.*4"):
        pipeline.train_batches(source, image_size=16, global_batch_size=6, seed=0, process_count=4)


def test_eval_batches_padding_and_mask():
    source = shapes.ShapesSource(num_examples=21, image_size=16, split="eval")
    assert pipeline.num_eval_batches(21, 8) == 3
    assert pipeline.num_eval_batches(16, 8) == 2
    hosts = [
        list(pipeline.eval_batches(source, image_size=16, global_batch_size=8, process_index=k, process_count=2))
        for k in range(2)
    ]
    assert len(hosts[0]) == len(hosts[1]) == 3
    rows = {key: np.concatenate([b[key] for batches in zip(*hosts) for b in batches]) for key in hosts[0][0]}
    assert rows["mask"].dtype == np.bool_ and rows["mask"].shape == (24,)
    assert rows["mask"].sum() == 21
    np.testing.assert_array_equal(rows["mask"], np.arange(24) < 21)
    np.testing.assert_array_equal(rows["label"][:21], np.arange(21) % 16)
    assert not rows["image"][21:].any() and not rows["label"][21:].any()
    np.testing.assert_array_equal(rows["image"][13], transforms.eval_transform(source.load(13)[0], 16))
    limited = list(pipeline.eval_batches(source, image_size=16, global_batch_size=8, max_examples=10))
    assert len(limited) == 2 and sum(b["mask"].sum() for b in limited) == 10


def test_corrupt_images_are_skipped(tmp_path: pathlib.Path):
    source = ImageFolderSource(_write_image_folder(tmp_path / "data"))
    stats = pipeline.PipelineStats()
    batches = _take(
        pipeline.train_batches(source, image_size=8, global_batch_size=5, seed=0, num_workers=2, stats=stats), 3
    )
    # Each step is one full epoch here: 2 corrupt images per step.
    assert stats.skipped_corrupt >= 6 and stats.skipped_corrupt % 2 == 0
    for batch in batches:
        assert batch["image"].shape == (5, 8, 8, 3)
        unique_rows = np.unique(batch["image"].reshape(5, -1), axis=0)
        assert len(unique_rows) == 3  # 2 corrupt slots hold copies of valid examples
        assert batch["image"].reshape(5, -1).max(axis=1).min() > 0
    eval_stats = pipeline.PipelineStats()
    (evaluation,) = pipeline.eval_batches(source, image_size=8, global_batch_size=8, stats=eval_stats)
    assert eval_stats.skipped_corrupt == 2
    assert evaluation["mask"].sum() == 3


def test_all_corrupt_batch_raises(tmp_path: pathlib.Path):
    (tmp_path / "only" / "cls").mkdir(parents=True)
    for name in ("a.png", "b.jpg"):
        (tmp_path / "only" / "cls" / name).write_bytes(b"garbage")
    source = ImageFolderSource(tmp_path / "only")
    with pytest.raises(RuntimeError, match="corrupt"):
        next(pipeline.train_batches(source, image_size=8, global_batch_size=2, seed=0, num_workers=1))


def _prefetch_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "titok_var_data_prefetch"]


def test_dropped_iterator_stops_its_producer():
    before = len(_prefetch_threads())
    iterator = pipeline.train_batches(shapes.ShapesSource(64, 16), image_size=16, global_batch_size=8, seed=0)
    next(iterator)
    assert len(_prefetch_threads()) == before + 1
    del iterator
    gc.collect()
    deadline = time.monotonic() + 5.0
    while len(_prefetch_threads()) > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(_prefetch_threads()) == before


def test_process_exits_despite_live_pipeline_after_error():
    # An uncaught error in a training loop must end the process, not hang it on pipeline threads.
    # The hook registered first runs last: by then no prefetch thread may still be running, as a daemon
    # thread caught in numpy's C++ at finalisation aborts the process instead of exiting with status 3.
    script = (
        "import atexit, threading\n"
        "atexit.register(lambda: print('live prefetch threads at finalisation:', sum("
        "t.name == 'titok_var_data_prefetch' and t.is_alive() for t in threading.enumerate())))\n"
        "from titok_var.data import pipeline, shapes\n"
        "batches = pipeline.train_batches(shapes.ShapesSource(512, 256), image_size=256, "
        "global_batch_size=64, seed=0, num_workers=2)\n"
        "next(batches)\n"
        "raise SystemExit(3)\n"
    )
    repo_root = pathlib.Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", script], cwd=repo_root, timeout=60, capture_output=True)
    assert result.returncode == 3, result.stderr.decode()[-2000:]
    assert "live prefetch threads at finalisation: 0" in result.stdout.decode()


# ----------------------------------------------------------------------------- tfds


class TitokVarTestImages(tfds.core.GeneratorBasedBuilder):
    """Tiny image-classification dataset written to disk by the tests."""

    VERSION = tfds.core.Version("1.0.0")
    # tfds 4.9.10 locates a packaged builder's checksums file through `importlib_resources`,
    # which it does not install on Python >= 3.9; without a code path (as in Colab) it skips that.
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(num_classes=3),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(7, offset=0), "validation": self._generate_examples(3, offset=100)}

    def _generate_examples(self, count: int, offset: int):
        for index in range(count):
            yield index, {"image": _tfds_image(offset + index), "label": index % 3}


def _tfds_image(index: int) -> np.ndarray:
    return _pattern(6 + index % 5, 9, seed=index)


@pytest.fixture(scope="module")
def tfds_data_dir(tmp_path_factory) -> str:
    tfds.disable_progress_bar()
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    tfds.builder("titok_var_test_images", data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def test_tfds_source_reads_array_record(tfds_data_dir: str):
    source = TfdsSource("titok_var_test_images", "train", data_dir=tfds_data_dir)
    assert len(source) == 7 and source.num_classes == 3
    # Lossless PNG round trip: the source returns exactly what was written (any record order).
    written = {_tfds_image(index).tobytes(): index % 3 for index in range(7)}
    for index in range(len(source)):
        image, label = source.load(index)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert written[image.tobytes()] == label
    validation = TfdsSource("titok_var_test_images", "validation", data_dir=tfds_data_dir)
    assert len(validation) == 3
    batch = next(pipeline.train_batches(source, image_size=8, global_batch_size=4, seed=0, num_workers=2))
    assert batch["image"].shape == (4, 8, 8, 3)
    with pytest.raises(ValueError, match="nosuchsplit"):
        TfdsSource("titok_var_test_images", "nosuchsplit", data_dir=tfds_data_dir)


def test_tfds_source_not_prepared(tmp_path: pathlib.Path):
    with pytest.raises(DatasetNotFoundError, match="array_record") as error:
        TfdsSource("titok_var_test_images", "train", data_dir=str(tmp_path))
    assert str(tmp_path) in str(error.value)
    with pytest.raises(DatasetNotFoundError) as error:
        TfdsSource("imagenet2012", "train", data_dir=str(tmp_path))
    message = str(error.value)
    assert str(tmp_path) in message and "tfds build imagenet2012 --manual_dir=" in message
    assert "--file_format=array_record" in message


def test_tfds_source_needs_array_record(tmp_path: pathlib.Path):
    tfds.disable_progress_bar()
    tfds.builder("titok_var_test_images", data_dir=str(tmp_path), file_format="tfrecord").download_and_prepare()
    with pytest.raises(DatasetNotFoundError, match="tfrecord.*array_record"):
        TfdsSource("titok_var_test_images", "train", data_dir=str(tmp_path))


# ----------------------------------------------------------------------------- builder


def _data_config(**overrides) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(
        dict(
            name="shapes",
            data_dir="",
            train_split="train",
            eval_split="validation",
            image_size=16,
            shapes_num_train=64,
            shapes_num_eval=32,
            seed=0,
        )
    )
    config.update(overrides)
    return config


def test_build_source_shapes_and_image_folder(tmp_path: pathlib.Path):
    train = builder.build_source(_data_config(), "train")
    evaluation = builder.build_source(_data_config(), "eval")
    assert isinstance(train, shapes.ShapesSource) and len(train) == 64 and len(evaluation) == 32
    assert not np.array_equal(train.load(0)[0], evaluation.load(0)[0])
    _write_image_folder(tmp_path / "validation", corrupt=False)
    folder = builder.build_source(_data_config(name="image_folder", data_dir=str(tmp_path)), "eval")
    assert isinstance(folder, ImageFolderSource) and len(folder) == 3
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "train")):
        builder.build_source(_data_config(name="image_folder", data_dir=str(tmp_path)), "train")
    with pytest.raises(ValueError, match="'train', 'eval'"):
        builder.build_source(_data_config(), "validation")


def test_build_source_tfds_and_unknown_name(tfds_data_dir: str):
    config = _data_config(name="titok_var_test_images", data_dir=tfds_data_dir)
    source = builder.build_source(config, "eval")
    assert isinstance(source, TfdsSource) and len(source) == 3
    with pytest.raises(UnknownDatasetError) as error:
        builder.build_source(_data_config(name="no_such_dataset_xyz"), "train")
    message = str(error.value)
    assert "'shapes'" in message and "'image_folder'" in message and "tfds dataset name" in message
    assert isinstance(error.value, ValueError)
