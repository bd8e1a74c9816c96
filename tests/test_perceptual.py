"""Perceptual networks (LPIPS-VGG16, ConvNeXt-S), their loss and their weight converter.

The official torch math is re-implemented in NumPy (NCHW, float64, torch-named weights) in this
file, independently of the Flax code; narrow widths keep everything fast on CPU.
"""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from scipy.special import erf

from titok_var.losses import perceptual
from titok_var.models.convnext import (
    CONVNEXT_SMALL,
    ConvNeXt,
    convnext_logit_loss,
    resize_bilinear_antialiased,
)
from titok_var.models.lpips import LPIPS, VGG16_STAGES, unit_normalize
from titok_var.tools import convert_perceptual

TINY_VGG = ((4, 4), (8, 8), (8, 8, 8), (16, 16, 16), (16, 16, 16))  # VGG16's conv counts, narrow
TINY_CONVNEXT = {"dims": (8, 16, 16, 24), "depths": (2, 1, 2, 1)}
SIZE = 32


def tiny_lpips():
    return LPIPS(vgg_stages=TINY_VGG)


def tiny_convnext():
    return ConvNeXt(**TINY_CONVNEXT)


def random_torch_state_dict(arch, model, seed):
    """Random arrays under the official names and torch shapes of `model`."""
    rng = np.random.default_rng(seed)
    sd = {}
    for key, shape in convert_perceptual.expected_torch_shapes(arch, model).items():
        if key.startswith("lin"):  # trained LPIPS heads are non-negative
            value = np.abs(rng.normal(size=shape))
        elif key.endswith("layer_scale"):
            value = 0.5 + 0.1 * rng.normal(size=shape)
        elif key.endswith("weight") and len(shape) >= 2:
            value = rng.normal(size=shape) / math.sqrt(np.prod(shape[1:]))
        elif key.endswith("weight"):  # LayerNorm
            value = 1.0 + 0.1 * rng.normal(size=shape)
        else:
            value = 0.1 * rng.normal(size=shape)
        sd[key] = value.astype(np.float32)
    return sd


def split_lpips(sd):
    """(torchvision vgg16-style dict with an unused classifier, lin dict)."""
    vgg = {k: v for k, v in sd.items() if k.startswith("features.")}
    vgg["classifier.0.weight"] = np.zeros((3, 5), np.float32)
    return vgg, {k: v for k, v in sd.items() if k.startswith("lin")}


