"""TiTok discriminator and the adversarial losses.

The forward pass is checked against a NumPy float64 re-implementation of the official torch
module (NCHW, torch-named weights, its Conv2dSame / BlurBlock padding formulas), fed the same
random state dict that our params are converted from; the losses against hand-computed values;
the one-pass joint objective against the official two separate backward passes.
"""

import functools
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs.common import sharding_rules
from titok_var.losses import adversarial as adv
from titok_var.models.discriminator import (
    NLayerDiscriminator,
    adaptive_max_pool,
    blur_downsample,
)
from titok_var.sharding.rules import assert_rules_cover
from titok_var.tools.convert_var import from_torch_layout, torch_shape
from titok_var.tools.state_dict_matching import match_state_dict

OFFICIAL_PARAM_COUNT = 1_909_889  # "1.91 M": computed term by term in test_official_size_...
BLUR_TAPS = {3: [1, 2, 1], 4: [1, 3, 3, 1], 5: [1, 4, 6, 4, 1]}


# ---------------------------------------------------------------------------------------------
# The official state dict and its mapping to our parameter paths


def official_torch_shapes(hidden=128, stages=3, in_channels=3, blur_kernel=4, blur=True):
    """Every tensor of the official NLayerDiscriminator's state dict (buffers included)."""
    mult = [1] + [2**t for t in range(stages)]
    shapes = {"block_in.0.weight": (hidden, in_channels, 5, 5), "block_in.0.bias": (hidden,)}
    for i in range(stages):
        cin, cout = hidden * mult[i], hidden * mult[i + 1]
        shapes[f"blocks.{i}.0.weight"] = (cout, cin, 3, 3)
        shapes[f"blocks.{i}.0.bias"] = (cout,)
        if blur:
            shapes[f"blocks.{i}.1.kernel"] = (1, 1, blur_kernel, blur_kernel)
        shapes[f"blocks.{i}.2.weight"] = (cout,)
        shapes[f"blocks.{i}.2.bias"] = (cout,)
    shapes.update({
        "to_logits.0.weight": (cout, cout, 1, 1), "to_logits.0.bias": (cout,),
        "to_logits.2.weight": (1, cout, 5, 5), "to_logits.2.bias": (1,),
    })
    return shapes


def torch_key(path):
    """("blocks_1_2", "scale") -> "blocks.1.2.weight"."""
    module, leaf = path
    return re.sub(r"_(\d+)", r".\1", module) + "." + ("bias" if leaf == "bias" else "weight")


def is_blur_buffer(key):
    return re.fullmatch(r"blocks\.\d+\.1\.kernel", key) is not None


def param_shapes(model, image_shape):
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(image_shape, jnp.float32))
    flat = traverse_util.flatten_dict(nn.unbox(abstract)["params"])
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def random_state_dict(shapes, blur_kernel, seed):
    rng = np.random.default_rng(seed)
    taps = np.array(BLUR_TAPS[blur_kernel], np.float64)
    state = {}
    for key, shape in shapes.items():
        if is_blur_buffer(key):
            value = (np.outer(taps, taps) / np.outer(taps, taps).sum())[None, None]
        elif key.endswith(".bias"):
            value = 0.1 * rng.normal(size=shape)
        elif len(shape) == 1:  # GroupNorm weight
            value = 1.0 + 0.2 * rng.normal(size=shape)
        else:
            value = rng.normal(size=shape) / math.sqrt(np.prod(shape[1:]))
        state[key] = value.astype(np.float32)
    return state


def convert(state, model, image_shape):
    match = match_state_dict(state, param_shapes(model, image_shape), torch_key, torch_shape,
                             from_torch_layout, ignored=is_blur_buffer)
    assert match.ok, match.problems()
    return match.nested_params()


# ---------------------------------------------------------------------------------------------
# NumPy float64 reference of the official torch forward (NCHW)


