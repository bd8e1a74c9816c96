"""VAR multi-scale VQVAE: torch-exact resizing, residual quantizer, model, converter.

The official model is checked through NumPy re-implementations of the torch forward passes
(NCHW, torch-named weights), written independently of the JAX code. Parameters come from
`jax.eval_shape` + NumPy random values: jitted `init` compiles slowly on CPU (threefry).
"""

import functools
import math
import re
from fractions import Fraction

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from titok_var.models.var_vqvae import VQVAE
from titok_var.quantizers.multiscale import (
    VAR_PATCH_NUMS_256,
    VAR_PATCH_NUMS_512,
    MultiScaleResidualQuantizer,
    area_matrix,
    area_resize,
    bicubic_resize,
    phi_indices,
    token_count,
)
from titok_var.tools import convert_var

# 16 px images, 8x8 latent, scales 1, 3, 8: one down/upsample, nin shortcuts, attention at 8x8.
TINY = {"codebook_size": 64, "code_dim": 8, "ch": 32, "ch_mult": (1, 2), "num_res_blocks": 1, "patch_nums": (1, 3, 8)}


def random_params(module, *args, seed=0, method=None):
    """Random float32 params with the module's tree structure, without compiling `init`."""
    abstract = jax.eval_shape(functools.partial(module.init, method=method), jax.random.key(0), *args)
    flat = traverse_util.flatten_dict(nn.unbox(abstract)["params"])
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in flat.items():
        shape = leaf.shape
        if path[-1] == "kernel":
            value = rng.normal(size=shape) / math.sqrt(np.prod(shape[:-1]))
        elif path[-1] == "scale":
            value = 1.0 + 0.1 * rng.normal(size=shape)
        elif path[-1] == "bias":
            value = 0.1 * rng.normal(size=shape)
        else:  # codebook
            value = rng.normal(size=shape)
        out[path] = value.astype(np.float32)
    return traverse_util.unflatten_dict(out)


def random_indices(patch_nums, codebook_size, batch, seed):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.integers(0, codebook_size, (batch, p, p)), jnp.int32) for p in patch_nums]


# ---------------------------------------------------------------------------------------------
# NumPy references of torch's formulas (per output pixel, as torch's kernels loop)


def np_bicubic_2d(x, out_h, out_w, a=-0.75):
    """torch upsample_bicubic2d, align_corners=False, on one (H, W) plane, float64."""
    in_h, in_w = x.shape

    def near(t):
        return ((a + 2) * t - (a + 3)) * t * t + 1

    def far(t):
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a

    def weights(t):
        return [far(t + 1), near(t), near(1 - t), far(2 - t)]

    out = np.empty((out_h, out_w))
    for oy in range(out_h):
        real_y = in_h / out_h * (oy + 0.5) - 0.5
        iy = math.floor(real_y)
        wy = weights(real_y - iy)
        for ox in range(out_w):
            real_x = in_w / out_w * (ox + 0.5) - 0.5
            ix = math.floor(real_x)
            wx = weights(real_x - ix)
            rows = []
            for k in range(4):
                yy = min(max(iy - 1 + k, 0), in_h - 1)
                taps = [x[yy, min(max(ix - 1 + j, 0), in_w - 1)] for j in range(4)]
                rows.append(sum(w * v for w, v in zip(wx, taps)))
            out[oy, ox] = sum(w * r for w, r in zip(wy, rows))
    return out


def np_area_2d(x, out_h, out_w):
    """torch adaptive_avg_pool2d on one (H, W) plane (bins [floor(i*in/out), ceil((i+1)*in/out)))."""
    in_h, in_w = x.shape
    out = np.empty((out_h, out_w))
    for oy in range(out_h):
        y0, y1 = math.floor(Fraction(oy * in_h, out_h)), math.ceil(Fraction((oy + 1) * in_h, out_h))
        for ox in range(out_w):
            x0, x1 = math.floor(Fraction(ox * in_w, out_w)), math.ceil(Fraction((ox + 1) * in_w, out_w))
            out[oy, ox] = x[y0:y1, x0:x1].mean()
    return out