def random_images(seed, size=SIZE, batch=2):
    return np.random.default_rng(seed).uniform(0, 1, size=(batch, size, size, 3)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# NumPy references of the torch modules (NCHW, float64)


def np_conv(x, weight, bias=None, stride=1, padding=0, groups=1):
    batch, _, height, width = x.shape
    out_ch, in_per_group, kh, kw = weight.shape
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out_h, out_w = (height + 2 * padding - kh) // stride + 1, (width + 2 * padding - kw) // stride + 1
    xg = x.reshape(batch, groups, in_per_group, *x.shape[2:])
    wg = weight.reshape(groups, out_ch // groups, in_per_group, kh, kw).astype(np.float64)
    out = np.zeros((batch, groups, out_ch // groups, out_h, out_w))
    for i in range(kh):
        for j in range(kw):
            patch = xg[:, :, :, i:i + stride * out_h:stride, j:j + stride * out_w:stride]
            out += np.einsum("bgihw,goi->bgohw", patch, wg[:, :, :, i, j])
    out = out.reshape(batch, out_ch, out_h, out_w)
    return out if bias is None else out + bias[None, :, None, None]


def np_lpips(x_nhwc, y_nhwc, sd, stages):
    """taming/TiTok LPIPS.forward on [0, 1] images: (B,) distances."""
    cfg = [v for stage in stages for v in (*stage, "M")]
    shift = np.array([-0.030, -0.088, -0.188])[None, :, None, None]
    scale = np.array([0.458, 0.448, 0.450])[None, :, None, None]

    def features(img):
        h = ((img.transpose(0, 3, 1, 2).astype(np.float64) * 2 - 1) - shift) / scale
        taps, index = [], 0
        for v in cfg:
            if v == "M":  # torchvision MaxPool2d(2, 2); the relu just before is an LPIPS tap
                taps.append(h)
                b, c, hh, ww = h.shape
                h = h[:, :, : hh // 2 * 2, : ww // 2 * 2].reshape(b, c, hh // 2, 2, ww // 2, 2).max(axis=(3, 5))
                index += 1
            else:
                h = np.maximum(np_conv(h, sd[f"features.{index}.weight"], sd[f"features.{index}.bias"], padding=1), 0)
                index += 2
        return taps

    total = 0.0
    for k, (a, b) in enumerate(zip(features(x_nhwc), features(y_nhwc))):
        a = a / (np.sqrt(np.sum(a**2, axis=1, keepdims=True)) + 1e-10)
        b = b / (np.sqrt(np.sum(b**2, axis=1, keepdims=True)) + 1e-10)
        total = total + np_conv((a - b) ** 2, sd[f"lin{k}.model.1.weight"]).mean(axis=(1, 2, 3))
    return total


def np_layer_norm_channels(x, weight, bias, axis=1):
    mean = x.mean(axis=axis, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axis, keepdims=True)
    shape = [1] * x.ndim
    shape[axis] = -1
    return (x - mean) / np.sqrt(var + 1e-6) * weight.reshape(shape) + bias.reshape(shape)


def np_convnext(x_nchw, sd, dims, depths):
    """torchvision ConvNeXt.forward in eval mode: (B, 1000) logits."""
    p = lambda name: sd[name].astype(np.float64)
    x = np_conv(x_nchw, p("features.0.0.weight"), p("features.0.0.bias"), stride=4)
    x = np_layer_norm_channels(x, p("features.0.1.weight"), p("features.0.1.bias"))
    for stage, (dim, depth) in enumerate(zip(dims, depths)):
        if stage:
            d = f"features.{2 * stage}"
            x = np_layer_norm_channels(x, p(f"{d}.0.weight"), p(f"{d}.0.bias"))
            x = np_conv(x, p(f"{d}.1.weight"), p(f"{d}.1.bias"), stride=2)
        for j in range(depth):
            b = f"features.{2 * stage + 1}.{j}"
            h = np_conv(x, p(f"{b}.block.0.weight"), p(f"{b}.block.0.bias"), padding=3, groups=dim)
            h = h.transpose(0, 2, 3, 1)
            h = np_layer_norm_channels(h, p(f"{b}.block.2.weight"), p(f"{b}.block.2.bias"), axis=-1)
            h = h @ p(f"{b}.block.3.weight").T + p(f"{b}.block.3.bias")
            h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
            h = h @ p(f"{b}.block.5.weight").T + p(f"{b}.block.5.bias")
            x = x + p(f"{b}.layer_scale") * h.transpose(0, 3, 1, 2)
    x = x.mean(axis=(2, 3))
    x = np_layer_norm_channels(x, p("classifier.0.weight"), p("classifier.0.bias"))
    return x @ p("classifier.2.weight").T + p("classifier.2.bias")


def np_aa_bilinear_weights(in_size, out_size, dtype=np.float64):
    """(out, in) weights of torch's antialiased bilinear interpolation (align_corners=False),
    following `_compute_weights_aa`: window [xmin, xmin + xsize) around center = scale * (i + 0.5),
    triangle filter evaluated at (j + xmin - center + 0.5) / max(scale, 1), normalised. With
    dtype=np.float32 every step rounds as torch's float kernel does."""
    f = dtype
    scale = f(in_size) / f(out_size)
    support = scale if scale >= 1.0 else f(1.0)
    invscale = f(1.0) / scale if scale >= 1.0 else f(1.0)
    weights = np.zeros((out_size, in_size), dtype)
    for i in range(out_size):
        center = scale * (f(i) + f(0.5))
        xmin = max(int(center - support + f(0.5)), 0)
        xsize = min(int(center + support + f(0.5)), in_size) - xmin
        w = np.array([max(f(0.0), f(1.0) - abs((f(j + xmin) - center + f(0.5)) * invscale)) for j in range(xsize)], dtype)
        weights[i, xmin:xmin + xsize] = w / w.sum(dtype=dtype) if w.sum() else w
    return weights


def np_resize_aa(images_nhwc, out_h, out_w, dtype=np.float64):
    """Separable, rows then columns, as torch applies it."""
    rows = np_aa_bilinear_weights(images_nhwc.shape[1], out_h, dtype)
    cols = np_aa_bilinear_weights(images_nhwc.shape[2], out_w, dtype)
    out = np.einsum("oh,bhwc->bowc", rows, images_nhwc.astype(dtype), optimize=True)
    return np.einsum("bowc,pw->bopc", out, cols, optimize=True)


def np_convnext_logit_loss(x, y, sd, dims, depths):
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])

    def logits(img):
        img = (np_resize_aa(img, 224, 224) - mean) / std
        return np_convnext(img.transpose(0, 3, 1, 2), sd, dims, depths)

    return np.mean((logits(x) - logits(y)) ** 2)


# ---------------------------------------------------------------------------------------------
# Compiled functions and shared reference values (computed once)


@functools.cache
def lpips_fn():
    model = tiny_lpips()
    return jax.jit(lambda params, x, y: model.apply({"params": params}, x, y))


@functools.cache
def lpips_loss_and_grads():
    """jit of (params, x, y) -> (loss, (param grads, image grads)) of the "lpips" loss."""
    loss = perceptual.PerceptualLoss(weights=(("lpips", 1.0),), lpips=tiny_lpips())
    return jax.jit(jax.value_and_grad(lambda params, x, y: loss({"lpips": params}, x, y), argnums=(0, 1)))


@functools.cache
def convnext_loss_fn():
    model = tiny_convnext()
    return jax.jit(lambda params, x, y: convnext_logit_loss(params, model, x, y))


@functools.cache
def reference_case():
    """Random official-named weights of both tiny networks, images, and the NumPy losses."""
    lpips_sd = random_torch_state_dict("lpips", tiny_lpips(), seed=1)
    convnext_sd = random_torch_state_dict("convnext_s", tiny_convnext(), seed=2)
    x, y = random_images(3), random_images(4)
    return {
        "lpips_sd": lpips_sd,
        "convnext_sd": convnext_sd,
        "x": x,
        "y": y,
        "lpips": np_lpips(x, y, lpips_sd, TINY_VGG),
        "convnext": np_convnext_logit_loss(x, y, convnext_sd, **TINY_CONVNEXT),
    }


def converted(case):
    return {
        "lpips": convert_perceptual.convert_lpips(*split_lpips(case["lpips_sd"]), model=tiny_lpips()),
        "convnext_s": convert_perceptual.convert_convnext(case["convnext_sd"], model=tiny_convnext()),
    }


# ---------------------------------------------------------------------------------------------
# Resizing


def test_antialiased_resize_matches_hand_computed_torch_values():
    # 4 -> 2: scale 2, triangle of half-width 2 pixels; taps (3, 3, 1)/7 and (1, 3, 3)/7.
    x = jnp.arange(4.0).reshape(1, 1, 4, 1)
    np.testing.assert_allclose(np.asarray(resize_bilinear_antialiased(x, 1, 2))[0, 0, :, 0], [5 / 7, 16 / 7], rtol=1e-6)
    np.testing.assert_allclose(np_aa_bilinear_weights(4, 2) @ np.arange(4.0), [5 / 7, 16 / 7])


@pytest.mark.parametrize("in_hw,out_hw", [
    ((256, 256), (224, 224)),  # the TiTok case
    ((300, 180), (224, 224)),  # non-integer factors, one axis upsampled
    ((37, 23), (11, 16)),
    ((16, 16), (224, 224)),  # pure upsampling: plain bilinear
    ((7, 5), (5, 7)),
    ((224, 224), (224, 224)),  # identity
])
def test_antialiased_resize_matches_numpy_port_of_torch_kernel(in_hw, out_hw):
    images = np.random.default_rng(0).uniform(0, 1, size=(1, *in_hw, 3)).astype(np.float32)
    ours = np.asarray(resize_bilinear_antialiased(jnp.asarray(images), *out_hw))
    # float32 sample positions (JAX's and torch's alike) are off by ~1e-7 * size: up to ~2e-5 here.
    np.testing.assert_allclose(ours, np_resize_aa(images, *out_hw), atol=3e-5)
    if in_hw == (256, 256):  # the TiTok case: JAX and torch's float32 rounding agree to ~1 ulp
        np.testing.assert_allclose(ours, np_resize_aa(images, *out_hw, dtype=np.float32), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# LPIPS


def test_lpips_matches_numpy_reference_of_official_forward():
    case = reference_case()
    params = converted(case)["lpips"]
    ours = lpips_fn()(params, case["x"], case["y"])
    assert ours.shape == (2,)
    np.testing.assert_allclose(np.asarray(ours), case["lpips"], rtol=2e-5)


def test_lpips_is_zero_for_identical_images_positive_and_symmetric_otherwise():
    case = reference_case()
    params = converted(case)["lpips"]
    # XLA may round the two (identical) trunk passes differently in the last bit: ~1e-15.
    same = lpips_fn()(params, case["x"], case["x"])
    np.testing.assert_allclose(np.asarray(same), np.zeros(2), atol=1e-12)
    forward, backward = lpips_fn()(params, case["x"], case["y"]), lpips_fn()(params, case["y"], case["x"])
    assert np.all(np.asarray(forward) > 0.01)
    np.testing.assert_allclose(np.asarray(forward), np.asarray(backward), rtol=1e-6)


def test_lpips_gradient_is_finite_where_features_vanish():
    # A large negative last bias kills every relu5_3 unit: its norm is 0 at every pixel.
    case = reference_case()
    params = converted(case)["lpips"]
    params["vgg"]["features_28"]["bias"] = np.full_like(params["vgg"]["features_28"]["bias"], -1e4)
    _, (_, grad) = lpips_loss_and_grads()(params, case["x"], case["y"])
    assert np.all(np.isfinite(np.asarray(grad))) and float(jnp.abs(grad).max()) > 0
    features = jnp.zeros((1, 2, 2, 3)).at[0, 0, 0].set(jnp.array([3.0, 4.0, 0.0]))
    np.testing.assert_allclose(np.asarray(unit_normalize(features))[0, 0, 0], [0.6, 0.8, 0.0], rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(jax.grad(lambda f: jnp.sum(unit_normalize(f)))(features))))


def test_lpips_rejects_bad_inputs():
    params = converted(reference_case())["lpips"]
    model = tiny_lpips()
    with pytest.raises(ValueError, match=re.escape("at least 16x16 pixels")):
        model.apply({"params": params}, jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="same shape"):
        model.apply({"params": params}, jnp.zeros((1, 32, 32, 3)), jnp.zeros((2, 32, 32, 3)))


# ---------------------------------------------------------------------------------------------
# ConvNeXt


def test_convnext_logits_match_numpy_reference_of_torchvision_forward():
    case = reference_case()
    params = converted(case)["convnext_s"]
    images = np.random.default_rng(5).normal(size=(2, 32, 32, 3)).astype(np.float32)
    logits = tiny_convnext().apply({"params": params}, images)
    assert logits.shape == (2, 1000)
    ref = np_convnext(images.transpose(0, 3, 1, 2), case["convnext_sd"], **TINY_CONVNEXT)
    np.testing.assert_allclose(np.asarray(logits), ref, atol=2e-4, rtol=2e-4)


def test_convnext_logit_loss_matches_numpy_reference_and_is_zero_for_identical_images():
    case = reference_case()
    params = converted(case)["convnext_s"]
    ours = convnext_loss_fn()(params, case["x"], case["y"])
    np.testing.assert_allclose(float(ours), case["convnext"], rtol=1e-4)
    assert abs(float(convnext_loss_fn()(params, case["x"], case["x"]))) < 1e-12
    with pytest.raises(ValueError, match=re.escape("at least 32x32 pixels")):
        tiny_convnext().apply({"params": params}, jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError, match="same shape"):
        convnext_logit_loss(params, tiny_convnext(), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 32, 32, 1)))


def test_official_presets_parameter_counts_and_names():
    def count(shapes, prefix=()):
        return sum(int(np.prod(s)) for p, s in shapes.items() if p[: len(prefix)] == prefix)

    convnext_shapes = convert_perceptual.param_shapes("convnext_s", ConvNeXt(**CONVNEXT_SMALL))
    assert count(convnext_shapes) == 50_223_688
    lpips_shapes = convert_perceptual.param_shapes("lpips")
    assert count(lpips_shapes, ("vgg",)) == 14_714_688
    assert count(lpips_shapes) - count(lpips_shapes, ("vgg",)) == 64 + 128 + 256 + 512 + 512

    convnext_keys = convert_perceptual.expected_torch_shapes("convnext_s")
    assert len(convnext_keys) == 4 + 36 * 9 + 3 * 4 + 4
    for key, shape in {
        "features.0.0.weight": (96, 3, 4, 4),
        "features.0.1.weight": (96,),
        "features.1.0.block.0.weight": (96, 1, 7, 7),
        "features.1.2.layer_scale": (96, 1, 1),
        "features.5.26.block.3.weight": (1536, 384),
        "features.6.1.weight": (768, 384, 2, 2),
        "features.7.2.block.5.bias": (768,),
        "classifier.0.bias": (768,),
        "classifier.2.weight": (1000, 768),
    }.items():
        assert convnext_keys[key] == shape, key
    lpips_keys = convert_perceptual.expected_torch_shapes("lpips")
    assert sorted(k for k in lpips_keys if k.startswith("features.") and k.endswith("weight")) == sorted(
        f"features.{i}.weight" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28))
    assert lpips_keys["features.28.weight"] == (512, 512, 3, 3)
    assert lpips_keys["lin4.model.1.weight"] == (1, 512, 1, 1)
    assert VGG16_STAGES[-1] == (512, 512, 512)


