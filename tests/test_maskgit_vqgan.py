"""MaskGIT-VQGAN (TiTok's proxy-code tokenizer and pixel decoder) and its weight converter.

The official torch forward is re-implemented below in NumPy (NCHW, float64, weights read by their
torch names), independently of the Flax code, and the converted model must match it. Parameters
come from jax.eval_shape + NumPy random values: jitted `init` compiles slowly on CPU.
"""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from titok_var.models.maskgit_vqgan import (
    MASKGIT_VQGAN_F16_256,
    MASKGIT_VQGAN_TINY,
    MaskGitVQGAN,
    MaskGitVQGANDecoder,
    MaskGitVQGANEncoder,
    encoder_params,
    pixel_decoder_params,
)
from titok_var.tools import convert_maskgit_vqgan as convert

TINY = MASKGIT_VQGAN_TINY  # 32 px -> 16 x 16 codes out of 64; channels 32 -> 64 -> 32


# ---------------------------------------------------------------------------------------------
# NumPy reference of the official torch model (modeling/modules/maskgit_vqgan.py)


class RecordingDict(dict):
    """A state dict that remembers which keys the reference read."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


def np_conv_same(x, sd, name, bias=True):
    """Conv2dSame, stride 1: zero padding (k - 1) // 2 top/left and the rest bottom/right."""
    w = sd[f"{name}.weight"].astype(np.float64)
    _, _, kh, kw = w.shape
    x = np.pad(x, ((0, 0), (0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2)))
    out_h, out_w = x.shape[2] - kh + 1, x.shape[3] - kw + 1
    out = np.zeros((x.shape[0], w.shape[0], out_h, out_w))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("bihw,oi->bohw", x[:, :, i : i + out_h, j : j + out_w], w[:, :, i, j])
    if bias:
        out += sd[f"{name}.bias"][None, :, None, None]
    return out


def np_group_norm(x, sd, name, groups=32, eps=1e-6):
    b, c, h, w = x.shape
    g = x.reshape(b, groups, -1)
    g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)
    return g.reshape(b, c, h, w) * sd[f"{name}.weight"][None, :, None, None] + sd[f"{name}.bias"][None, :, None, None]


def np_silu(x):
    return x / (1.0 + np.exp(-x))


def np_resnet(x, sd, name, in_channels, out_channels):
    h = np_conv_same(np_silu(np_group_norm(x, sd, f"{name}.norm1")), sd, f"{name}.conv1", bias=False)
    h = np_conv_same(np_silu(np_group_norm(h, sd, f"{name}.norm2")), sd, f"{name}.conv2", bias=False)
    if in_channels != out_channels:
        residual = np_conv_same(h, sd, f"{name}.nin_shortcut", bias=False)  # official: from h, x dropped
    else:
        residual = x
    return h + residual