def np_resize_nchw(x, size, plane_fn):
    out = np.empty(x.shape[:2] + (size, size))
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            out[b, c] = plane_fn(x[b, c], size, size)
    return out


def nhwc_apply(fn, x_nhwc, size):
    """Runs our NHWC resize on an (H, W) plane."""
    return np.asarray(fn(jnp.asarray(x_nhwc[None, :, :, None], jnp.float32), size))[0, :, :, 0]


RESIZE_CASES = [  # (in_h, in_w) -> (out_h, out_w): up, down, non-integer and non-square factors
    ((1, 1), (8, 8)),
    ((2, 3), (8, 8)),
    ((3, 5), (16, 13)),
    ((13, 16), (16, 16)),
    ((16, 16), (3, 3)),
    ((16, 13), (3, 5)),
    ((16, 16), (13, 10)),
    ((7, 9), (2, 4)),
]


@pytest.mark.parametrize("in_hw,out_hw", RESIZE_CASES)
def test_resizes_match_numpy_torch_reference(in_hw, out_hw):
    x = np.random.default_rng(0).normal(size=in_hw)
    np.testing.assert_allclose(nhwc_apply(bicubic_resize, x, out_hw), np_bicubic_2d(x, *out_hw), atol=2e-6)
    np.testing.assert_allclose(nhwc_apply(area_resize, x, out_hw), np_area_2d(x, *out_hw), atol=2e-6)


def test_bicubic_matches_published_torch_output():
    # torch: F.interpolate(arange(8).view(1, 2, 2, 2), scale_factor=2, mode='bicubic',
    # align_corners=False), values as printed in torch's own test (5 decimals).
    expected_plane0 = np.array([
        [-0.31641, 0.01562, 0.56250, 0.89453],
        [0.34766, 0.67969, 1.22656, 1.55859],
        [1.44141, 1.77344, 2.32031, 2.65234],
        [2.10547, 2.43750, 2.98438, 3.31641],
    ])
    x = jnp.arange(8.0).reshape(2, 2, 2).transpose(1, 2, 0)[None]  # NCHW (1, 2, 2, 2) -> NHWC
    out = np.asarray(bicubic_resize(x, 4))[0]
    np.testing.assert_allclose(out[..., 0], expected_plane0, atol=1e-5)
    np.testing.assert_allclose(out[..., 1], expected_plane0 + 4.0, atol=1e-5)
    # jax.image.resize's cubic kernel (A = -0.5, other edges) is a different function.
    assert np.abs(np.asarray(jax.image.resize(x, (1, 4, 4, 2), "cubic")) - np.asarray(bicubic_resize(x, 4))).max() > 0.05


def test_area_bins_overlap_for_non_integer_factors():
    m = area_matrix(3, 16)
    assert [tuple(np.nonzero(row)[0][[0, -1]]) for row in m] == [(0, 5), (5, 10), (10, 15)]
    np.testing.assert_allclose(m.sum(axis=1), 1.0)


# ---------------------------------------------------------------------------------------------
# Quantizer


def test_default_schedule_has_680_tokens_and_official_phi_table():
    assert token_count(VAR_PATCH_NUMS_256) == 680
    assert token_count(VAR_PATCH_NUMS_512) == 2240
    assert phi_indices(10, 4) == (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)
    assert phi_indices(3, 1) == (0, 0, 0)
    quantizer = MultiScaleResidualQuantizer(codebook_size=16, code_dim=4)  # default 10-scale schedule
    params = random_params(quantizer, jnp.zeros((1, 16, 16, 4)))
    assert sorted(params) == ["embedding", "phi_0", "phi_1", "phi_2", "phi_3"]
    indices = random_indices(VAR_PATCH_NUMS_256, 16, batch=2, seed=0)
    var_input = quantizer.apply({"params": params}, indices, method="indices_to_var_input")
    assert var_input.shape == (2, 680 - 1, 4)
    assert VQVAE().num_tokens == 680