def np_same_pad(size, kernel, stride):
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def np_conv(x, weight, bias, stride=1, pads=((0, 0), (0, 0)), groups=1):
    """torch F.conv2d after F.pad, by summing kernel taps."""
    x = np.pad(x, ((0, 0), (0, 0)) + tuple(pads))
    out_c, in_per_group, kh, kw = weight.shape
    out_h = (x.shape[2] - kh) // stride + 1
    out_w = (x.shape[3] - kw) // stride + 1
    out = np.zeros((x.shape[0], out_c, out_h, out_w))
    per_group_out = out_c // groups
    for g in range(groups):
        xs = x[:, g * in_per_group:(g + 1) * in_per_group]
        ws = weight[g * per_group_out:(g + 1) * per_group_out]
        for dy in range(kh):
            for dx in range(kw):
                patch = xs[:, :, dy:dy + stride * (out_h - 1) + 1:stride, dx:dx + stride * (out_w - 1) + 1:stride]
                out[:, g * per_group_out:(g + 1) * per_group_out] += np.einsum("bihw,oi->bohw", patch, ws[:, :, dy, dx])
    if bias is not None:
        out += bias[None, :, None, None]
    return out


def np_conv2d_same(x, weight, bias):
    kh, kw = weight.shape[2:]
    return np_conv(x, weight, bias, 1, (np_same_pad(x.shape[2], kh, 1), np_same_pad(x.shape[3], kw, 1)))


def np_blur_block(x, kernel):
    """BlurBlock: padding computed for a 4-wide kernel whatever the buffer's size, stride 2."""
    channels = x.shape[1]
    pads = (np_same_pad(x.shape[2], 4, 2), np_same_pad(x.shape[3], 4, 2))
    return np_conv(x, np.repeat(kernel, channels, axis=0), None, 2, pads, groups=channels)


def np_avg_pool2(x):
    b, c, h, w = x.shape
    x = x[:, :, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


def np_group_norm(x, weight, bias, groups, eps=1e-5):
    b, c, h, w = x.shape
    g = x.reshape(b, groups, -1)
    g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)
    return g.reshape(b, c, h, w) * weight[None, :, None, None] + bias[None, :, None, None]


def np_leaky_relu(x):
    return np.where(x >= 0, x, 0.1 * x)


def np_adaptive_max_pool(x, out):
    b, c, h, w = x.shape
    result = np.empty((b, c, out, out))
    for i in range(out):
        y0, y1 = (i * h) // out, math.ceil((i + 1) * h / out)
        for j in range(out):
            x0, x1 = (j * w) // out, math.ceil((j + 1) * w / out)
            result[:, :, i, j] = x[:, :, y0:y1, x0:x1].max(axis=(2, 3))
    return result


def np_discriminator(state, x, *, stages, groups, pool, blur):
    sd = {k: v.astype(np.float64) for k, v in state.items()}
    h = np_leaky_relu(np_conv2d_same(x, sd["block_in.0.weight"], sd["block_in.0.bias"]))
    for i in range(stages):
        h = np_conv2d_same(h, sd[f"blocks.{i}.0.weight"], sd[f"blocks.{i}.0.bias"])
        h = np_blur_block(h, sd[f"blocks.{i}.1.kernel"]) if blur else np_avg_pool2(h)
        h = np_leaky_relu(np_group_norm(h, sd[f"blocks.{i}.2.weight"], sd[f"blocks.{i}.2.bias"], groups))
    h = np_adaptive_max_pool(h, pool)
    h = np_leaky_relu(np_conv2d_same(h, sd["to_logits.0.weight"], sd["to_logits.0.bias"]))
    return np_conv2d_same(h, sd["to_logits.2.weight"], sd["to_logits.2.bias"])


# ---------------------------------------------------------------------------------------------
# Discriminator


TINY_CASES = {
    # 16 -> 8 -> 4, pooled to 3 with overlapping adaptive bins.
    "blur4": {"hidden_channels": 8, "num_stages": 2, "norm_groups": 4, "pool_size": 3, "image": 16},
    # Odd sizes pad the blur (1, 2); the 3-tap blur keeps the official 4-tap padding: 13 -> 7 -> 4.
    "blur3_odd": {"hidden_channels": 4, "num_stages": 2, "blur_kernel_size": 3, "norm_groups": 2, "pool_size": 2, "image": 13},
    # 5 taps with 4-tap padding shrink 10 -> 4 in one stage.
    "blur5": {"hidden_channels": 4, "num_stages": 1, "blur_kernel_size": 5, "norm_groups": 2, "pool_size": 4, "image": 10},
    # Average pooling 12 -> 6 -> 3, then a 4x4 adaptive pool larger than its input.
    "avgpool": {"hidden_channels": 4, "num_stages": 2, "blur_resample": False, "norm_groups": 2, "pool_size": 4, "image": 12},
}


