"""Tests for the generative metrics: FID statistics and distance, Inception Score, k-NN
precision/recall, the FID Inception-v3 and its weight converter (random weights, CPU)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from scipy import linalg

from titok_var.evaluation import fid, inception, inception_score, precision_recall
from titok_var.tools import convert_inception

# ----------------------------------------------------------------------------------------------
# FID


def _random_spd(rng, dim, scale=1.0):
    a = rng.standard_normal((dim, dim))
    return scale * (a @ a.T / dim + 0.1 * np.eye(dim))


def test_fid_of_a_set_with_itself_is_zero():
    feats = np.random.default_rng(0).standard_normal((400, 32)) * 3.0 + 1.0
    mu, sigma = fid.compute_statistics(feats)
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-6
    assert abs(fid.fid_from_features(feats, feats)) < 1e-6


def test_fid_matches_closed_form_for_diagonal_and_commuting_covariances():
    rng = np.random.default_rng(1)
    dim = 12
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim) + 2.0
    var1, var2 = rng.uniform(0.2, 3.0, dim), rng.uniform(0.2, 3.0, dim)
    closed = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2.0 * np.sqrt(var1 * var2))
    got = fid.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    np.testing.assert_allclose(got, closed, rtol=1e-10)
    # Same eigenvalues in a shared random basis: the trace term is basis-independent.
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    got_rotated = fid.frechet_distance(mu1, q @ np.diag(var1) @ q.T, mu2, q @ np.diag(var2) @ q.T)
    np.testing.assert_allclose(got_rotated, closed, rtol=1e-8)


def _whitened_gaussian(rng, count, dim):
    """Gaussian samples made to have sample mean exactly 0 and unbiased covariance exactly I."""
    z = rng.standard_normal((count, dim))
    z -= z.mean(0)
    return z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T


def test_fid_of_shifted_gaussian_samples_matches_the_closed_form():
    rng = np.random.default_rng(2)
    dim, count = 6, 3000
    std1, std2 = rng.uniform(0.5, 1.5, dim), rng.uniform(0.5, 1.5, dim)
    shift = rng.uniform(-1.0, 1.0, dim)
    a = _whitened_gaussian(rng, count, dim) * std1
    b = _whitened_gaussian(rng, count, dim) * std2 + shift
    # Diagonal covariances: ||mu1 - mu2||^2 + sum(s1^2 + s2^2 - 2 s1 s2).
    closed = np.sum(shift**2) + np.sum((std1 - std2) ** 2)
    np.testing.assert_allclose(fid.fid_from_features(a, b), closed, rtol=1e-9)
    acc_a, acc_b = fid.ActivationStatistics(dim), fid.ActivationStatistics(dim)
    for start in range(0, count, 512):
        acc_a.update(a[start:start + 512])
        acc_b.update(b[start:start + 512])
    np.testing.assert_allclose(
        fid.frechet_distance(*acc_a.statistics(), *acc_b.statistics()), closed, rtol=1e-9)


def test_frechet_distance_matches_a_direct_eigenvalue_computation():
    rng = np.random.default_rng(3)
    dim = 20
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    s1, s2 = _random_spd(rng, dim), _random_spd(rng, dim, 2.0)
    # Tr sqrt(S1 S2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)), a symmetric PSD matrix.
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(w)) @ v.T
    tr_covmean = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)))
    direct = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean
    np.testing.assert_allclose(fid.frechet_distance(mu1, s1, mu2, s2), direct, rtol=1e-9)
    # And the plain scipy formula.
    covmean = linalg.sqrtm(s1 @ s2).real
    plain = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2 - 2 * covmean)
    np.testing.assert_allclose(fid.frechet_distance(mu1, s1, mu2, s2), plain, rtol=1e-10)


def test_frechet_distance_rejects_a_large_imaginary_component_and_bad_shapes():
    with pytest.raises(ValueError, match="imaginary"):
        fid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([-1.0, 1.0]))
    with pytest.raises(ValueError):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_streaming_statistics_equal_one_shot_numpy():
    rng = np.random.default_rng(4)
    feats = rng.standard_normal((257, 16)) * rng.uniform(0.1, 5, 16) + 1e3  # large offset
    acc = fid.ActivationStatistics(16)
    start = 0
    for size in (1, 7, 100, 0, 64, 85):
        acc.update(feats[start:start + size])
        start += size
    assert start == 257 and acc.count == 257
    np.testing.assert_allclose(acc.mean, feats.mean(0), rtol=1e-12)
    np.testing.assert_allclose(acc.covariance, np.cov(feats, rowvar=False), rtol=1e-9, atol=1e-9)
    # Padding masks and merging shards.
    left, right = fid.ActivationStatistics(16), fid.ActivationStatistics(16)
    padded = np.concatenate([feats[:100], np.full((28, 16), 1e6)])
    left.update(padded, mask=np.arange(128) < 100)
    right.update(feats[100:])
    merged = left.merge(right)
    np.testing.assert_allclose(merged.mean, feats.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged.covariance, np.cov(feats, rowvar=False), rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError):
        fid.ActivationStatistics(16).covariance  # noqa: B018


def test_statistics_files_round_trip_and_adm_layout(tmp_path):
    rng = np.random.default_rng(5)
    feats = rng.standard_normal((50, 8))
    mu, sigma = fid.compute_statistics(feats)
    path = str(tmp_path / "stats.npz")
    fid.save_statistics(path, mu, sigma)
    got_mu, got_sigma = fid.load_statistics(path)
    np.testing.assert_array_equal(got_mu, mu)
    np.testing.assert_array_equal(got_sigma, sigma)

    # ADM reference batch: mu/sigma, spatial stats and uint8 reference images under arr_0.
    images = rng.integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)
    adm = str(tmp_path / "VIRTUAL_tiny.npz")
    np.savez(adm, arr_0=images, mu=mu, sigma=sigma, mu_s=mu[:4], sigma_s=sigma[:4, :4])
    got_mu, got_sigma = fid.load_statistics(adm)
    np.testing.assert_array_equal(got_mu, mu)
    assert fid.npz_array_info(adm) == ((5, 4, 6, 3), np.dtype(np.uint8))
    batches = list(fid.iter_npz_batches(adm, 2))
    assert [b.shape[0] for b in batches] == [2, 2, 1]
    np.testing.assert_array_equal(np.concatenate(batches), images)

    # Activations-only file (arr_0 2-D): statistics are computed from it.
    acts = str(tmp_path / "acts.npz")
    np.savez_compressed(acts, arr_0=feats)
    got_mu, got_sigma = fid.load_statistics(acts)
    np.testing.assert_allclose(got_sigma, sigma, rtol=1e-12)
    np.testing.assert_array_equal(np.concatenate(list(fid.iter_npz_batches(acts, 16))), feats)

    images_only = str(tmp_path / "images.npz")
    np.savez(images_only, arr_0=images)
    with pytest.raises(ValueError, match="images"):
        fid.load_statistics(images_only)
    with pytest.raises(FileNotFoundError):
        fid.load_statistics(str(tmp_path / "absent.npz"))


# ----------------------------------------------------------------------------------------------
# Inception Score


def _adm_inception_score(preds, split_size):
    """The ADM formula verbatim in NumPy (needs strictly positive predictions)."""
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i:i + split_size]
        kl = part * (np.log(part) - np.log(np.mean(part, 0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def test_inception_score_extremes():
    uniform = np.full((30, 1008), 1.0 / 1008)
    assert inception_score.inception_score(probs=uniform) == pytest.approx(1.0, abs=1e-12)
    assert inception_score.inception_score(np.zeros((30, 1008))) == pytest.approx(1.0, abs=1e-12)
    # Confident and balanced: every class predicted with certainty by the same number of images.
    classes = 10
    labels = np.tile(np.arange(classes), 4)
    one_hot = np.eye(classes)[labels]
    assert inception_score.inception_score(probs=one_hot) == pytest.approx(classes, rel=1e-12)
    assert inception_score.inception_score(one_hot * 60.0) == pytest.approx(classes, rel=1e-6)
    # Confident but collapsed onto one class: 1.
    collapsed = np.eye(classes)[np.zeros(40, int)]
    assert inception_score.inception_score(probs=collapsed) == pytest.approx(1.0, abs=1e-12)


def test_inception_score_matches_adm_splits_and_streaming():
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((12000, 20)) * 3.0
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    splits = inception_score.inception_score_splits(logits)
    assert splits.shape == (3,)  # 5000, 5000, 2000 as ADM slices them
    expected = _adm_inception_score(probs, 5000)
    np.testing.assert_allclose(inception_score.inception_score(logits), expected, rtol=1e-10)
    np.testing.assert_allclose(inception_score.inception_score(probs=probs), expected, rtol=1e-10)
    # 50k samples -> 10 splits.
    assert inception_score.inception_score_splits(np.zeros((50000, 3))).shape == (10,)
    # One split (torch-fidelity / TiTok) and equal parts (improved-GAN).
    np.testing.assert_allclose(
        inception_score.inception_score(logits, split_size=None),
        _adm_inception_score(probs, 12000), rtol=1e-10)
    assert inception_score.inception_score_splits(logits, num_splits=7).shape == (7,)

    acc = inception_score.InceptionScoreAccumulator(20)
    start = 0
    for size in (3, 4997, 1, 2999, 4000):
        acc.update(logits[start:start + size])
        start += size
    assert start == 12000
    np.testing.assert_allclose(acc.split_scores(), splits, rtol=1e-10)
    padded = inception_score.InceptionScoreAccumulator(20, split_size=None)
    padded.update(probs=np.concatenate([probs, np.full((5, 20), 0.05)]),
                  mask=np.arange(12005) < 12000)
    np.testing.assert_allclose(padded.result(), _adm_inception_score(probs, 12000), rtol=1e-10)


# ----------------------------------------------------------------------------------------------
# Precision / recall


def _brute_force_radii(feats, k):
    d = ((feats[:, None, :] - feats[None, :, :]) ** 2).sum(-1)
    return np.sort(d, axis=1)[:, k]


def test_precision_recall_identical_and_far_apart_sets():
    rng = np.random.default_rng(7)
    real = rng.standard_normal((60, 16)).astype(np.float32)
    assert precision_recall.precision_recall(real, real.copy()) == (1.0, 1.0)
    far = real + 100.0
    assert precision_recall.precision_recall(real, far) == (0.0, 0.0)


def test_blocked_precision_recall_matches_brute_force():
    rng = np.random.default_rng(9)
    real = rng.standard_normal((53, 8))
    fake = rng.standard_normal((37, 8)) * 0.8 + 0.5
    k = 3
    real_radii = _brute_force_radii(real, k)
    fake_radii = _brute_force_radii(fake, k)
    for block in (7, 10000):
        got = precision_recall.manifold_radii(real, k, block_size=block)
        np.testing.assert_allclose(got, real_radii, rtol=1e-4, atol=1e-5)
    cross = ((real[:, None, :] - fake[None, :, :]) ** 2).sum(-1)
    recall = np.mean(np.any(cross <= fake_radii[None, :], axis=1))
    precision = np.mean(np.any(cross <= real_radii[:, None], axis=0))
    # Away from exact ties the blocked float32 pass must agree with the float64 brute force.
    assert np.min(np.abs(cross - fake_radii[None, :])) > 1e-3
    assert np.min(np.abs(cross - real_radii[:, None])) > 1e-3
    for block in (6, 10000):
        got = precision_recall.precision_recall(real, fake, k=k, block_size=block)
        assert got == pytest.approx((precision, recall), abs=1e-12)
    assert 0.0 < precision < 1.0 and 0.0 < recall < 1.0
    # float16 emulation of ADM on well-scaled features gives the same answer here.
    got16 = precision_recall.precision_recall(real, fake, k=k, block_size=9, float16=True)
    assert got16 == pytest.approx((precision, recall), abs=0.05)
    with pytest.raises(ValueError):
        precision_recall.manifold_radii(real[:3], k=3)


# ----------------------------------------------------------------------------------------------
# Inception-v3 and the converter


def test_bilinear_resize_follows_torch_align_corners_false():
    up = inception.resize_bilinear(jnp.asarray([0.0, 1.0]).reshape(1, 1, 2, 1), 1, 4)
    np.testing.assert_allclose(np.asarray(up).ravel(), [0.0, 0.25, 0.75, 1.0], atol=1e-7)
    down = inception.resize_bilinear(jnp.arange(4.0).reshape(1, 1, 4, 1), 1, 2)
    np.testing.assert_allclose(np.asarray(down).ravel(), [0.5, 2.5], atol=1e-7)

    # Per-pixel reference of torch's formula on a random image, up- and downsampling. torch's CPU
    # kernel (aten/src/ATen/native/UpSample.h, area_pixel_compute_source_index) computes the source
    # coordinate in float32 for float32 images.
    image = np.random.default_rng(9).random((13, 40), np.float32)
    f32 = np.float32

    def reference(img, out_h, out_w):
        in_h, in_w = img.shape
        out = np.zeros((out_h, out_w))
        for i in range(out_h):
            y = float(max((f32(i) + f32(0.5)) * f32(in_h / out_h) - f32(0.5), f32(0.0)))
            y0 = int(y)
            y1, ly = min(y0 + 1, in_h - 1), y - y0
            for j in range(out_w):
                x = float(max((f32(j) + f32(0.5)) * f32(in_w / out_w) - f32(0.5), f32(0.0)))
                x0 = int(x)
                x1, lx = min(x0 + 1, in_w - 1), x - x0
                out[i, j] = ((1 - ly) * ((1 - lx) * img[y0, x0] + lx * img[y0, x1])
                             + ly * ((1 - lx) * img[y1, x0] + lx * img[y1, x1]))
        return out

    got = inception.resize_bilinear(jnp.asarray(image)[None, :, :, None], 29, 17)
    np.testing.assert_allclose(np.asarray(got)[0, :, :, 0], reference(image, 29, 17), atol=1e-6)


def _tf_resize_bilinear(images: np.ndarray, size: int, half_pixel_centers: bool) -> np.ndarray:
    """TensorFlow's own ResizeBilinear kernel, the op inside the FID graph (independent reference)."""
    import tensorflow as tf

    return tf.raw_ops.ResizeBilinear(images=images, size=[size, size], align_corners=False,
                                     half_pixel_centers=half_pixel_centers).numpy()