def quantizer_and_params(patch_nums=(1, 2, 3, 5), seed=0):
    quantizer = MultiScaleResidualQuantizer(codebook_size=32, code_dim=6, patch_nums=patch_nums)
    size = patch_nums[-1]
    return quantizer, random_params(quantizer, jnp.zeros((1, size, size, 6)), seed=seed)


def test_teacher_forcing_input_equals_incremental_sampling_path():
    quantizer, params = quantizer_and_params()
    variables = {"params": params}
    patch_nums = quantizer.patch_nums
    indices = random_indices(patch_nums, 32, batch=3, seed=1)
    teacher = quantizer.apply(variables, indices, method="indices_to_var_input")
    assert teacher.shape == (3, token_count(patch_nums) - 1, 6)

    f_hat = jnp.zeros((3, 5, 5, 6), jnp.float32)
    steps = []
    for si, idx in enumerate(indices):
        h = quantizer.apply(variables, idx, method="lookup")
        if si % 2:  # the step accepts (B, p*p, C) as the transformer produces it
            h = h.reshape(3, -1, 6)
        f_hat, nxt = quantizer.apply(variables, si, f_hat, h, method="next_autoregressive_input")
        if si < len(patch_nums) - 1:
            assert nxt.shape == (3, patch_nums[si + 1], patch_nums[si + 1], 6)
            steps.append(nxt.reshape(3, -1, 6))
        else:
            np.testing.assert_array_equal(np.asarray(nxt), np.asarray(f_hat))
    np.testing.assert_array_equal(np.asarray(jnp.concatenate(steps, axis=1)), np.asarray(teacher))
    np.testing.assert_array_equal(
        np.asarray(f_hat), np.asarray(quantizer.apply(variables, indices, method="indices_to_fhat"))
    )
    # Sensitivity: another scale-1 token map changes the rows of every later scale.
    changed = list(indices)
    changed[1] = (indices[1] + 1) % 32
    other = quantizer.apply(variables, changed, method="indices_to_var_input")
    difference = np.abs(np.asarray(other - teacher))
    assert difference[:, :4].max() == 0  # input of scale 1 depends on scale 0 only
    assert (difference[:, 4:].max(axis=(0, 2)) > 0).all()  # every later row changes


def test_jitted_paths_agree_too():
    quantizer, params = quantizer_and_params()
    variables = {"params": params}
    indices = random_indices(quantizer.patch_nums, 32, batch=2, seed=2)
    teacher = jax.jit(lambda v, i: quantizer.apply(v, i, method="indices_to_var_input"))(variables, indices)

    @jax.jit
    def incremental(v, ids):
        f_hat, rows = jnp.zeros((2, 5, 5, 6)), []
        for si, idx in enumerate(ids):
            h = quantizer.apply(v, idx, method="lookup")
            f_hat, nxt = quantizer.apply(v, si, f_hat, h, method="next_autoregressive_input")
            rows.append(nxt.reshape(2, -1, 6))
        return jnp.concatenate(rows[:-1], axis=1)

    np.testing.assert_allclose(incremental(variables, indices), teacher, atol=1e-6, rtol=1e-6)