def np_encoder(x, sd, hidden, mult, num_res_blocks):
    h = np_conv_same(x, sd, "encoder.conv_in", bias=False)
    in_mult = (1,) + tuple(mult)
    for level in range(len(mult)):
        block_in, block_out = hidden * in_mult[level], hidden * mult[level]
        for j in range(num_res_blocks):
            h = np_resnet(h, sd, f"encoder.down.{level}.block.{j}", block_in, block_out)
            block_in = block_out
        if level != len(mult) - 1:  # avg_pool2d(2, 2)
            b, c, hh, ww = h.shape
            h = h.reshape(b, c, hh // 2, 2, ww // 2, 2).mean(axis=(3, 5))
    for j in range(num_res_blocks):
        h = np_resnet(h, sd, f"encoder.mid.{j}", hidden * mult[-1], hidden * mult[-1])
    return np_conv_same(np_silu(np_group_norm(h, sd, "encoder.norm_out")), sd, "encoder.conv_out")


def np_decoder(z, sd, hidden, mult, num_res_blocks):
    h = np_conv_same(z, sd, "decoder.conv_in")
    for j in range(num_res_blocks):
        h = np_resnet(h, sd, f"decoder.mid.{j}", hidden * mult[-1], hidden * mult[-1])
    for level in reversed(range(len(mult))):
        block_in = hidden * (mult[-1] if level == len(mult) - 1 else mult[level + 1])
        block_out = hidden * mult[level]
        for j in range(num_res_blocks):
            h = np_resnet(h, sd, f"decoder.up.{level}.block.{j}", block_in, block_out)
            block_in = block_out
        if level != 0:  # F.interpolate(scale_factor=2, mode="nearest"), then the conv
            h = np_conv_same(h.repeat(2, axis=2).repeat(2, axis=3), sd, f"decoder.up.{level}.upsample_conv")
    return np_conv_same(np_silu(np_group_norm(h, sd, "decoder.norm_out")), sd, "decoder.conv_out")


def np_nearest_codes(z, codebook):
    """VectorQuantizer.get_code: argmin |z|^2 + |e|^2 - 2 z.e over (B, C, h, w) -> (B, h, w)."""
    b, c, h, w = z.shape
    flat = z.transpose(0, 2, 3, 1).reshape(-1, c)
    d = (flat**2).sum(1, keepdims=True) + (codebook**2).sum(1) - 2 * flat @ codebook.T
    return d.argmin(1).reshape(b, h, w), np.sort(d, axis=1)


def np_codes_to_latents(codes, codebook):
    return codebook[codes].transpose(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------
# Weights


def random_torch_state_dict(config, seed=0, prefix=""):
    """Random arrays under the official names and shapes of the full model (`prefix` "pixel_"
    with the decoder-only model gives TiTok's names)."""
    model = MaskGitVQGANDecoder(**config) if prefix else MaskGitVQGAN(**config)
    rng = np.random.default_rng(seed)
    sd = {}
    for key, shape in convert.expected_torch_shapes(model).items():
        if key.endswith("embedding.weight"):
            value = rng.normal(size=shape)
        elif len(shape) == 4:
            value = rng.normal(size=shape) / math.sqrt(np.prod(shape[1:]))
        elif key.endswith("weight"):  # GroupNorm
            value = 1.0 + 0.1 * rng.normal(size=shape)
        else:
            value = 0.1 * rng.normal(size=shape)
        sd[key] = value.astype(np.float32)
    # Keep most decoded pixels inside [0, 1] so the clamp hides little.
    out = f"{prefix}decoder.conv_out"
    sd[f"{out}.weight"] *= 0.2
    sd[f"{out}.bias"] = np.full_like(sd[f"{out}.bias"], 0.5)
    return sd


def to_torch(params):
    """Inverse mapping written for the test: our params -> official names and torch layouts."""
    sd = {}
    for path, value in traverse_util.flatten_dict(params).items():
        names = []
        for part in path[:-1]:
            part = re.sub(r"^(down|up)_(\d+)_block_(\d+)$", r"\1.\2.block.\3", part)
            part = re.sub(r"^up_(\d+)_upsample_conv$", r"up.\1.upsample_conv", part)
            part = re.sub(r"^mid_(\d+)$", r"mid.\1", part)
            names.append(part)
        name, leaf, value = ".".join(names), path[-1], np.asarray(value)
        if leaf == "kernel":
            sd[f"{name}.weight"] = value.transpose(3, 2, 0, 1)
        elif leaf == "embedding":
            sd[f"{name}.embedding.weight"] = value
        else:
            sd[f"{name}.{'bias' if leaf == 'bias' else 'weight'}"] = value
    return sd


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@functools.cache
def tiny_forward():
    """One compiled function of the full tiny model: every output the tests compare."""
    model = MaskGitVQGAN(**TINY)

    def run(params, images, probabilities):
        variables = {"params": params}
        codes = model.apply(variables, images, method="encode")
        return {
            "latents": model.apply(variables, images, method="encode_latents"),
            "codes": codes,
            "decoded": model.apply(variables, codes, method="decode_codes"),
            "unclamped": model.apply(variables, params["quantize"]["embedding"][codes], method="decode_latents"),
            "soft": model.apply(variables, probabilities, method="decode_soft"),
            "reconstruction": model.apply(variables, images),
        }

    return jax.jit(run)


@functools.cache
def tiny_pixel_decoder_forward():
    model = MaskGitVQGANDecoder(**TINY)

    def run(params, codes, probabilities):
        variables = {"params": params}
        return model.apply(variables, codes, method="decode_codes"), model.apply(variables, probabilities)

    return jax.jit(run)


def inputs(seed):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 1, size=(2, 32, 32, 3)).astype(np.float32)
    logits = 3.0 * rng.normal(size=(2, 16, 16, TINY["codebook_size"]))
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    return images, probabilities.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Equivalence with the official forward


def test_converted_model_matches_numpy_reference_of_official_forward():
    sd = random_torch_state_dict(TINY, seed=1)
    params = convert.convert_maskgit_vqgan(sd, MaskGitVQGAN(**TINY))
    images, probabilities = inputs(seed=2)
    out = jax.device_get(tiny_forward()(params, jnp.asarray(images), jnp.asarray(probabilities)))

    ref_sd = RecordingDict(sd)
    arch = (TINY["hidden_channels"], TINY["channel_mult"], TINY["num_res_blocks"])
    codebook = ref_sd["quantize.embedding.weight"].astype(np.float64)
    ref_latents = np_encoder(images.transpose(0, 3, 1, 2).astype(np.float64), ref_sd, *arch)
    np.testing.assert_allclose(out["latents"].transpose(0, 3, 1, 2), ref_latents, atol=1e-4, rtol=1e-4)

    ref_codes, sorted_distances = np_nearest_codes(ref_latents, codebook)
    assert (sorted_distances[:, 1] - sorted_distances[:, 0]).min() > 1e-3  # no near ties: exact ids
    assert out["codes"].dtype == np.int32 and out["codes"].shape == (2, 16, 16)
    np.testing.assert_array_equal(out["codes"], ref_codes)
    assert len(np.unique(ref_codes)) > 5

    ref_images = np_decoder(np_codes_to_latents(ref_codes, codebook), ref_sd, *arch)
    np.testing.assert_allclose(out["unclamped"].transpose(0, 3, 1, 2), ref_images, atol=1e-4, rtol=1e-4)
    clamped = np.clip(ref_images, 0.0, 1.0)  # PretrainedTokenizer.decode clamps
    assert 0.5 < np.mean((ref_images > 0) & (ref_images < 1))  # the clamp does not hide the comparison
    np.testing.assert_allclose(out["decoded"].transpose(0, 3, 1, 2), clamped, atol=1e-4)
    np.testing.assert_array_equal(out["reconstruction"], out["decoded"])

    # TiTok stage 2: einsum('nchw,cd->ndhw', probabilities, codebook) -> decoder, no clamp.
    mixed = np.einsum("bhwk,kc->bchw", probabilities.astype(np.float64), codebook)
    ref_soft = np_decoder(mixed, ref_sd, *arch)
    np.testing.assert_allclose(out["soft"].transpose(0, 3, 1, 2), ref_soft, atol=1e-4, rtol=1e-4)

    assert ref_sd.read == set(sd)  # every official tensor is used, our model has no extra ones


def test_decode_soft_with_one_hot_probabilities_equals_decode_codes():
    sd = random_torch_state_dict(TINY, seed=5)
    params = convert.convert_maskgit_vqgan(sd, MaskGitVQGAN(**TINY))
    images, probabilities = inputs(seed=6)
    full = jax.device_get(tiny_forward()(params, jnp.asarray(images), jnp.asarray(probabilities)))
    one_hot = np.eye(TINY["codebook_size"], dtype=np.float32)[full["codes"]]
    # The decoder-only module (TiTok's pixel_* copy), fed the official flat (B, h*w) codes.
    flat_codes = jnp.asarray(full["codes"].reshape(2, -1))
    decoded, soft = jax.device_get(
        tiny_pixel_decoder_forward()(pixel_decoder_params(params), flat_codes, jnp.asarray(one_hot))
    )
    np.testing.assert_allclose(decoded, full["decoded"], atol=1e-6)
    np.testing.assert_allclose(np.clip(soft, 0, 1), decoded, atol=1e-6)
    np.testing.assert_allclose(soft, full["unclamped"], atol=1e-6)
    assert soft.max() > 1.0 or soft.min() < 0.0  # decode_soft itself does not clamp


def test_encoder_module_gives_the_full_models_codes():
    sd = random_torch_state_dict(TINY, seed=7)
    params = convert.convert_maskgit_vqgan(sd, MaskGitVQGAN(**TINY))
    images, probabilities = inputs(seed=8)
    full = jax.device_get(tiny_forward()(params, jnp.asarray(images), jnp.asarray(probabilities)))
    # The encoder alone converts from the same release file (its decoder keys are skipped).
    encoder_only = convert.convert_maskgit_vqgan(sd, MaskGitVQGANEncoder(**TINY))
    assert_trees_equal(encoder_only, encoder_params(params))
    codes = jax.jit(MaskGitVQGANEncoder(**TINY).apply)({"params": encoder_only}, jnp.asarray(images))
    np.testing.assert_array_equal(np.asarray(codes), full["codes"])


# ---------------------------------------------------------------------------------------------
# Official layout


def res_block_size(cin, cout):
    """Parameters of the official ResnetBlock (1d-tokenizer modeling/modules/maskgit_vqgan.py): GroupNorm
    affine over cin and cout, bias-free 3x3 convs cin->cout and cout->cout, and when cin != cout a
    bias-free 1x1 cout->cout shortcut (applied to h, the official quirk)."""
    return 2 * cin + cout * cin * 9 + 2 * cout + cout * cout * 9 + (cout * cout if cin != cout else 0)


def test_released_preset_has_the_official_names_shapes_and_sizes():
    assert MaskGitVQGAN().image_size == 256 and MaskGitVQGAN(**MASKGIT_VQGAN_F16_256).latent_size == 16
    expected = convert.expected_torch_shapes(MaskGitVQGAN(**MASKGIT_VQGAN_F16_256))
    counts = {part: sum(int(np.prod(s)) for k, s in expected.items() if k.startswith(part + "."))
              for part in ("encoder", "decoder", "quantize")}
    r = res_block_size
    encoder = (
        128 * 3 * 9
        + 4 * r(128, 128)
        + r(128, 256) + r(256, 256) + 2 * r(256, 256)
        + r(256, 512) + r(512, 512) + 2 * r(512, 512)
        + 2 * 512 + 256 * 512 + 256
    )
    decoder = (
        512 * 256 * 9 + 512 + 2 * r(512, 512)
        + 2 * r(512, 512) + 512 * 512 * 9 + 512
        + r(512, 256) + r(256, 256) + 256 * 256 * 9 + 256
        + 2 * r(256, 256) + 256 * 256 * 9 + 256
        + r(256, 128) + r(128, 128) + 128 * 128 * 9 + 128
        + 2 * r(128, 128)
        + 2 * 128 + 3 * 128 * 9 + 3
    )
    assert counts == {"encoder": encoder, "decoder": decoder, "quantize": 1024 * 256}
    assert round(decoder / 1e6, 2) == 30.48 and round((encoder + decoder + 1024 * 256) / 1e6, 1) == 54.5
    spot_checks = {
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.down.2.block.0.conv1.weight": (256, 128, 3, 3),
        "encoder.down.2.block.0.nin_shortcut.weight": (256, 256, 1, 1),
        "encoder.down.4.block.0.nin_shortcut.weight": (512, 512, 1, 1),
        "encoder.mid.1.norm2.weight": (512,),
        "encoder.conv_out.weight": (256, 512, 1, 1),
        "decoder.conv_in.weight": (512, 256, 3, 3),
        "decoder.up.1.block.0.norm1.weight": (256,),
        "decoder.up.1.block.0.conv1.weight": (128, 256, 3, 3),
        "decoder.up.1.block.0.nin_shortcut.weight": (128, 128, 1, 1),
        "decoder.up.3.block.0.conv1.weight": (256, 512, 3, 3),
        "decoder.up.4.upsample_conv.weight": (512, 512, 3, 3),
        "decoder.conv_out.weight": (3, 128, 3, 3),
        "quantize.embedding.weight": (1024, 256),
    }
    for key, shape in spot_checks.items():
        assert expected[key] == shape, key
    for absent in ("encoder.conv_in.bias", "decoder.up.0.upsample_conv.weight", "encoder.down.0.block.0.conv1.bias",
                   "decoder.up.2.block.0.nin_shortcut.weight"):
        assert absent not in expected
    # TiTok's copy: the non-encoder keys under the pixel_ prefix.
    pixel = convert.expected_torch_shapes(MaskGitVQGANDecoder())
    assert pixel == {f"pixel_{k}": s for k, s in expected.items() if not k.startswith("encoder.")}


# ---------------------------------------------------------------------------------------------
# Converter


def test_converter_round_trips_full_and_titok_pixel_decoder_params():
    sd = random_torch_state_dict(TINY, seed=9)
    params = convert.convert_maskgit_vqgan(sd, MaskGitVQGAN(**TINY))
    back = to_torch(params)
    assert back.keys() == sd.keys()
    for key in sd:
        np.testing.assert_array_equal(back[key], sd[key])
    assert_trees_equal(convert.convert_maskgit_vqgan(back, MaskGitVQGAN(**TINY)), params)

    # A stage-2 TiTok state dict: its own decoder/quantize keys must not be taken for MaskGIT's.
    titok = {f"pixel_{k}": v for k, v in sd.items() if not k.startswith("encoder.")}
    titok.update({
        "latent_tokens": np.zeros((8, 64), np.float32),
        "encoder.patch_embed.weight": np.zeros((64, 3, 4, 4), np.float32),
        "decoder.ffn.0.weight": np.zeros((128, 64, 1, 1), np.float32),
        "decoder.conv_in.weight": np.zeros((1, 1, 1, 1), np.float32),
        "quantize.embedding.weight": np.zeros((64, 8), np.float32),
    })
    assert convert.has_pixel_decoder(titok) and not convert.has_pixel_decoder(sd)
    pixel = convert.convert_titok_pixel_decoder(titok, MaskGitVQGANDecoder(**TINY))
    assert_trees_equal(pixel, pixel_decoder_params(params))
    pixel_torch = to_torch(pixel)
    assert pixel_torch.keys() == {k for k in titok if k.startswith("pixel_")}
    for key, value in pixel_torch.items():
        np.testing.assert_array_equal(value, titok[key])


def test_converter_fails_loudly_on_missing_unused_and_misshaped_keys():
    model = MaskGitVQGAN(**TINY)
    sd = random_torch_state_dict(TINY)
    del sd["decoder.up.1.upsample_conv.bias"]
    with pytest.raises(ValueError, match=r"1 missing keys: decoder.up.1.upsample_conv.bias \(64,\)$"):
        convert.convert_maskgit_vqgan(sd, model)

    sd = random_torch_state_dict(TINY)
    sd["encoder.conv_in.bias"] = np.zeros((32,), np.float32)  # the official conv_in has no bias
    with pytest.raises(ValueError, match=r"1 unexpected keys: encoder.conv_in.bias$"):
        convert.convert_maskgit_vqgan(sd, model)

    sd = random_torch_state_dict(TINY)
    sd["decoder.up.0.block.0.conv1.weight"] = sd["decoder.up.0.block.0.conv1.weight"].transpose(2, 3, 1, 0)
    with pytest.raises(ValueError, match=re.escape(
        "1 mis-shaped keys: decoder.up.0.block.0.conv1.weight (3, 3, 64, 32) (expected (32, 64, 3, 3))"
    )):
        convert.convert_maskgit_vqgan(sd, model)

    with pytest.raises(ValueError, match="does not match MaskGitVQGAN.*mis-shaped keys"):
        convert.convert_maskgit_vqgan(random_torch_state_dict(TINY))  # the released size rejects it
    with pytest.raises(ValueError, match=r"none of its 52 parameter keys is present .*2 unexpected keys"):
        convert.convert_maskgit_vqgan({"latent_tokens": np.zeros(3), "pos_embed": np.zeros(3)}, model)

    pixel_model = MaskGitVQGANDecoder(**TINY)
    titok = random_torch_state_dict(TINY, prefix="pixel_")
    del titok["pixel_quantize.embedding.weight"]
    titok["pixel_decoder.mid.0.attn.weight"] = np.zeros((4,), np.float32)
    with pytest.raises(ValueError) as error:
        convert.convert_titok_pixel_decoder(titok, pixel_model)
    message = str(error.value)
    assert "1 missing keys: pixel_quantize.embedding.weight (64, 32)" in message
    assert "1 unexpected keys: pixel_decoder.mid.0.attn.weight" in message
    with pytest.raises(ValueError, match=r"no pixel_decoder.\* / pixel_quantize.\* keys: only stage-2"):
        convert.convert_titok_pixel_decoder({"latent_tokens": np.zeros((8, 64))}, pixel_model)


def test_cli_writes_params_that_load_back(tmp_path):
    sd = random_torch_state_dict(TINY, seed=10)
    source = tmp_path / "maskgit_torch.npz"
    np.savez(source, **sd)
    written, params = convert.convert_file(str(source), str(tmp_path / "out"), TINY)
    assert written == str(tmp_path / "out" / convert.FULL_PARAMS_FILE)
    assert_trees_equal(convert.load_params(written, MaskGitVQGAN(**TINY)), params)
    assert_trees_equal(convert.load_params(str(source), MaskGitVQGAN(**TINY)), params)  # on the fly
    with pytest.raises(ValueError, match="does not match MaskGitVQGANDecoder"):
        convert.load_params(written, MaskGitVQGANDecoder(**TINY))

    titok_source = tmp_path / "titok_torch.npz"
    np.savez(titok_source, **{f"pixel_{k}": v for k, v in sd.items() if not k.startswith("encoder.")})
    written, pixel = convert.convert_file(str(titok_source), str(tmp_path / "out"), TINY)
    assert written.endswith(convert.PIXEL_PARAMS_FILE)
    assert_trees_equal(pixel, pixel_decoder_params(params))

    # main() converts to the released configuration: the tiny weights fail loudly, by name.
    with pytest.raises(ValueError, match=r"mis-shaped keys: .*decoder.conv_in.weight \(64, 32, 3, 3\) \(expected \(512, 256, 3, 3\)\)"):
        convert.main(["--input", str(source), "--output", str(tmp_path / "released")])
    with pytest.raises(FileNotFoundError, match="maskgit-vqgan-imagenet-f16-256.bin"):
        convert.main(["--input", str(tmp_path / "absent.bin"), "--output", str(tmp_path)])


# ---------------------------------------------------------------------------------------------
# Input checks


def test_wrong_inputs_raise_clear_errors():
    model = MaskGitVQGAN(**TINY)
    params = convert.convert_maskgit_vqgan(random_torch_state_dict(TINY), model)
    variables = {"params": params}
    for shape in [(1, 64, 64, 3), (1, 3, 32, 32), (32, 32, 3)]:
        with pytest.raises(ValueError, match=re.escape("expects images of shape (batch, 32, 32, 3)")):
            model.apply(variables, jnp.zeros(shape), method="encode")
    with pytest.raises(ValueError, match=re.escape("codes of shape (batch, 16, 16) or (batch, 256), got (1, 8, 8)")):
        model.apply(variables, jnp.zeros((1, 8, 8), jnp.int32), method="decode_codes")
    with pytest.raises(ValueError, match="integer ids"):
        model.apply(variables, jnp.zeros((1, 16, 16)), method="decode_codes")
    with pytest.raises(ValueError, match=re.escape("code probabilities of shape (batch, 16, 16, 64)")):
        model.apply(variables, jnp.zeros((1, 16, 16, 32)), method="decode_soft")
    with pytest.raises(ValueError, match="not divisible by norm_groups"):
        MaskGitVQGAN(**{**TINY, "hidden_channels": 24}).apply(variables, jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="not divisible by the downsampling factor"):
        MaskGitVQGAN(**{**TINY, "image_size": 33}).apply(variables, jnp.zeros((1, 33, 33, 3)))
    with pytest.raises(KeyError, match="MaskGitVQGANDecoder needs params"):
        pixel_decoder_params(encoder_params(params))