@pytest.mark.parametrize("size", [256, 512])
def test_adm_inputs_are_tf1_resize_bilinear_on_the_0_255_scale(size):
    # ADM's evaluator (guided-diffusion evaluations/evaluator.py) feeds uint8 pixels to the 2015 graph,
    # whose head is ResizeBilinear (align_corners=False, half_pixel_centers=False) to 299, then
    # Sub 128 and Mul 1/128; torch-fidelity's inception-v3-compat does the same.
    images = np.random.default_rng(size).integers(0, 256, (2, size, size, 3)).astype(np.uint8)
    expected = (_tf_resize_bilinear(images.astype(np.float32), 299, False) - 128.0) / 128.0
    got = np.asarray(inception.preprocess(images, convention="adm"))
    np.testing.assert_allclose(got, expected, atol=3e-5)
    # [0, 1] floats of the same pixels are the same input.
    from_floats = np.asarray(inception.preprocess(images.astype(np.float32) / 255.0, convention="adm"))
    np.testing.assert_allclose(from_floats, expected, atol=3e-5)
    # The default convention is ADM's, in the network too.
    np.testing.assert_array_equal(np.asarray(inception.preprocess(images)), got)
    assert inception.InceptionV3().input_convention == "adm"


@pytest.mark.parametrize("size", [256, 512])
def test_pytorch_fid_inputs_are_half_pixel_bilinear_mapped_to_minus_one_one(size):
    # pytorch-fid: F.interpolate(bilinear, align_corners=False) of [0, 1] images, then 2x - 1; TF's
    # kernel with half_pixel_centers=True computes the same interpolation.
    images = np.random.default_rng(size + 1).integers(0, 256, (2, size, size, 3)).astype(np.uint8)
    expected = 2.0 * _tf_resize_bilinear(images.astype(np.float32) / 255.0, 299, True) - 1.0
    got = np.asarray(inception.preprocess(images, convention="pytorch_fid"))
    np.testing.assert_allclose(got, expected, atol=3e-6)
    # The two conventions are far apart on real-looking inputs (so a mix-up cannot pass unseen).
    adm = np.asarray(inception.preprocess(images, convention="adm"))
    assert np.abs(adm - got).max() > 0.05
    with pytest.raises(ValueError, match="unknown Inception input convention 'tf'"):
        inception.preprocess(images, convention="tf")