def test_indices_to_fhat_equals_fhat_accumulated_while_quantizing():
    quantizer, params = quantizer_and_params()
    variables = {"params": params}
    f = jax.random.normal(jax.random.key(3), (2, 5, 5, 6))
    indices = quantizer.apply(variables, f, method="f_to_indices")
    assert [i.shape for i in indices] == [(2, p, p) for p in quantizer.patch_nums]
    assert all(i.dtype == jnp.int32 for i in indices)
    f_hats = quantizer.apply(variables, f, method="f_to_fhats")
    decoded = quantizer.apply(variables, indices, True, method="indices_to_fhat")
    for a, b in zip(f_hats, decoded):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Flattened (B, p*p) token maps (the official layout) decode the same.
    flat = [i.reshape(2, -1) for i in indices]
    np.testing.assert_array_equal(
        np.asarray(quantizer.apply(variables, flat, method="indices_to_fhat")), np.asarray(f_hats[-1])
    )
    # The training forward sees the same tokens and returns f_hat's value (straight through).
    st, aux = quantizer.apply(variables, f)
    for a, b in zip(aux["indices"], indices):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(st, f_hats[-1], atol=1e-5)
    mse = [float(jnp.mean(jnp.square(fh - f))) for fh in f_hats]
    np.testing.assert_allclose(aux["codebook_loss"], np.mean(mse), rtol=1e-5)
    np.testing.assert_allclose(aux["commitment_loss"], 0.25 * np.mean(mse), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# NumPy reference of the official torch model (NCHW, torch-named state dict)


def np_conv(x, sd, name, stride=1, pad=(1, 1, 1, 1)):
    """torch Conv2d (cross-correlation) with explicit (top, bottom, left, right) zero padding."""
    w, b = sd[f"{name}.weight"].astype(np.float64), sd[f"{name}.bias"].astype(np.float64)
    x = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[1]), (pad[2], pad[3])))
    _, _, kh, kw = w.shape
    out_h = (x.shape[2] - kh) // stride + 1
    out_w = (x.shape[3] - kw) // stride + 1
    out = np.zeros((x.shape[0], w.shape[0], out_h, out_w))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i : i + stride * out_h : stride, j : j + stride * out_w : stride]
            out += np.einsum("bihw,oi->bohw", patch, w[:, :, i, j])
    return out + b[None, :, None, None]


def np_group_norm(x, sd, name, groups=32, eps=1e-6):
    b, c, h, w = x.shape
    g = x.reshape(b, groups, -1)
    g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)
    g = g.reshape(b, c, h, w)
    return g * sd[f"{name}.weight"][None, :, None, None] + sd[f"{name}.bias"][None, :, None, None]


def np_silu(x):
    return x / (1.0 + np.exp(-x))


def np_resnet(x, sd, name):
    h = np_conv(np_silu(np_group_norm(x, sd, f"{name}.norm1")), sd, f"{name}.conv1")
    h = np_conv(np_silu(np_group_norm(h, sd, f"{name}.norm2")), sd, f"{name}.conv2")
    if f"{name}.nin_shortcut.weight" in sd:
        x = np_conv(x, sd, f"{name}.nin_shortcut", pad=(0, 0, 0, 0))
    return x + h


def np_attn(x, sd, name):
    b, c, h, w = x.shape
    qkv = np_conv(np_group_norm(x, sd, f"{name}.norm"), sd, f"{name}.qkv", pad=(0, 0, 0, 0))
    q, k, v = qkv.reshape(b, 3, c, h * w).transpose(1, 0, 2, 3)  # each (B, C, HW)
    logits = np.einsum("bci,bcj->bij", q, k) * c**-0.5
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bij,bcj->bci", weights, v).reshape(b, c, h, w)
    return x + np_conv(out, sd, f"{name}.proj_out", pad=(0, 0, 0, 0))


def np_encoder(x, sd, ch_mult, num_res_blocks):
    h = np_conv(x, sd, "encoder.conv_in")
    last = len(ch_mult) - 1
    for level in range(len(ch_mult)):
        for j in range(num_res_blocks):
            h = np_resnet(h, sd, f"encoder.down.{level}.block.{j}")
            if level == last:
                h = np_attn(h, sd, f"encoder.down.{level}.attn.{j}")
        if level != last:  # pad right and bottom only, stride 2
            h = np_conv(h, sd, f"encoder.down.{level}.downsample.conv", stride=2, pad=(0, 1, 0, 1))
    h = np_resnet(np_attn(np_resnet(h, sd, "encoder.mid.block_1"), sd, "encoder.mid.attn_1"), sd, "encoder.mid.block_2")
    return np_conv(np_silu(np_group_norm(h, sd, "encoder.norm_out")), sd, "encoder.conv_out")