@pytest.mark.parametrize("case", sorted(TINY_CASES))
def test_forward_matches_numpy_reference_of_official_torch(case):
    config = dict(TINY_CASES[case])
    image = config.pop("image")
    model = NLayerDiscriminator(**config)
    blur = config.get("blur_resample", True)
    blur_kernel = config.get("blur_kernel_size", 4)
    image_shape = (2, image, image, 3)
    shapes = official_torch_shapes(model.hidden_channels, model.num_stages, blur_kernel=blur_kernel, blur=blur)
    state = random_state_dict(shapes, blur_kernel, seed=len(case))
    params = convert(state, model, image_shape)  # also: every official key is used, blur dropped

    images = np.random.default_rng(1).uniform(0.0, 1.0, image_shape).astype(np.float32)
    ours = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(images)))
    reference = np_discriminator(state, images.transpose(0, 3, 1, 2).astype(np.float64),
                                 stages=model.num_stages, groups=model.norm_groups, pool=model.pool_size, blur=blur)
    assert ours.shape == (2, model.pool_size, model.pool_size, 1)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference.transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size,taps", [(9, 4), (8, 4), (7, 3), (12, 5), (1, 4)])
def test_blur_downsample_matches_official_padding(size, taps):
    x = np.random.default_rng(size).normal(size=(1, size, size + 1, 3))
    kernel = np.outer(BLUR_TAPS[taps], BLUR_TAPS[taps])[None, None] / np.sum(BLUR_TAPS[taps]) ** 2
    ours = np.asarray(blur_downsample(jnp.asarray(x, jnp.float32), taps))
    reference = np_blur_block(x.transpose(0, 3, 1, 2), kernel).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size,out", [(8, 4), (8, 3), (7, 5), (3, 4), (5, 5)])
def test_adaptive_max_pool_matches_torch_bins(size, out):
    x = np.random.default_rng(size * out).normal(size=(2, size, size, 3))
    ours = np.asarray(adaptive_max_pool(jnp.asarray(x, jnp.float32), (out, out)))
    reference = np_adaptive_max_pool(x.transpose(0, 3, 1, 2), out).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ours, reference, rtol=1e-6)


def test_official_size_layout_names_and_parameter_count():
    model = NLayerDiscriminator()  # official defaults: 128 channels, 3 stages, 4-tap blur
    shapes = param_shapes(model, (1, 256, 256, 3))
    ours = {torch_key(path): torch_shape(path, shape) for path, shape in shapes.items()}
    official = {k: v for k, v in official_torch_shapes().items() if not is_blur_buffer(k)}
    assert ours == official
    # block_in 5*5*3*128+128; stages: 3*3*cin*cout + cout + 2*cout (GN); 1x1 512->512; 5x5 512->1.
    expected = (5 * 5 * 3 * 128 + 128
                + sum(9 * cin * cout + 3 * cout for cin, cout in [(128, 128), (128, 256), (256, 512)])
                + 512 * 512 + 512 + 25 * 512 + 1)
    assert expected == OFFICIAL_PARAM_COUNT
    assert sum(math.prod(s) for s in shapes.values()) == OFFICIAL_PARAM_COUNT
    abstract = traverse_util.unflatten_dict({p: jax.ShapeDtypeStruct(s, jnp.float32) for p, s in shapes.items()})
    out = jax.eval_shape(model.apply, {"params": abstract}, jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32))
    assert out.shape == (2, 16, 16, 1)


def test_parameters_carry_logical_names_covered_by_the_rules():
    model = NLayerDiscriminator(hidden_channels=8, num_stages=2, norm_groups=4, pool_size=2, channel_axis="embed")
    boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
    assert_rules_cover(boxed, sharding_rules())
    assert boxed["blocks_1_0"]["kernel"].names == (None, None, None, "embed")
    assert boxed["blocks_1_2"]["scale"].names == ("embed",)
    assert boxed["to_logits_2"]["kernel"].names == (None, None, None, None)