@pytest.fixture(scope="module")
def random_params():
    return inception.init_params(0)


def test_inception_forward_at_299_and_resized_sizes(random_params):
    features = inception.make_feature_fn()
    rng = np.random.default_rng(10)
    images = rng.random((2, 299, 299, 3), np.float32)
    pool, logits = features(random_params, images)
    assert pool.shape == (2, inception.FID_FEATURE_DIM) and pool.dtype == jnp.float32
    assert logits.shape == (2, inception.NUM_LOGITS)
    assert np.all(np.isfinite(pool)) and np.all(np.asarray(pool) >= 0)  # mean of ReLUs
    assert float(jnp.std(pool)) > 1e-3
    # A smaller, non-square uint8 input is resized to 299 first.
    small = rng.integers(0, 256, (1, 64, 48, 3), dtype=np.uint8)
    pool_small, logits_small = features(random_params, small)
    assert pool_small.shape == (1, 2048) and logits_small.shape == (1, 1008)
    assert np.all(np.isfinite(pool_small))
    # Same image as floats in [0, 1]: same features.
    pool_float, _ = features(random_params, small.astype(np.float32) / 255.0)
    np.testing.assert_allclose(pool_float, pool_small, rtol=1e-5, atol=1e-6)


# Independent NumPy model of pytorch-fid's FID Inception in torch layout (NCHW, state-dict names,
# torch shapes), written from torchvision's Inception3 + pytorch-fid's FID blocks.