# ---------------------------------------------------------------------------------------------
# Converter


def to_torch(arch, params):
    """Inverse mapping written for the test: our params -> official names and torch layouts."""
    sd = {}
    for path, value in traverse_util.flatten_dict(params).items():
        value = np.asarray(value)
        modules = [m for m in path[:-1] if m != "vgg"]
        names = ".".join(f"{m}.model.1" if re.fullmatch(r"lin\d", m) else m.replace("_", ".") for m in modules)
        leaf = path[-1]
        if leaf == "kernel" and value.ndim == 4:
            sd[f"{names}.weight"] = value.transpose(3, 2, 0, 1)
        elif leaf == "kernel":
            sd[f"{names}.weight"] = value.T
        elif leaf == "layer_scale":
            sd[f"{names}.layer_scale"] = value[:, None, None]
        else:
            sd[f"{names}.{'bias' if leaf == 'bias' else 'weight'}"] = value
    return sd


def test_converter_round_trip_gives_identical_params():
    params = converted(reference_case())
    lpips_sd = to_torch("lpips", params["lpips"])
    assert set(lpips_sd) == set(convert_perceptual.expected_torch_shapes("lpips", tiny_lpips()))
    again = {
        "lpips": convert_perceptual.convert_lpips(*split_lpips(lpips_sd), model=tiny_lpips()),
        "convnext_s": convert_perceptual.convert_convnext(to_torch("convnext_s", params["convnext_s"]), tiny_convnext()),
    }
    assert jax.tree.structure(again) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    # A full taming/TiTok LPIPS module state dict (slices keep torchvision's indices) converts alike.
    module_sd = {re.sub(r"^features\.", "net.slice1.", k): v for k, v in lpips_sd.items()}
    module_sd["scaling_layer.shift"] = np.array([-0.030, -0.088, -0.188], np.float32).reshape(1, 3, 1, 1)
    module_sd["scaling_layer.scale"] = np.array([0.458, 0.448, 0.450], np.float32).reshape(1, 3, 1, 1)
    for a, b in zip(jax.tree.leaves(convert_perceptual.convert_lpips(module_sd, model=tiny_lpips())),
                    jax.tree.leaves(params["lpips"])):
        np.testing.assert_array_equal(a, b)
    module_sd["scaling_layer.scale"] = np.ones((1, 3, 1, 1), np.float32)
    with pytest.raises(ValueError, match="not the LPIPS constants"):
        convert_perceptual.convert_lpips(module_sd, model=tiny_lpips())