def test_default_init_is_torch_uniform():
    model = NLayerDiscriminator(hidden_channels=8, num_stages=1, norm_groups=4, pool_size=2)
    # unsafe_rbg: threefry makes `init` compile for many seconds on CPU.
    params = nn.unbox(model.init(jax.random.key(3, impl="unsafe_rbg"), jnp.zeros((1, 8, 8, 3))))["params"]
    bound = 1.0 / math.sqrt(3 * 3 * 8)
    for leaf in ("kernel", "bias"):
        values = np.asarray(params["blocks_0_0"][leaf])
        assert np.abs(values).max() <= bound and np.abs(values).max() > 0.5 * bound
    np.testing.assert_array_equal(np.asarray(params["blocks_0_2"]["scale"]), 1.0)


@pytest.mark.parametrize(
    "config,shape,message",
    [
        ({}, (1, 32, 32, 4), "NHWC images"),
        ({}, (32, 32, 3), "NHWC images"),
        ({"hidden_channels": 12, "norm_groups": 8}, (1, 32, 32, 3), "not divisible by norm_groups"),
        ({"blur_kernel_size": 6}, (1, 32, 32, 3), "blur_kernel_size"),
        ({"num_stages": 0}, (1, 32, 32, 3), "at least one stage"),
        ({"blur_kernel_size": 5, "num_stages": 2}, (1, 4, 4, 3), "too small"),
    ],
)
def test_bad_configuration_or_input_raises(config, shape, message):
    model = NLayerDiscriminator(**{"hidden_channels": 8, "norm_groups": 4, "pool_size": 2, **config})
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))


# ---------------------------------------------------------------------------------------------
# Losses

REAL = np.array([[2.0, 0.5], [-1.0, 0.5]], np.float32)   # mean 0.5
FAKE = np.array([[-2.0, 0.0], [1.5, -0.5]], np.float32)  # mean -0.25


def test_hinge_and_generator_losses_hand_computed():
    # relu(1 - real) = [0, .5, 2, .5] -> 0.75;  relu(1 + fake) = [0, 1, 2.5, .5] -> 1.0
    np.testing.assert_allclose(adv.hinge_discriminator_loss(REAL, FAKE), 0.5 * (0.75 + 1.0), rtol=1e-6)
    np.testing.assert_allclose(adv.generator_adversarial_loss(FAKE), 0.25, rtol=1e-6)