def _np_conv_bn_relu(sd, name, x, out_ch, kernel, stride=1, padding=(0, 0)):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    weight = sd[f"{name}.conv.weight"]
    assert weight.shape == (out_ch, x.shape[1], kh, kw), (name, weight.shape)
    ph, pw = padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride]
    y = np.einsum("bchwij,ocij->bohw", windows, weight, optimize=True)
    scale = sd[f"{name}.bn.weight"] / np.sqrt(sd[f"{name}.bn.running_var"] + 1e-3)
    y = (y - sd[f"{name}.bn.running_mean"][:, None, None]) * scale[:, None, None]
    return np.maximum(y + sd[f"{name}.bn.bias"][:, None, None], 0.0)


def _np_max_pool(x, stride, padding):
    xp = np.pad(x, ((0, 0), (0, 0), (padding,) * 2, (padding,) * 2), constant_values=-np.inf)
    return np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))[
        :, :, ::stride, ::stride].max(axis=(-1, -2))


def _np_avg_pool_exclude_pad(x):
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ones = np.pad(np.ones(x.shape[2:]), 1)
    sums = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3)).sum(axis=(-1, -2))
    counts = np.lib.stride_tricks.sliding_window_view(ones, (3, 3)).sum(axis=(-1, -2))
    return sums / counts