def np_decoder(z, sd, ch_mult, num_res_blocks):
    h = np_conv(z, sd, "decoder.conv_in")
    h = np_resnet(np_attn(np_resnet(h, sd, "decoder.mid.block_1"), sd, "decoder.mid.attn_1"), sd, "decoder.mid.block_2")
    last = len(ch_mult) - 1
    for level in reversed(range(len(ch_mult))):
        for j in range(num_res_blocks + 1):
            h = np_resnet(h, sd, f"decoder.up.{level}.block.{j}")
            if level == last:
                h = np_attn(h, sd, f"decoder.up.{level}.attn.{j}")
        if level != 0:
            h = np_conv(h.repeat(2, axis=2).repeat(2, axis=3), sd, f"decoder.up.{level}.upsample.conv")
    return np_conv(np_silu(np_group_norm(h, sd, "decoder.norm_out")), sd, "decoder.conv_out")


def np_quantize(f, sd, patch_nums, ratio=0.5, share=4):
    """Official f_to_idxBl_or_fhat (NCHW): token maps and the final f_hat."""
    codebook = sd["quantize.embedding.weight"].astype(np.float64)
    count = len(patch_nums)
    ticks = np.linspace(1 / 3 / share, 1 - 1 / 3 / share, share)
    f_rest, f_hat, indices = f.copy(), np.zeros_like(f), []
    size = f.shape[-1]
    for si, pn in enumerate(patch_nums):
        z = np_resize_nchw(f_rest, pn, np_area_2d) if si != count - 1 else f_rest
        z_nc = z.transpose(0, 2, 3, 1).reshape(-1, f.shape[1])
        d = (z_nc**2).sum(1, keepdims=True) + (codebook**2).sum(1) - 2 * z_nc @ codebook.T
        idx = d.argmin(1)
        h = codebook[idx].reshape(f.shape[0], pn, pn, -1).transpose(0, 3, 1, 2)
        if si != count - 1:
            h = np_resize_nchw(h, size, np_bicubic_2d)
        k = int(np.argmin(np.abs(ticks - si / (count - 1))))
        h = h * (1 - ratio) + np_conv(h, sd, f"quantize.quant_resi.qresi_ls.{k}") * ratio
        f_hat, f_rest = f_hat + h, f_rest - h
        indices.append(idx.reshape(f.shape[0], pn, pn))
    return indices, f_hat


def np_var_input(indices, sd, patch_nums, size, ratio=0.5, share=4):
    """Official idxBl_to_var_input (NCHW): (B, L - 1, C) teacher-forcing input."""
    codebook = sd["quantize.embedding.weight"].astype(np.float64)
    count = len(patch_nums)
    ticks = np.linspace(1 / 3 / share, 1 - 1 / 3 / share, share)
    batch = indices[0].shape[0]
    f_hat = np.zeros((batch, codebook.shape[1], size, size))
    rows = []
    for si in range(count - 1):
        h = codebook[np.asarray(indices[si])].transpose(0, 3, 1, 2)
        h = np_resize_nchw(h, size, np_bicubic_2d)
        k = int(np.argmin(np.abs(ticks - si / (count - 1))))
        f_hat = f_hat + h * (1 - ratio) + np_conv(h, sd, f"quantize.quant_resi.qresi_ls.{k}") * ratio
        nxt = np_resize_nchw(f_hat, patch_nums[si + 1], np_area_2d)
        rows.append(nxt.reshape(batch, codebook.shape[1], -1).transpose(0, 2, 1))
    return np.concatenate(rows, axis=1)


def random_torch_state_dict(model, seed=0):
    """Random arrays under the official names and torch shapes (plus the ignored EMA buffer)."""
    rng = np.random.default_rng(seed)
    sd = {}
    for key, shape in convert_var.expected_torch_shapes(model).items():
        if key.endswith("embedding.weight"):
            value = rng.normal(size=shape)
        elif key.endswith("weight") and len(shape) == 4:
            value = rng.normal(size=shape) / math.sqrt(np.prod(shape[1:]))
        elif key.endswith("weight"):  # GroupNorm
            value = 1.0 + 0.1 * rng.normal(size=shape)
        else:
            value = 0.1 * rng.normal(size=shape)
        sd[key] = value.astype(np.float32)
    sd["quantize.ema_vocab_hit_SV"] = np.zeros((len(model.patch_nums), model.codebook_size), np.float32)
    return sd