def test_converter_names_missing_unexpected_and_misshaped_keys():
    case = reference_case()
    model = tiny_convnext()
    sd = dict(case["convnext_sd"])
    del sd["features.5.1.block.3.bias"]
    with pytest.raises(ValueError, match=r"1 missing keys: features\.5\.1\.block\.3\.bias \(64,\)$"):
        convert_perceptual.convert_convnext(sd, model)
    sd = {**case["convnext_sd"], "features.1.0.gamma": np.ones(8, np.float32)}
    with pytest.raises(ValueError, match=r"1 unexpected keys: features\.1\.0\.gamma$"):
        convert_perceptual.convert_convnext(sd, model)
    sd = dict(case["convnext_sd"])
    sd["features.1.0.layer_scale"] = sd["features.1.0.layer_scale"].reshape(8)
    with pytest.raises(ValueError, match=re.escape("mis-shaped keys: features.1.0.layer_scale (8,) (expected (8, 1, 1))")):
        convert_perceptual.convert_convnext(sd, model)
    with pytest.raises(ValueError, match="convnext_small-0c510722.pth.*mis-shaped keys"):
        convert_perceptual.convert_convnext(case["convnext_sd"])  # tiny weights vs the released model

    vgg, lin = split_lpips(case["lpips_sd"])
    with pytest.raises(ValueError) as error:
        convert_perceptual.convert_lpips(vgg, None, tiny_lpips())
    assert "vgg.pth" in str(error.value) and "5 missing keys: lin0.model.1.weight (1, 4, 1, 1)" in str(error.value)
    with pytest.raises(ValueError, match="both hold 1 keys: features.0.weight"):
        convert_perceptual.convert_lpips(vgg, {**lin, "features.0.weight": vgg["features.0.weight"]}, tiny_lpips())
    with pytest.raises(ValueError, match=r"1 unexpected keys: lin5\.model\.1\.weight$"):
        convert_perceptual.convert_lpips(vgg, {**lin, "lin5.model.1.weight": lin["lin0.model.1.weight"]}, tiny_lpips())