def _np_fid_inception(sd, images_nhwc):
    c = _np_conv_bn_relu
    x = images_nhwc.transpose(0, 3, 1, 2).astype(np.float64) * 2.0 - 1.0
    x = c(sd, "Conv2d_1a_3x3", x, 32, 3, stride=2)
    x = c(sd, "Conv2d_2a_3x3", x, 32, 3)
    x = c(sd, "Conv2d_2b_3x3", x, 64, 3, padding=(1, 1))
    x = _np_max_pool(x, 2, 0)
    x = c(sd, "Conv2d_3b_1x1", x, 80, 1)
    x = c(sd, "Conv2d_4a_3x3", x, 192, 3)
    x = _np_max_pool(x, 2, 0)
    for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
        b1 = c(sd, f"{name}.branch1x1", x, 64, 1)
        b5 = c(sd, f"{name}.branch5x5_2", c(sd, f"{name}.branch5x5_1", x, 48, 1), 64, 5, padding=(2, 2))
        b3 = c(sd, f"{name}.branch3x3dbl_1", x, 64, 1)
        b3 = c(sd, f"{name}.branch3x3dbl_2", b3, 96, 3, padding=(1, 1))
        b3 = c(sd, f"{name}.branch3x3dbl_3", b3, 96, 3, padding=(1, 1))
        bp = c(sd, f"{name}.branch_pool", _np_avg_pool_exclude_pad(x), pool_features, 1)
        x = np.concatenate([b1, b5, b3, bp], axis=1)
    b3 = c(sd, "Mixed_6a.branch3x3", x, 384, 3, stride=2)
    bd = c(sd, "Mixed_6a.branch3x3dbl_1", x, 64, 1)
    bd = c(sd, "Mixed_6a.branch3x3dbl_2", bd, 96, 3, padding=(1, 1))
    bd = c(sd, "Mixed_6a.branch3x3dbl_3", bd, 96, 3, stride=2)
    x = np.concatenate([b3, bd, _np_max_pool(x, 2, 0)], axis=1)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        b1 = c(sd, f"{name}.branch1x1", x, 192, 1)
        b7 = c(sd, f"{name}.branch7x7_1", x, c7, 1)
        b7 = c(sd, f"{name}.branch7x7_2", b7, c7, (1, 7), padding=(0, 3))
        b7 = c(sd, f"{name}.branch7x7_3", b7, 192, (7, 1), padding=(3, 0))
        bd = c(sd, f"{name}.branch7x7dbl_1", x, c7, 1)
        bd = c(sd, f"{name}.branch7x7dbl_2", bd, c7, (7, 1), padding=(3, 0))
        bd = c(sd, f"{name}.branch7x7dbl_3", bd, c7, (1, 7), padding=(0, 3))
        bd = c(sd, f"{name}.branch7x7dbl_4", bd, c7, (7, 1), padding=(3, 0))
        bd = c(sd, f"{name}.branch7x7dbl_5", bd, 192, (1, 7), padding=(0, 3))
        bp = c(sd, f"{name}.branch_pool", _np_avg_pool_exclude_pad(x), 192, 1)
        x = np.concatenate([b1, b7, bd, bp], axis=1)
    b3 = c(sd, "Mixed_7a.branch3x3_2", c(sd, "Mixed_7a.branch3x3_1", x, 192, 1), 320, 3, stride=2)
    b7 = c(sd, "Mixed_7a.branch7x7x3_1", x, 192, 1)
    b7 = c(sd, "Mixed_7a.branch7x7x3_2", b7, 192, (1, 7), padding=(0, 3))
    b7 = c(sd, "Mixed_7a.branch7x7x3_3", b7, 192, (7, 1), padding=(3, 0))
    b7 = c(sd, "Mixed_7a.branch7x7x3_4", b7, 192, 3, stride=2)
    x = np.concatenate([b3, b7, _np_max_pool(x, 2, 0)], axis=1)
    for name, pool in (("Mixed_7b", "avg"), ("Mixed_7c", "max")):
        b1 = c(sd, f"{name}.branch1x1", x, 320, 1)
        b3 = c(sd, f"{name}.branch3x3_1", x, 384, 1)
        b3 = np.concatenate([c(sd, f"{name}.branch3x3_2a", b3, 384, (1, 3), padding=(0, 1)),
                             c(sd, f"{name}.branch3x3_2b", b3, 384, (3, 1), padding=(1, 0))], axis=1)
        bd = c(sd, f"{name}.branch3x3dbl_1", x, 448, 1)
        bd = c(sd, f"{name}.branch3x3dbl_2", bd, 384, 3, padding=(1, 1))
        bd = np.concatenate([c(sd, f"{name}.branch3x3dbl_3a", bd, 384, (1, 3), padding=(0, 1)),
                             c(sd, f"{name}.branch3x3dbl_3b", bd, 384, (3, 1), padding=(1, 0))], axis=1)
        pooled = _np_avg_pool_exclude_pad(x) if pool == "avg" else _np_max_pool(x, 1, 1)
        bp = c(sd, f"{name}.branch_pool", pooled, 192, 1)
        x = np.concatenate([b1, b3, bd, bp], axis=1)
    pool = x.mean(axis=(2, 3))
    assert sd["fc.weight"].shape == (1008, 2048) and sd["fc.bias"].shape == (1008,)
    return pool, pool @ sd["fc.weight"].T