@functools.cache
def tiny_forward():
    """One compiled function: images -> (features, token maps, f_hat, decoded image)."""
    model = VQVAE(**TINY)

    def run(params, images):
        variables = {"params": params}
        f = model.apply(variables, images, method="encode")
        indices = model.apply(variables, images, method="images_to_indices")
        f_hat = model.apply(variables, indices, method="indices_to_fhat")
        decoded = model.apply(variables, f_hat, method="fhat_to_images")
        return f, indices, f_hat, decoded, model.apply(variables, indices, method="indices_to_var_input")

    return model, jax.jit(run)


def test_converted_official_state_dict_matches_numpy_reference_of_official_model():
    model, forward = tiny_forward()
    sd = random_torch_state_dict(model, seed=4)
    params = convert_var.convert_vqvae(sd, model)
    images_nchw = np.random.default_rng(5).uniform(-1, 1, size=(2, 3, 16, 16))
    f, indices, f_hat, decoded, var_input = forward(params, jnp.asarray(images_nchw.transpose(0, 2, 3, 1), jnp.float32))

    ref_f = np_conv(np_encoder(images_nchw, sd, TINY["ch_mult"], TINY["num_res_blocks"]), sd, "quant_conv")
    np.testing.assert_allclose(np.asarray(f).transpose(0, 3, 1, 2), ref_f, atol=1e-4, rtol=1e-4)
    ref_indices, ref_f_hat = np_quantize(ref_f, sd, TINY["patch_nums"])
    for ours, ref in zip(indices, ref_indices):
        np.testing.assert_array_equal(np.asarray(ours), ref)
    np.testing.assert_allclose(np.asarray(f_hat).transpose(0, 3, 1, 2), ref_f_hat, atol=1e-4)
    ref_images = np_decoder(np_conv(ref_f_hat, sd, "post_quant_conv"), sd, TINY["ch_mult"], TINY["num_res_blocks"])
    np.testing.assert_allclose(np.asarray(decoded).transpose(0, 3, 1, 2), np.clip(ref_images, -1, 1), atol=1e-4)
    ref_var_input = np_var_input(ref_indices, sd, TINY["patch_nums"], size=8)
    assert var_input.shape == (2, 9 + 64, 8)  # L - 1 = 1 + 9 + 64 - 1
    np.testing.assert_allclose(np.asarray(var_input), ref_var_input, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Model


def test_straight_through_gradient_reaches_encoder_and_losses_split_as_official():
    model = VQVAE(**TINY)
    images = jax.random.uniform(jax.random.key(6), (2, 16, 16, 3), minval=-1, maxval=1)
    params = random_params(model, images, seed=7)

    def losses(p):
        reconstruction, aux = model.apply({"params": p}, images)
        return jnp.stack([jnp.mean(jnp.square(reconstruction - images)), aux["codebook_loss"], aux["commitment_loss"]])

    jacobian = jax.jit(jax.jacrev(losses))(params)

    def norm(tree, i):
        return float(sum(jnp.sum(jnp.square(leaf[i])) for leaf in jax.tree.leaves(tree)))

    recon, codebook, commitment = 0, 1, 2
    phis = {k: v for k, v in jacobian["quantize"].items() if k.startswith("phi_")}
    # Reconstruction: through the straight-through estimator into the encoder, not the codebook.
    assert norm(jacobian["encoder"], recon) > 0 and norm(jacobian["quant_conv"], recon) > 0
    assert norm(jacobian["decoder"], recon) > 0
    assert norm(jacobian["quantize"], recon) == 0
    # Codebook term trains codebook and phis only; commitment trains the encoder only.
    assert norm(jacobian["quantize"]["embedding"], codebook) > 0 and norm(phis, codebook) > 0
    assert norm(jacobian["encoder"], codebook) == 0
    assert norm(jacobian["encoder"], commitment) > 0 and norm(jacobian["quantize"], commitment) == 0


def test_wrong_inputs_raise_clear_errors():
    model = VQVAE(**TINY)
    params = random_params(model, jnp.zeros((1, 16, 16, 3)))
    for shape in [(1, 24, 24, 3), (1, 3, 16, 16)]:
        with pytest.raises(ValueError, match=re.escape("expects images of shape (batch, 16, 16, 3)")):
            model.apply({"params": params}, jnp.zeros(shape), method="images_to_indices")
    with pytest.raises(ValueError, match=re.escape("token map of scale 1 must have shape (batch, 3, 3)")):
        model.apply({"params": params}, random_indices((1, 2, 8), 64, 1, 0), method="indices_to_fhat")
    with pytest.raises(ValueError, match="expected 3 token maps"):
        model.apply({"params": params}, random_indices((1, 3), 64, 1, 0), method="indices_to_fhat")
    with pytest.raises(ValueError, match="not divisible by norm_groups"):
        VQVAE(**{**TINY, "ch": 24}).init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))


