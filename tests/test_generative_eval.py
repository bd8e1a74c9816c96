"""Generator evaluation (gFID, IS, precision/recall of sample .npz files) with random Inception
weights, explicitly, on CPU.

scipy's sqrtm of a 2048 x 2048 matrix takes ~100 s on the test machine, so the end-to-end tests
swap `fid.frechet_distance` for `low_rank_frechet_distance`: with fewer samples than feature
dimensions both covariances are low-rank, and the distance restricted to their joint range is the
same number (checked against `fid.frechet_distance` in low dimension below).
"""

import json
import os
import socket
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from titok_var.evaluation import fid, inception, inception_score, precision_recall
from titok_var.tools import convert_inception, generative_eval, sample

NUM_CLASSES, PER_CLASS, SIZE = 4, 2, 16  # 8 samples: one batch over the 8 CPU devices
BATCH = 8
FULL_FRECHET_DISTANCE = fid.frechet_distance  # kept: the e2e tests monkeypatch the module attribute


def low_rank_frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """`fid.frechet_distance` evaluated in the joint range of two low-rank covariances."""
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    probe = np.random.default_rng(0).standard_normal((sigma1.shape[0], 64))
    u, s, _ = np.linalg.svd((sigma1 + sigma2) @ probe, full_matrices=False)
    basis = u[:, s > 1e-9 * s[0]]
    assert basis.shape[1] < 60, "covariances are not low-rank"
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    outside = diff - basis @ (basis.T @ diff)
    reduced = FULL_FRECHET_DISTANCE(basis.T @ mu1, basis.T @ sigma1 @ basis,
                                  basis.T @ mu2, basis.T @ sigma2 @ basis, eps)
    return reduced + float(outside @ outside)