_TEST_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias",
                       "mean": "running_mean", "var": "running_var"}


def _random_torch_state_dict(seed=11):
    """Random weights under the official names and torch shapes, derived from our parameter
    tree with an inverse mapping written here (not the converter's)."""
    rng = np.random.default_rng(seed)
    state_dict = {}
    for path, leaf in traverse_util.flatten_dict(inception.param_shapes()).items():
        *modules, name = path
        key = ".".join([*modules, _TEST_LEAF_TO_TORCH[name]])
        shape = leaf.shape
        if name == "kernel" and len(shape) == 4:  # (kh, kw, I, O) -> (O, I, kh, kw)
            torch_shape = (shape[3], shape[2], shape[0], shape[1])
            fan_in = shape[0] * shape[1] * shape[2]
            value = rng.standard_normal(torch_shape) * np.sqrt(2.0 / fan_in)
        elif name == "kernel":  # dense (I, O) -> (O, I)
            value = rng.standard_normal((shape[1], shape[0])) / np.sqrt(shape[0])
        elif name == "var":
            value = rng.uniform(0.5, 1.5, shape)
        elif name == "scale":
            value = rng.uniform(0.7, 1.3, shape)
        else:
            value = rng.normal(0.0, 0.1, shape)
        state_dict[key] = value.astype(np.float32)
        if name == "var":
            state_dict[key.replace("running_var", "num_batches_tracked")] = np.array(0, np.int64)
    return state_dict