def test_unit_range_pixels_maps_to_official_range():
    base = VQVAE(**TINY)
    unit = VQVAE(**TINY, unit_range_pixels=True)
    images = jax.random.uniform(jax.random.key(8), (1, 16, 16, 3))
    params = random_params(base, images, seed=9)
    f_official = base.apply({"params": params}, images * 2 - 1, method="encode")
    np.testing.assert_allclose(unit.apply({"params": params}, images, method="encode"), f_official, atol=1e-5)
    decoded = unit.apply({"params": params}, f_official, method="fhat_to_images")
    official = base.apply({"params": params}, f_official, method="fhat_to_images")
    np.testing.assert_allclose(decoded, (official + 1) / 2, atol=1e-5)
    assert float(decoded.min()) >= 0.0 and float(decoded.max()) <= 1.0


# ---------------------------------------------------------------------------------------------
# Converter


def test_released_layout_names_and_shapes():
    expected = convert_var.expected_torch_shapes()
    assert len(expected) == 323  # 324 entries minus the EMA buffer
    assert sum(int(np.prod(s)) for s in expected.values()) == 108_948_355
    spot_checks = {
        "encoder.conv_in.weight": (160, 3, 3, 3),
        "encoder.down.2.block.0.nin_shortcut.weight": (320, 160, 1, 1),
        "encoder.down.3.downsample.conv.weight": (320, 320, 3, 3),
        "encoder.down.4.attn.1.qkv.weight": (1920, 640, 1, 1),
        "encoder.mid.attn_1.proj_out.weight": (640, 640, 1, 1),
        "encoder.conv_out.weight": (32, 640, 3, 3),
        "decoder.up.1.block.0.nin_shortcut.weight": (160, 320, 1, 1),
        "decoder.up.4.attn.2.norm.weight": (640,),
        "decoder.up.4.upsample.conv.weight": (640, 640, 3, 3),
        "decoder.conv_out.weight": (3, 160, 3, 3),
        "quantize.quant_resi.qresi_ls.3.weight": (32, 32, 3, 3),
        "quantize.embedding.weight": (4096, 32),
        "post_quant_conv.bias": (32,),
    }
    for key, shape in spot_checks.items():
        assert expected[key] == shape, key
    assert "decoder.up.0.upsample.conv.weight" not in expected
    assert "encoder.down.4.downsample.conv.weight" not in expected
    assert not any(".attn." in k for k in expected if k.startswith(("encoder.down.3", "decoder.up.3")))