def test_converted_files_load_back_and_bad_files_fail_loudly(tmp_path):
    case = reference_case()
    np.savez(tmp_path / "vgg16.npz", **split_lpips(case["lpips_sd"])[0])
    np.savez(tmp_path / "lin.npz", **split_lpips(case["lpips_sd"])[1])
    np.savez(tmp_path / "convnext.npz", **case["convnext_sd"])
    out = tmp_path / "converted"
    _, written = convert_perceptual.convert_files(
        "lpips", str(tmp_path / "vgg16.npz"), str(out), str(tmp_path / "lin.npz"), model=tiny_lpips())
    assert written == str(out / "lpips_vgg16.npz")
    convert_perceptual.convert_files("convnext_s", str(tmp_path / "convnext.npz"), str(out), model=tiny_convnext())
    expected = converted(case)
    for arch, model in (("lpips", tiny_lpips()), ("convnext_s", tiny_convnext())):
        loaded = convert_perceptual.load_params(arch, convert_perceptual.converted_path(arch, out), model)
        for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(expected[arch])):
            np.testing.assert_array_equal(a, b)
    # A converted file of the tiny model does not load as the released one.
    with pytest.raises(ValueError, match="does not match the convnext_s params: .*mis-shaped"):
        convert_perceptual.load_params("convnext_s", convert_perceptual.converted_path("convnext_s", out))
    with pytest.raises(ValueError, match="--lin only applies"):
        convert_perceptual.main(["--arch", "convnext_s", "--input", str(tmp_path / "convnext.npz"),
                                 "--lin", "x.pth", "--output", str(out)])
    (tmp_path / "vgg16.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="vgg16.pth is not a checkpoint"):  # read without torch
        convert_perceptual.read_state_dict("lpips", str(tmp_path / "vgg16.pth"))


# ---------------------------------------------------------------------------------------------
# The loss entry point


def test_missing_weights_error_names_files_and_command(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        perceptual.make_perceptual_loss("convnext_s")
    message = str(error.value)
    assert "convnext_small-0c510722.pth" in message
    assert "https://download.pytorch.org/models/convnext_small-0c510722.pth" in message
    assert "python -m titok_var.tools.convert_perceptual --arch convnext_s --input convnext_small-0c510722.pth" in message

    with pytest.raises(FileNotFoundError) as error:
        perceptual.make_perceptual_loss("lpips", str(tmp_path))
    message = str(error.value)
    assert str(tmp_path / "lpips_vgg16.npz") in message
    assert "vgg16-397923af.pth" in message and "d507d7349b931f0638a25a48a722f98a" in message
    assert f"--arch lpips --input vgg16-397923af.pth --lin vgg.pth --output {tmp_path}" in message

    with pytest.raises(FileNotFoundError, match="absent.pth not found. Fetch"):
        convert_perceptual.main(["--arch", "lpips", "--input", str(tmp_path / "absent.pth"), "--output", str(tmp_path)])
    with pytest.raises(ValueError, match="explicit rng"):
        perceptual.make_perceptual_loss("lpips", random_init=True)


@pytest.mark.parametrize("kind,weights", [
    ("lpips", {"lpips": 1.0}),
    ("convnext_s", {"convnext_s": 1.0}),
    ("lpips-convnext_s-1.0-0.1", {"lpips": 1.0, "convnext_s": 0.1}),
    ("lpips-convnext_s-2-1e-1", {"lpips": 2.0, "convnext_s": 0.1}),
])
def test_kind_strings_parse_like_the_official_ones(kind, weights):
    assert perceptual.parse_kind(kind) == weights


@pytest.mark.parametrize("kind", ["vgg", "lpips-convnext_s", "convnext_s-lpips-1-2", "lpips-convnext_s-0-0", "lpips-convnext_s--1-2"])
def test_bad_kind_strings_raise(kind):
    with pytest.raises(ValueError, match="perceptual loss"):
        perceptual.parse_kind(kind)


def test_mixed_loss_equals_weighted_numpy_reference_and_only_images_get_gradients(tmp_path):
    case = reference_case()
    params = converted(case)
    out = tmp_path / "weights"
    out.mkdir()
    convert_perceptual.save_params(params["lpips"], convert_perceptual.converted_path("lpips", out))
    with pytest.raises(FileNotFoundError, match=re.escape(f"convnext_s weights (convnext_small.npz) not found at '{out}")):
        perceptual.make_perceptual_loss("lpips-convnext_s-1-1", str(out), lpips_model=tiny_lpips())
    convert_perceptual.save_params(params["convnext_s"], convert_perceptual.converted_path("convnext_s", out))
    loss, loaded = perceptual.make_perceptual_loss(
        "lpips-convnext_s-1.0-0.1", str(out), lpips_model=tiny_lpips(), convnext_model=tiny_convnext())
    assert set(loaded) == {"lpips", "convnext_s"}
    expected = (1.0 * case["lpips"].mean() + 0.1 * case["convnext"]) / 1.1
    np.testing.assert_allclose(float(jax.jit(loss)(loaded, case["x"], case["y"])), expected, rtol=1e-4)

    single, single_params = perceptual.make_perceptual_loss(
        "lpips", str(out / "lpips_vgg16.npz"), lpips_model=tiny_lpips())
    assert single.weights == (("lpips", 1.0),) and single.convnext is None
    value, (param_grads, image_grads) = lpips_loss_and_grads()(single_params["lpips"], case["x"], case["y"])
    np.testing.assert_allclose(float(value), case["lpips"].mean(), rtol=2e-5)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(param_grads))  # frozen network
    assert np.all(np.isfinite(np.asarray(image_grads))) and float(jnp.abs(image_grads).max()) > 0


def test_random_init_builds_usable_networks():
    loss, params = perceptual.make_perceptual_loss(
        # An rbg key: threefry init compiles ~5x slower on CPU.
        "lpips-convnext_s-1.0-0.1", random_init=True, rng=jax.random.key(0, impl="rbg"),
        lpips_model=tiny_lpips(), convnext_model=tiny_convnext())
    x, y = random_images(6), random_images(7)
    components, value, same = jax.jit(
        lambda p: (loss.components(p, x, y), loss(p, x, y), loss(p, x, x)))(params)
    assert float(components["lpips"]) > 0 and float(components["convnext_s"]) > 0
    np.testing.assert_allclose(
        float(value), (float(components["lpips"]) + 0.1 * float(components["convnext_s"])) / 1.1, rtol=1e-5)
    assert abs(float(same)) < 1e-12
    # The untrained lin heads are the all-ones "baseline" (a plain channel sum).
    assert all(np.all(np.asarray(params["lpips"][f"lin{k}"]["kernel"]) == 1.0) for k in range(5))