def test_official_names_and_shapes():
    expected = convert_inception.expected_torch_shapes()
    conv_blocks = {k[: -len(".conv.weight")] for k in expected if k.endswith(".conv.weight")}
    assert len(conv_blocks) == 94 and len(expected) == 94 * 5 + 2
    assert expected["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert expected["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
    assert expected["Mixed_6e.branch7x7dbl_2.conv.weight"] == (192, 192, 7, 1)
    assert expected["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    assert expected["Mixed_7b.branch3x3dbl_1.conv.weight"] == (448, 1280, 1, 1)
    assert expected["fc.weight"] == (1008, 2048) and expected["fc.bias"] == (1008,)
    # torchvision documents 27,161,264 parameters for Inception3 with its auxiliary head and 1000
    # classes; the FID model drops the aux head and has 1008 classes.
    trainable = sum(int(np.prod(s)) for k, s in expected.items() if "running" not in k)
    aux_head = (768 * 128 + 2 * 128) + (128 * 768 * 25 + 2 * 768) + (768 * 1000 + 1000)
    assert trainable - 8 * 2048 - 8 + aux_head == 27_161_264


def test_converter_round_trip_matches_an_independent_numpy_model(tmp_path):
    state_dict = _random_torch_state_dict()
    params = convert_inception.convert_state_dict(state_dict)
    convert_inception.check_params(params)

    # The NumPy reference is pytorch-fid's (2x - 1 of [0, 1] pixels).
    model = inception.InceptionV3(input_convention="pytorch_fid", resize_input=False)
    # 139 px is the smallest input whose last blocks still see a 3x3 grid, so the pooling
    # branches of Mixed_7b (average, padding excluded) and Mixed_7c (max) are exercised.
    images = np.random.default_rng(12).random((1, 139, 147, 3)).astype(np.float32)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
    pool, logits = apply(params, images)
    ref_pool, ref_logits = _np_fid_inception(state_dict, images)
    np.testing.assert_allclose(pool, ref_pool, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(logits, ref_logits, rtol=2e-4, atol=2e-4)

    # File round trip through the CLI (torch-keyed .npz in, flat params .npz out) and loader.
    sd_path, out_path = str(tmp_path / "sd.npz"), str(tmp_path / "fid_inception.npz")
    np.savez(sd_path, **state_dict)
    convert_inception.main(["--input", sd_path, "--output", out_path])
    for loaded in (convert_inception.load_inception_params(out_path),
                   convert_inception.load_inception_params(sd_path)):
        pool2, logits2 = apply(loaded, images)
        np.testing.assert_array_equal(pool2, pool)
        np.testing.assert_array_equal(logits2, logits)
    # The fc bias is kept and used only on request.
    biased = inception.InceptionV3(input_convention="pytorch_fid", resize_input=False, logits_with_bias=True)
    _, logits_b = biased.apply({"params": params}, images)
    # Two separately compiled programs: their fp32 logits differ by ~1e-5 on some CPUs.
    np.testing.assert_allclose(logits_b - logits, np.broadcast_to(state_dict["fc.bias"], (1, 1008)),
                               atol=1e-4)
    assert np.abs(state_dict["fc.bias"]).mean() > 1e-2  # so the bias is far above that tolerance


def test_converter_names_missing_unexpected_and_misshaped_keys():
    good = _random_torch_state_dict()
    missing = dict(good)
    del missing["Mixed_6c.branch7x7dbl_3.bn.running_var"]
    with pytest.raises(ValueError, match=r"missing keys: Mixed_6c\.branch7x7dbl_3\.bn\.running_var"):
        convert_inception.convert_state_dict(missing)
    extra = dict(good, **{"AuxLogits.fc.weight": np.zeros((1008, 768), np.float32)})
    with pytest.raises(ValueError, match=r"unexpected keys: AuxLogits\.fc\.weight"):
        convert_inception.convert_state_dict(extra)
    bad = dict(good, **{"Mixed_5b.branch5x5_2.conv.weight": np.zeros((64, 48, 3, 3), np.float32)})
    with pytest.raises(ValueError, match=r"Mixed_5b\.branch5x5_2\.conv\.weight \(64, 48, 3, 3\)"):
        convert_inception.convert_state_dict(bad)
    params = convert_inception.convert_state_dict(good)
    del params["fc"]["bias"]
    with pytest.raises(ValueError, match="fc/bias"):
        convert_inception.check_params(params)


def test_missing_weight_file_gives_a_helpful_error(tmp_path):
    path = str(tmp_path / "fid_inception.npz")
    with pytest.raises(FileNotFoundError) as info:
        convert_inception.load_inception_params(path)
    message = str(info.value)
    assert convert_inception.FID_WEIGHTS_URL in message
    assert "pt_inception-2015-12-05-6726825d.pth" in message
    assert "python -m titok_var.tools.convert_inception" in message and path in message


def test_a_damaged_pth_is_read_without_torch_and_named(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"not really a checkpoint")
    with pytest.raises(ValueError, match="weights.pth is not a checkpoint"):
        convert_inception.load_inception_params(str(path))
    assert os.path.exists(path)