def to_torch(params):
    """Inverse mapping written for the test: our params -> official names and torch layouts."""
    sd = {}
    for path, value in traverse_util.flatten_dict(params).items():
        value = np.asarray(value)
        names = []
        for part in path[:-1]:
            for pattern, replacement in (
                (r"^(down|up)_(\d+)_(block|attn)_(\d+)$", r"\1.\2.\3.\4"),
                (r"^(down|up)_(\d+)_(downsample|upsample)$", r"\1.\2.\3"),
                (r"^mid_", "mid."),
                (r"^phi_(\d+)$", r"quant_resi.qresi_ls.\1"),
            ):
                part = re.sub(pattern, replacement, part)
            names.append(part)
        names = ".".join(names)
        leaf = path[-1]
        if leaf == "kernel" and value.ndim == 4:
            sd[f"{names}.weight"] = value.transpose(3, 2, 0, 1)
        elif leaf == "kernel":  # Dense from a 1x1 conv
            sd[f"{names}.weight"] = value.T[:, :, None, None]
        elif leaf == "embedding":
            sd[f"{names}.embedding.weight"] = value
        else:
            sd[f"{names}.{'bias' if leaf == 'bias' else 'weight'}"] = value
    return sd


def test_converter_round_trip_gives_same_params_and_outputs():
    model, forward = tiny_forward()
    params = random_params(model, jnp.zeros((1, 16, 16, 3)), seed=10)
    sd = to_torch(params)
    assert set(sd) == set(convert_var.expected_torch_shapes(model))
    sd["quantize.ema_vocab_hit_SV"] = np.ones((3, 64), np.float32)  # ignored buffer
    converted = convert_var.convert_vqvae(sd, model)
    assert jax.tree.structure(converted) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(converted), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    images = jax.random.uniform(jax.random.key(11), (2, 16, 16, 3), minval=-1, maxval=1)
    for a, b in zip(jax.tree.leaves(forward(converted, images)), jax.tree.leaves(forward(params, images))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_converter_names_missing_unexpected_and_misshaped_keys(tmp_path):
    model = VQVAE(**TINY)
    var_transformer = {  # a few entries of a VAR-d16 checkpoint, i.e. the wrong model
        "pos_start": np.zeros((1, 1, 1024), np.float32),
        "word_embed.weight": np.zeros((1024, 32), np.float32),
        "blocks.0.attn.mat_qkv.weight": np.zeros((3072, 1024), np.float32),
    }
    with pytest.raises(ValueError) as error:
        convert_var.convert_vqvae(var_transformer, model)
    message = str(error.value)
    assert "does not match the VAR VQVAE" in message
    assert "none of its 143 parameter keys is present" in message and "encoder.conv_in.weight" in message
    assert "3 unexpected keys: blocks.0.attn.mat_qkv.weight, pos_start, word_embed.weight" in message

    sd = random_torch_state_dict(model)
    del sd["decoder.up.1.upsample.conv.bias"]
    with pytest.raises(ValueError, match=r"1 missing keys: decoder.up.1.upsample.conv.bias \(64,\)$"):
        convert_var.convert_vqvae(sd, model)

    sd = random_torch_state_dict(model)
    sd["quant_conv.weight"] = sd["quant_conv.weight"].transpose(2, 3, 1, 0)  # HWIO by mistake
    with pytest.raises(ValueError, match=r"mis-shaped keys: quant_conv.weight \(3, 3, 8, 8\) \(expected \(8, 8, 3, 3\)\)"):
        convert_var.convert_vqvae(sd, model)
    # The released configuration rejects the tiny model's weights.
    with pytest.raises(ValueError, match="mis-shaped keys"):
        convert_var.convert_vqvae(random_torch_state_dict(model))

    path = tmp_path / "vqvae.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="vqvae.pth is not a checkpoint"):  # read without torch
        convert_var.load_torch_checkpoint(str(path))
    np.savez(tmp_path / "sd.npz", **sd)
    assert set(convert_var.load_torch_checkpoint(str(tmp_path / "sd.npz"))) == set(sd)


def test_every_parameter_has_logical_names_covered_by_the_config_rules():
    from configs.common import sharding_rules
    from titok_var.sharding.rules import assert_rules_cover, logical_names_of

    for channel_axis in (None, "embed"):
        model = VQVAE(**TINY, channel_axis=channel_axis)
        boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
        leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
        assert all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
        assert_rules_cover(boxed, sharding_rules())
        expected = {"codebook", "code_dim"} | ({"embed"} if channel_axis else set())
        assert logical_names_of(boxed) == expected