def test_lecam_and_ema_update_hand_computed():
    # relu(0.5 - 0.1)^2 + relu(0.2 - (-0.25))^2 = 0.16 + 0.2025; the second hinge is inactive below.
    np.testing.assert_allclose(adv.lecam_regularizer(REAL, FAKE, 0.2, 0.1), 0.3625, rtol=1e-6)
    np.testing.assert_allclose(adv.lecam_regularizer(REAL, FAKE, -0.5, 0.7), 0.0, atol=0)
    ema_real, ema_fake = adv.update_lecam_emas(0.2, 0.1, REAL, FAKE)
    np.testing.assert_allclose(ema_real, 0.999 * 0.2 + 0.001 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(ema_fake, 0.999 * 0.1 + 0.001 * -0.25, rtol=1e-6)
    ema_real, ema_fake = adv.update_lecam_emas(0.0, 0.0, REAL, FAKE, decay=0.9)
    np.testing.assert_allclose([ema_real, ema_fake], [0.05, -0.025], rtol=1e-6)


def test_discriminator_objective_follows_official_step():
    loss, (ema_real, ema_fake), metrics = adv.discriminator_objective(REAL, FAKE, 0.2, 0.1, factor=1.0)
    np.testing.assert_allclose(loss, 0.875 + 0.001 * 0.3625, rtol=1e-6)
    np.testing.assert_allclose(metrics["lecam_loss"], 0.001 * 0.3625, rtol=1e-6)
    np.testing.assert_allclose([ema_real, ema_fake], [0.2003, 0.09965], rtol=1e-6)
    # The factor scales the hinge only; without LeCam the EMAs stay put.
    loss, _, _ = adv.discriminator_objective(REAL, FAKE, 0.2, 0.1, factor=0.0, lecam_weight=0.5)
    np.testing.assert_allclose(loss, 0.5 * 0.3625, rtol=1e-6)
    loss, emas, _ = adv.discriminator_objective(REAL, FAKE, 0.2, 0.1, factor=2.0, lecam_weight=0.0)
    np.testing.assert_allclose(loss, 2 * 0.875, rtol=1e-6)
    np.testing.assert_allclose(emas, [0.2, 0.1], rtol=1e-6)


def test_discriminator_factor_switches_exactly_at_start_under_jit():
    factor = jax.jit(functools.partial(adv.discriminator_factor, start=20_000))
    steps = jnp.array([0, 19_999, 20_000, 20_001, 500_000])
    np.testing.assert_array_equal(jax.vmap(factor)(steps), [0, 0, 1, 1, 1])
    assert float(factor(jnp.int32(19_999))) == 0.0 and float(factor(jnp.int32(20_000))) == 1.0
    scaled = jax.jit(lambda s: adv.discriminator_factor(s, 5, factor=0.5))
    assert [float(scaled(jnp.int32(s))) for s in (4, 5)] == [0.0, 0.5]


def test_adaptive_gan_weight_is_the_clipped_ratio_without_gradient():
    np.testing.assert_allclose(adv.adaptive_gan_weight(3.0, 1.0), 3.0 / (1.0 + 1e-4), rtol=1e-6)
    np.testing.assert_allclose(adv.adaptive_gan_weight(2.0, 0.0), 1e4, rtol=1e-6)  # 2e4 clipped
    np.testing.assert_allclose(adv.adaptive_gan_weight(2.0, 0.5, max_weight=3.0, eps=0.5), 2.0, rtol=1e-6)
    np.testing.assert_allclose(adv.adaptive_gan_weight(2.0, 0.0, max_weight=100.0), 100.0, rtol=1e-6)
    assert float(jax.grad(lambda r: adv.adaptive_gan_weight(r, 1.0))(2.0)) == 0.0


# ---------------------------------------------------------------------------------------------
# A tiny generator + discriminator for the gradient tests

LATENT, SIZE = 5, 8
DISCRIMINATOR = NLayerDiscriminator(hidden_channels=4, num_stages=1, norm_groups=2, pool_size=2)


def generate(g_params, z):
    hidden = jnp.tanh(z @ g_params["body"]["kernel"] + g_params["body"]["bias"])
    return last_layer(g_params["last"], hidden)


def last_layer(last, hidden):
    return jax.nn.sigmoid(hidden @ last["kernel"] + last["bias"]).reshape(-1, SIZE, SIZE, 3)


def discriminate(d_params, images):
    return DISCRIMINATOR.apply({"params": d_params}, images)


def gan_setup():
    rng = np.random.default_rng(7)
    g_params = {
        "body": {"kernel": rng.normal(size=(LATENT, 6)) / 2, "bias": 0.1 * rng.normal(size=6)},
        "last": {"kernel": rng.normal(size=(6, SIZE * SIZE * 3)) / 2, "bias": 0.1 * rng.normal(size=SIZE * SIZE * 3)},
    }
    image_shape = (1, SIZE, SIZE, 3)
    state = random_state_dict(official_torch_shapes(hidden=4, stages=1), blur_kernel=4, seed=2)
    d_params = convert(state, DISCRIMINATOR, image_shape)
    to32 = functools.partial(jax.tree.map, lambda v: jnp.asarray(v, jnp.float32))
    z = jnp.asarray(rng.normal(size=(3, LATENT)), jnp.float32)
    real = jnp.asarray(rng.uniform(size=(3, SIZE, SIZE, 3)), jnp.float32)
    return to32(g_params), to32(d_params), z, real


def generator_loss(g_params, d_params, z, real, d_weight=0.5):
    fake = generate(g_params, z)
    rec = jnp.mean(jnp.square(fake - real))
    gan = adv.generator_adversarial_loss(discriminate(d_params, fake))
    return rec + d_weight * adv.discriminator_factor(10, 3) * gan, fake


def discriminator_loss(d_params, fake, real, emas=(0.3, -0.2)):
    loss, new_emas, _ = adv.discriminator_objective(
        discriminate(d_params, real), discriminate(d_params, fake), *emas, factor=1.0, lecam_weight=0.1
    )
    return loss, new_emas


def test_joint_objective_gradients_equal_official_two_pass_gradients():
    g_params, d_params, z, real = gan_setup()

    fake = jax.jit(generate)(g_params, z)

    @jax.jit
    def official_and_naive(g_params, d_params, fake):
        # Official: the G pass differentiates G only (D frozen), the D pass sees `fake` as data.
        g_grads = jax.grad(lambda g: generator_loss(g, d_params, z, real)[0])(g_params)
        d_grads = jax.grad(lambda d: discriminator_loss(d, fake, real)[0])(d_params)
        # A plain sum without stop-gradients: the generator's GAN term would also train D.
        naive = jax.grad(lambda p: generator_loss(p["generator"], p["discriminator"], z, real)[0]
                         + discriminator_loss(p["discriminator"], generate(p["generator"], z), real)[0])(
            {"generator": g_params, "discriminator": d_params})
        return g_grads, d_grads, naive

    g_grads, d_grads, naive = official_and_naive(g_params, d_params, fake)

    def generator_fn(g, frozen_d):
        loss, fake = generator_loss(g, frozen_d, z, real)
        return loss, (fake, None)

    def discriminator_fn(d, detached_fake):
        return discriminator_loss(d, detached_fake, real)

    params = {"generator": g_params, "discriminator": d_params}
    (total, aux), grads = jax.jit(jax.value_and_grad(
        lambda p: adv.joint_gan_objective(p, generator_fn, discriminator_fn), has_aux=True))(params)

    close = functools.partial(np.testing.assert_allclose, rtol=2e-5, atol=1e-7)
    jax.tree.map(close, grads["generator"], g_grads)
    jax.tree.map(close, grads["discriminator"], d_grads)
    np.testing.assert_allclose(total, aux["generator_loss"] + aux["discriminator_loss"], rtol=1e-6)
    # The naive sum is wrong on both sides: D also gets -d_weight * d mean(D(fake)) / d bias = -0.5
    # on its output bias, and G also gets the D loss's gradient through the fakes.
    difference = naive["discriminator"]["to_logits_2"]["bias"] - d_grads["to_logits_2"]["bias"]
    np.testing.assert_allclose(difference, [-0.5], rtol=1e-4)
    generator_gap = naive["generator"]["last"]["kernel"] - g_grads["last"]["kernel"]
    assert np.abs(generator_gap).max() > 1e-3 * np.abs(g_grads["last"]["kernel"]).max()


def test_joint_objective_requires_both_parameter_groups():
    with pytest.raises(KeyError, match="discriminator"):
        adv.joint_gan_objective({"generator": {}}, lambda g, d: (0.0, (0.0, None)), lambda d, f: (0.0, None))


def test_last_layer_grad_norms_and_adaptive_weight_match_full_gradients():
    g_params, d_params, z, real = gan_setup()

    def rec_full(g):
        return jnp.mean(jnp.square(generate(g, z) - real))

    def gan_full(g):
        return adv.generator_adversarial_loss(discriminate(d_params, generate(g, z)))

    @jax.jit
    def norms_and_full_grads(g_params):
        def with_last(last):
            return {"body": g_params["body"], "last": last}

        norms = adv.last_layer_grad_norms(
            lambda last: rec_full(with_last(last)), lambda last: gan_full(with_last(last)), g_params["last"])
        # Closing over the last layer's input activations only re-runs that layer and the heads.
        hidden = jnp.tanh(z @ g_params["body"]["kernel"] + g_params["body"]["bias"])
        cheap_norms = adv.last_layer_grad_norms(
            lambda last: jnp.mean(jnp.square(last_layer(last, hidden) - real)),
            lambda last: adv.generator_adversarial_loss(discriminate(d_params, last_layer(last, hidden))),
            g_params["last"])
        return norms, cheap_norms, jax.grad(rec_full)(g_params), jax.grad(gan_full)(g_params)

    (rec_norm, gan_norm), cheap_norms, rec_grads, gan_grads = norms_and_full_grads(g_params)

    # Reference: the last layer's slice of the full gradients, as taming's autograd.grad(loss, last_layer).
    def subtree_norm(grads):
        return math.sqrt(sum(float(np.sum(np.square(np.asarray(v, np.float64)))) for v in jax.tree.leaves(grads["last"])))

    np.testing.assert_allclose(rec_norm, subtree_norm(rec_grads), rtol=1e-5)
    np.testing.assert_allclose(gan_norm, subtree_norm(gan_grads), rtol=1e-5)
    assert rec_norm > 0 and gan_norm > 0
    np.testing.assert_allclose(cheap_norms, (rec_norm, gan_norm), rtol=1e-5)
    np.testing.assert_allclose(adv.adaptive_gan_weight(rec_norm, gan_norm),
                               min(float(rec_norm) / (float(gan_norm) + 1e-4), 1e4), rtol=1e-5)