def numpy_inception_score(logits, labels, num_splits):
    """Independent IS: class-interleaved order, num_splits parts with edges i*N//S."""
    logits = np.asarray(logits, np.float64)
    count = logits.shape[0]
    order = np.arange(count)
    if labels is not None:
        members = {c: list(np.flatnonzero(labels == c)) for c in sorted(set(labels.tolist()))}
        order = [members[c][k] for k in range(max(map(len, members.values())))
                 for c in members if k < len(members[c])]
    logits = logits[np.asarray(order)]
    scores = []
    for i in range(num_splits):
        part = logits[i * count // num_splits:(i + 1) * count // num_splits]
        p = np.exp(part - part.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        marginal = p.mean(0)
        scores.append(np.exp(np.mean(np.sum(p * (np.log(p) - np.log(marginal)), axis=1))))
    return float(np.mean(scores)), float(np.std(scores))


# ----------------------------------------------------------------------------------------------
# Host-side pieces (no network)


def test_low_rank_frechet_distance_equals_the_full_formula():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((9, 40)), rng.standard_normal((7, 40)) * 2 + 0.5
    full = fid.fid_from_features(a, b)
    np.testing.assert_allclose(low_rank_frechet_distance(*fid.compute_statistics(a), *fid.compute_statistics(b)),
                               full, rtol=1e-6)


def test_merged_moments_of_two_halves_equal_the_statistics_of_the_whole():
    rng = np.random.default_rng(1)
    feats = rng.standard_normal((301, 24)) * rng.uniform(0.1, 3.0, 24) + 50.0  # offset: no cancellation
    parts = [feats[:120], feats[120:], feats[:0], feats[300:]]  # incl. an empty and a 1-row process
    moments = []
    for part in parts:
        stats = fid.ActivationStatistics(24)
        for start in range(0, part.shape[0], 64):
            stats.update(part[start:start + 64])
        moments.append(generative_eval.statistics_moments(stats))
    counts, means, scatters = zip(*moments)
    total, mean, cov = generative_eval.merge_moments(counts, means, scatters)
    whole = np.concatenate([parts[0], parts[1], parts[3]])
    assert total == 302
    np.testing.assert_allclose(mean, whole.mean(0), rtol=1e-13)
    np.testing.assert_allclose(cov, np.cov(whole, rowvar=False), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        generative_eval.merge_moments([1], means[3][None], scatters[3][None])


def test_single_process_gathers_are_exact_identities():
    value = np.asarray([[1 / 3, np.pi], [1e-300, -2.0]], np.float64)
    gathered = generative_eval.allgather_exact(value)
    assert gathered.shape == (1, 2, 2) and gathered.dtype == np.float64
    np.testing.assert_array_equal(gathered[0], value)
    np.testing.assert_array_equal(generative_eval.allgather_rows(value), value)


_TWO_PROCESS_WORKER = """
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
port, pid = sys.argv[1], int(sys.argv[2])
import jax
jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
import numpy as np
from titok_var.evaluation import fid
from titok_var.tools import generative_eval as ge
feats = np.random.default_rng(0).standard_normal((11, 5)) + 1 / 3
mine = feats[:7] if pid == 0 else feats[7:]
stats = fid.ActivationStatistics(5).update(mine)
count, mean, scatter = ge.statistics_moments(stats)
total, mu, sigma = ge.merge_moments(ge.allgather_exact(np.int64(count)), ge.allgather_exact(mean),
                                    ge.allgather_exact(scatter))
rows = ge.allgather_rows(mine)
print(json.dumps({"total": total, "mu_err": float(np.abs(mu - feats.mean(0)).max()),
                  "sigma_err": float(np.abs(sigma - np.cov(feats, rowvar=False)).max()),
                  "rows_exact": bool(np.array_equal(rows, feats))}))
"""


def test_two_real_processes_merge_float64_statistics_exactly():
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    procs = [subprocess.Popen([sys.executable, "-c", _TWO_PROCESS_WORKER, str(port), str(i)], cwd=REPO_ROOT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        result = json.loads(out.strip().splitlines()[-1])
        assert result["total"] == 11 and result["rows_exact"]
        # float64 all the way: errors at float64 rounding, far below float32's ~1e-7.
        assert result["mu_err"] < 1e-14 and result["sigma_err"] < 1e-13, result


def test_inception_parts_interleave_the_classes():
    labels = sample.class_balanced_labels(4, 3)  # 0 0 0 1 1 1 2 2 2 3 3 3
    ids = generative_eval.inception_split_ids(12, 3, labels)
    # Interleaved order 0 1 2 3 0 1 2 3 ...: part k holds the k-th sample of every class.
    np.testing.assert_array_equal(ids, np.tile(np.arange(3), 4))
    np.testing.assert_array_equal(generative_eval.inception_split_ids(12, 3), np.repeat(np.arange(3), 4))
    # Unbalanced classes and unequal parts (edges i*N//S).
    labels = np.asarray([2, 0, 2, 2, 1, 0, 2])
    ids = generative_eval.inception_split_ids(7, 2, labels)
    # order: first of 0,1,2 (idx 1,4,0), second of 0,2 (5,2), third/fourth of 2 (3,6) -> parts 3 | 4.
    np.testing.assert_array_equal(ids, [0, 0, 1, 1, 0, 1, 1])
    with pytest.raises(ValueError, match="num_splits"):
        generative_eval.inception_split_ids(3, 4)


def test_inception_score_from_batched_part_sums_equals_numpy():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((40, 30)) * 3.0
    labels = np.repeat(np.arange(8), 5)
    for part_labels in (labels, None):
        ids = generative_eval.inception_split_ids(40, 4, part_labels)
        sums = [np.zeros(4), np.zeros((4, 30)), np.zeros(4)]
        for start, stop in ((0, 7), (7, 8), (8, 31), (31, 40)):
            batch = generative_eval.inception_split_sums(logits[start:stop], ids[start:stop], 4)
            sums = [a + b for a, b in zip(sums, batch)]
        scores = generative_eval.inception_scores_from_sums(*sums)
        expected_mean, expected_std = numpy_inception_score(logits, part_labels, 4)
        np.testing.assert_allclose([scores.mean(), scores.std()], [expected_mean, expected_std], rtol=1e-10)
    # Without labels the parts are ADM/torch-fidelity's consecutive ones.
    np.testing.assert_allclose(scores.mean(), inception_score.inception_score(logits, num_splits=4), rtol=1e-10)


def test_rebatch_regroups_rows_in_order():
    batches = [np.full((n, 1, 1, 3), i, np.uint8) for i, n in enumerate((3, 0, 6, 1, 5))]
    out = list(generative_eval.rebatch(batches, 4))
    assert [b.shape[0] for b in out] == [4, 4, 4, 3]
    np.testing.assert_array_equal(np.concatenate(out), np.concatenate(batches))


def _config(tmp_path, weights, reference, num_per_class=PER_CLASS):
    return ml_collections.ConfigDict({
        "model": {"num_classes": NUM_CLASSES},
        "sample": {"num_per_class": num_per_class},
        "eval": {"inception_weights": weights, "reference_stats": reference, "global_batch_size": BATCH,
                 "inception_score_splits": 2},
    })


def test_missing_files_are_named_with_how_to_get_them(tmp_path):
    present = str(tmp_path / "present.npz")
    np.savez(present, mu=np.zeros(3))
    missing = str(tmp_path / "nope.npz")
    with pytest.raises(FileNotFoundError, match=r"nope\.npz.*convert --arch inception_fid"):
        generative_eval.generative_eval_checkpoint(_config(tmp_path, missing, present), str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"nope\.npz.*VIRTUAL_imagenet256_labeled"):
        generative_eval.generative_eval_checkpoint(_config(tmp_path, present, missing), str(tmp_path))
    config = _config(tmp_path, present, present)
    del config.eval["reference_stats"]  # configs without the field read ""
    with pytest.raises(FileNotFoundError, match="reference_stats"):
        generative_eval.generative_eval_checkpoint(config, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="samples_p"):
        generative_eval.evaluate_samples(str(tmp_path), present, present, batch_size=4)
    floats = str(tmp_path / "float_samples.npz")
    np.savez(floats, arr_0=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        generative_eval.evaluate_samples([floats], present, present, batch_size=4)


# ----------------------------------------------------------------------------------------------
# End to end through the (random-weight) FID Inception


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("generative_eval")
    weights = convert_inception.save_params(inception.init_params(seed=0), str(root / "inception.npz"))
    rng = np.random.default_rng(3)
    count = NUM_CLASSES * PER_CLASS
    images_a = rng.integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, SIZE)[None, :, None, None] * rng.uniform(0.2, 1.0, (count, 1, 1, 3))
    images_b = np.clip(ramp + rng.normal(0, 20, (count, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    images_b = np.swapaxes(images_b, 1, 2)
    # The plain, unsharded network on all images at once: the independent path.
    params = convert_inception.load_inception_params(weights)
    pool, logits = inception.make_feature_fn()(params, np.concatenate([images_a, images_b]))
    pool, logits = np.asarray(pool, np.float64), np.asarray(logits, np.float64)
    reference = str(root / "reference_a.npz")
    written = generative_eval.compute_reference_statistics(
        iter([images_a[:3], images_a[3:]]), weights, reference, batch_size=BATCH)
    return {"weights": weights, "images_a": images_a, "images_b": images_b, "reference": reference,
            "written": written, "labels": sample.class_balanced_labels(NUM_CLASSES, PER_CLASS),
            "pool_a": pool[:count], "pool_b": pool[count:], "logits_a": logits[:count], "logits_b": logits[count:]}


@pytest.fixture
def fast_fid(monkeypatch):
    monkeypatch.setattr(fid, "frechet_distance", low_rank_frechet_distance)


def test_reference_statistics_are_the_adm_layout_of_the_plain_network(setup):
    with np.load(setup["reference"]) as data:
        assert set(data.files) == {"mu", "sigma", "arr_0", "inception_convention"}
        assert str(data["inception_convention"]) == "adm"
        mu, sigma, acts = data["mu"], data["sigma"], data["arr_0"]
    assert mu.dtype == sigma.dtype == np.float64 and acts.shape == (NUM_CLASSES * PER_CLASS, 2048)
    np.testing.assert_allclose(acts, setup["pool_a"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mu, setup["pool_a"].mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(setup["pool_a"], rowvar=False), rtol=1e-3, atol=1e-6)
    np.testing.assert_array_equal(fid.load_statistics(setup["reference"])[0], mu)


def test_checkpoint_eval_of_existing_samples_against_their_own_reference(setup, fast_fid, tmp_path, monkeypatch):
    # Samples as sample.py writes them, from a two-process run: contiguous label slices.
    workdir = tmp_path / "run"
    sample_dir = workdir / "samples" / "step_000000005"
    os.makedirs(sample_dir)
    images, labels = setup["images_a"], setup["labels"]
    for index, rows in enumerate(np.array_split(np.arange(len(labels)), 2)):
        np.savez(sample_dir / f"samples_p{index:03d}.npz", arr_0=images[rows], labels=labels[rows])
    config = _config(tmp_path, setup["weights"], setup["reference"])
    # sample.py records which weights and settings made them; only matching samples are reused.
    from titok_var.training import inference

    record = sample.sample_record(config, inference.describe_source(str(workdir), 5, None), None)
    (sample_dir / sample.SOURCE_FILE).write_text(json.dumps(record))
    metrics = generative_eval.generative_eval_checkpoint(config, str(workdir), step=5)

    assert abs(metrics["gfid"]) < 1e-3
    assert metrics["precision"] == 1.0 and metrics["recall"] == 1.0
    assert metrics["num_samples"] == len(labels) and metrics["num_reference_pr"] == len(labels)
    expected_is = numpy_inception_score(setup["logits_a"], labels, 2)
    np.testing.assert_allclose([metrics["inception_score"], metrics["inception_score_std"]], expected_is,
                               rtol=1e-4)
    with open(workdir / "eval" / "step_000000005" / "generation_metrics.json") as f:
        saved = json.load(f)
    assert saved["step"] == 5 and saved["reference_stats"] == setup["reference"]
    assert saved["gfid"] == metrics["gfid"] and saved["precision"] == 1.0
    assert saved["inception_convention"] == "adm"
    # Statistics are compared within one Inception input convention only.
    other = _config(tmp_path, setup["weights"], setup["reference"])
    other.eval.inception_convention = "pytorch_fid"
    with pytest.raises(ValueError, match="'adm' convention.*'pytorch_fid' convention"):
        generative_eval.generative_eval_checkpoint(other, str(workdir), step=5)

    # Samples for another per-class count are stale: the checkpoint is sampled again.
    calls = []

    def fake_sample(config, workdir, step, **source):  # source: export_dir, compute_dtype
        calls.append(step)
        raise RuntimeError("sampling")

    monkeypatch.setattr(sample, "sample_checkpoint", fake_sample)
    with pytest.raises(RuntimeError, match="sampling"):
        generative_eval.generative_eval_checkpoint(_config(tmp_path, setup["weights"], setup["reference"], 3),
                                                   str(workdir), step=5)
    assert calls == [5]
    # Samples another model made (here: an export evaluated into the same work dir) are not reused.
    os.makedirs(tmp_path / "other")
    (tmp_path / "other" / "export.json").write_text(json.dumps({"step": 5}))
    with pytest.raises(RuntimeError, match="sampling"):
        generative_eval.generative_eval_checkpoint(config, str(workdir), step=5, export_dir=str(tmp_path / "other"))
    assert calls == [5, None]


def test_other_samples_against_an_adm_reference_batch_of_images(setup, fast_fid, tmp_path):
    # ADM layout: mu/sigma plus the reference *images* under arr_0 (what VIRTUAL_*.npz holds).
    adm = str(tmp_path / "VIRTUAL_tiny.npz")
    written = setup["written"]
    np.savez(adm, mu=written["mu"], sigma=written["sigma"], arr_0=setup["images_a"],
             mu_s=written["mu"][:8], sigma_s=written["sigma"][:8, :8])
    samples_b = str(tmp_path / "b.npz")
    np.savez(samples_b, arr_0=setup["images_b"], labels=setup["labels"])
    metrics = generative_eval.evaluate_samples([samples_b], setup["weights"], adm, batch_size=BATCH,
                                               num_splits=2, pr_reference_limit=6)

    pool_a, pool_b = setup["pool_a"], setup["pool_b"]
    expected_fid = low_rank_frechet_distance(*fid.compute_statistics(pool_b), written["mu"], written["sigma"])
    assert metrics["gfid"] > 1.0
    np.testing.assert_allclose(metrics["gfid"], expected_fid, rtol=1e-3)
    expected_pr = precision_recall.precision_recall(pool_a[:6], pool_b, k=3)
    assert metrics["num_reference_pr"] == 6
    np.testing.assert_allclose([metrics["precision"], metrics["recall"]], expected_pr)
    np.testing.assert_allclose([metrics["inception_score"], metrics["inception_score_std"]],
                               numpy_inception_score(setup["logits_b"], setup["labels"], 2), rtol=1e-4)


def test_reference_without_activations_gives_fid_and_is_but_no_pr(setup, fast_fid, tmp_path):
    stats_only = str(tmp_path / "stats_only.npz")
    fid.save_statistics(stats_only, setup["written"]["mu"], setup["written"]["sigma"])
    samples = str(tmp_path / "unlabelled.npz")
    np.savez(samples, arr_0=setup["images_b"][:7])  # an ADM-style sample batch: no labels
    metrics = generative_eval.evaluate_samples(samples, setup["weights"], stats_only, batch_size=BATCH,
                                               num_splits=2)
    assert "precision" not in metrics and "recall" not in metrics
    expected_fid = low_rank_frechet_distance(*fid.compute_statistics(setup["pool_b"][:7]),
                                             setup["written"]["mu"], setup["written"]["sigma"])
    np.testing.assert_allclose(metrics["gfid"], expected_fid, rtol=1e-3)
    logits = setup["logits_b"][:7]
    np.testing.assert_allclose(metrics["inception_score"], inception_score.inception_score(logits, num_splits=2),
                               rtol=1e-4)
