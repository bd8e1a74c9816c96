"""TiTok weight converter (released tokenizers -> our TiTok) and the `convert` CLI dispatcher.

The official torch forward of TiTok (bytedance/1d-tokenizer `modeling/titok.py`, `blocks.py`) is
re-implemented below in NumPy (NCHW, float64, weights read by their torch names), independently of
the Flax code; the converted model must match it. The MaskGIT-VQGAN pixel decoder's NumPy
reference comes from tests/test_maskgit_vqgan.py.
"""

import argparse
import functools
import json
import math
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from tests.test_maskgit_vqgan import RecordingDict, np_conv_same
from tests.test_maskgit_vqgan import np_decoder as np_vqgan_decoder
from titok_var.models.maskgit_vqgan import MASKGIT_VQGAN_TINY
from titok_var.models.titok import VIT_SIZES, TiTok
from titok_var.tools import convert, convert_perceptual
from titok_var.tools import convert_titok as ct
from titok_var.tools.convert_var import save_params
from titok_var.weights import safetensors_format

# The released paper layout at 32 px: patch 2 gives the 16 x 16 grid the tiny VQGAN decodes.
STAGE2 = {"image_size": 32, "patch_size": 2, "num_latent_tokens": 8, "encoder_size": "tiny", "decoder_size": "tiny",
          "codebook_size": 32, "token_size": 8, "use_l2_norm": True, "legacy_reshape": True,
          "decoder_head": "proxy_codes", "proxy_codebook_size": MASKGIT_VQGAN_TINY["codebook_size"],
          "pixel_decoder": "tiny"}
# The released VQ8k layout: proper encoder permute, raw (not l2) VQ, pixel head.
PIXELS = {"image_size": 32, "patch_size": 8, "num_latent_tokens": 6, "encoder_size": "tiny", "decoder_size": "tiny",
          "codebook_size": 48, "token_size": 16, "use_l2_norm": False, "legacy_reshape": False,
          "decoder_head": "pixels"}


# ---------------------------------------------------------------------------------------------
# NumPy reference of the official torch TiTok


def np_layer_norm(x, sd, name, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def np_linear(x, sd, name):
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def np_conv1x1(x, sd, name):
    return np.einsum("bihw,oi->bohw", x, sd[f"{name}.weight"][:, :, 0, 0]) + sd[f"{name}.bias"][None, :, None, None]


def np_softmax(x, axis):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def np_multihead_attention(x, sd, name, heads):
    """nn.MultiheadAttention(x, x, x): in_proj rows [q; k; v], heads are contiguous column blocks."""
    b, length, d = x.shape
    qkv = x @ sd[f"{name}.in_proj_weight"].T + sd[f"{name}.in_proj_bias"]
    q, k, v = (t.reshape(b, length, heads, d // heads).transpose(0, 2, 1, 3) for t in np.split(qkv, 3, axis=-1))
    weights = np_softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(d // heads), axis=-1)
    out = (weights @ v).transpose(0, 2, 1, 3).reshape(b, length, d)
    return np_linear(out, sd, f"{name}.out_proj")


def np_block(x, sd, name, heads):
    """OpenCLIP ResidualAttentionBlock: pre-LN, exact GELU."""
    x = x + np_multihead_attention(np_layer_norm(x, sd, f"{name}.ln_1"), sd, f"{name}.attn", heads)
    h = np_linear(np_layer_norm(x, sd, f"{name}.ln_2"), sd, f"{name}.mlp.c_fc")
    h = 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
    return x + np_linear(h, sd, f"{name}.mlp.c_proj")


def np_transformer(x, sd, prefix, size):
    x = np_layer_norm(x, sd, f"{prefix}.ln_pre")
    for i in range(VIT_SIZES[size]["depth"]):
        x = np_block(x, sd, f"{prefix}.transformer.{i}", VIT_SIZES[size]["num_heads"])
    return x


def np_encoder(images, sd, cfg):
    """TiTokEncoder.forward on NCHW images -> z (B, C, 1, N)."""
    weight = sd["encoder.patch_embed.weight"]
    width, _, p, _ = weight.shape
    b, c, size, _ = images.shape
    g = size // p
    patches = images.reshape(b, c, g, p, g, p)
    x = np.einsum("bcipjq,dcpq->bdij", patches, weight) + sd["encoder.patch_embed.bias"][None, :, None, None]
    x = x.reshape(b, width, g * g).transpose(0, 2, 1)
    cls = np.broadcast_to(sd["encoder.class_embedding"], (b, 1, width))
    x = np.concatenate([cls, x], axis=1) + sd["encoder.positional_embedding"]
    latents = sd["latent_tokens"] + sd["encoder.latent_token_positional_embedding"]
    n = latents.shape[0]
    x = np.concatenate([x, np.broadcast_to(latents, (b, n, width))], axis=1)
    x = np_transformer(x, sd, "encoder", cfg["encoder_size"])
    t = np_layer_norm(x[:, 1 + g * g :], sd, "encoder.ln_post")
    if cfg["legacy_reshape"]:
        t = t.reshape(b, width, n, 1)  # torch .reshape of (B, N, D) memory: not a transpose
    else:
        t = t.reshape(b, n, width, 1).transpose(0, 2, 1, 3)
    z = np_conv1x1(t, sd, "encoder.conv_out")
    return z.reshape(b, -1, 1, n)


def np_normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def np_quantize(z, codebook, use_l2_norm):
    """VectorQuantizer.forward -> ids (B, N), quantized (B, C, 1, N) and each argmin's margin."""
    b, c, _, n = z.shape
    flat = z.transpose(0, 2, 3, 1).reshape(-1, c)
    codes = codebook
    if use_l2_norm:
        flat, codes = np_normalize(flat), np_normalize(codebook)
    d = (flat**2).sum(1, keepdims=True) + (codes**2).sum(1) - 2 * flat @ codes.T
    ids = d.argmin(1)
    ordered = np.sort(d, axis=1)
    q = codes[ids]  # get_codebook_entry: normalised when use_l2_norm
    return ids.reshape(b, n), q.reshape(b, 1, n, c).transpose(0, 3, 1, 2), ordered[:, 1] - ordered[:, 0]


def np_decoder(q, sd, cfg):
    """TiTokDecoder.forward on (B, C, 1, N) -> proxy logits (B, K, g, g) or pixels (B, 3, H, W)."""
    b, c, _, n = q.shape
    x = np_linear(q.reshape(b, c, n).transpose(0, 2, 1), sd, "decoder.decoder_embed")
    width = x.shape[-1]
    positional = sd["decoder.positional_embedding"]
    g = math.isqrt(positional.shape[0] - 1)
    masks = np.broadcast_to(sd["decoder.mask_token"], (b, g * g, width))
    cls = np.broadcast_to(sd["decoder.class_embedding"], (b, 1, width))
    masks = np.concatenate([cls, masks], axis=1) + positional
    x = x + sd["decoder.latent_token_positional_embedding"][:n]
    x = np_transformer(np.concatenate([masks, x], axis=1), sd, "decoder", cfg["decoder_size"])
    x = np_layer_norm(x[:, 1 : 1 + g * g], sd, "decoder.ln_post")
    x = x.transpose(0, 2, 1).reshape(b, width, g, g)
    if cfg["decoder_head"] == "proxy_codes":
        return np_conv1x1(np.tanh(np_conv1x1(x, sd, "decoder.ffn.0")), sd, "decoder.ffn.2")
    p = cfg["patch_size"]
    x = np_conv1x1(x, sd, "decoder.ffn.0")  # rearrange 'b (p1 p2 c) h w -> b c (h p1) (w p2)'
    x = x.reshape(b, p, p, 3, g, g).transpose(0, 3, 4, 1, 5, 2).reshape(b, 3, g * p, g * p)
    return np_conv_same(x, sd, "decoder.conv_out")  # 3x3, padding 1


def np_stage2_pixels(logits, sd):
    """TiTok.decode with finetune_decoder: softmax over the codes, mixed pixel_quantize codebook,
    MaskGIT-VQGAN decoder (reference keyed `decoder.*`, as in the MaskGIT file)."""
    mixed = np.einsum("nchw,cd->ndhw", np_softmax(logits, axis=1), sd["pixel_quantize.embedding.weight"])
    vqgan = RecordingDict({k[len("pixel_"):]: v for k, v in dict.items(sd) if k.startswith("pixel_decoder.")})
    tiny = MASKGIT_VQGAN_TINY
    out = np_vqgan_decoder(mixed, vqgan, tiny["hidden_channels"], tiny["channel_mult"], tiny["num_res_blocks"])
    sd.read.update(f"pixel_{k}" for k in vqgan.read)
    return out


# ---------------------------------------------------------------------------------------------
# Weights and our forward


def random_state_dict(model, seed=0):
    """Random float32 arrays under the official names and shapes of `model`."""
    rng = np.random.default_rng(seed)
    sd = {}
    for key, shape in ct.expected_torch_shapes(model).items():
        if key.endswith("embedding.weight"):  # codebooks
            value = rng.normal(size=shape)
        elif key.endswith("weight") and len(shape) >= 2:  # Linear, conv, packed in_proj
            value = rng.normal(size=shape) / math.sqrt(np.prod(shape[1:]))
        elif key.endswith("weight"):  # LayerNorm, GroupNorm
            value = 1.0 + 0.1 * rng.normal(size=shape)
        elif key.endswith("bias"):
            value = 0.1 * rng.normal(size=shape)
        else:  # embeddings and tokens: width^-0.5 randn, the official init
            value = rng.normal(size=shape) / math.sqrt(shape[-1])
        sd[key] = value.astype(np.float32)
    return sd


@functools.cache
def our_forward(fields: tuple):
    """One compiled function of a converted tiny TiTok: every output the tests compare."""
    model = TiTok(**dict(fields))

    def run(params, images, ids):
        variables = {"params": params}
        out = {
            "latents": model.apply(variables, images, method=lambda m, x: m.encoder(x, m.latent_tokens)),
            "ids": model.apply(variables, images, method=TiTok.encode)[1]["indices"],
            "decoded": model.apply(variables, ids, method=TiTok.decode_tokens),
        }
        if model.pixel_decoder:
            out["pixels"] = model.apply(variables, ids, method=lambda m, t: m.proxy_logits_to_pixels(m.decode_tokens(t)))
        return out

    return jax.jit(run)


def check_against_reference(fields, seed):
    model = TiTok(**fields)
    sd = random_state_dict(model, seed)
    params = ct.convert_titok(sd, model)
    images = np.random.default_rng(seed + 1).uniform(0, 1, size=(2, 32, 32, 3))

    ref_sd = RecordingDict({k: v.astype(np.float64) for k, v in sd.items()})
    z = np_encoder(images.transpose(0, 3, 1, 2), ref_sd, fields)
    ref_ids, ref_q, margins = np_quantize(z, ref_sd["quantize.embedding.weight"], fields["use_l2_norm"])
    assert margins.min() > 1e-4  # no near ties: the ids must agree exactly
    ref_decoded = np_decoder(ref_q, ref_sd, fields)

    out = jax.device_get(our_forward(tuple(sorted(fields.items())))(
        params, jnp.asarray(images, jnp.float32), jnp.asarray(ref_ids, jnp.int32)))
    scale = np.abs(z).max()
    np.testing.assert_allclose(out["latents"], z[:, :, 0, :].transpose(0, 2, 1), atol=1e-4 * scale, rtol=1e-4)
    np.testing.assert_array_equal(out["ids"], ref_ids)
    assert len(np.unique(ref_ids)) > 3
    ref_nhwc = ref_decoded.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(out["decoded"], ref_nhwc, atol=1e-4 * np.abs(ref_nhwc).max(), rtol=1e-4)
    return out, ref_sd, ref_decoded, sd


# ---------------------------------------------------------------------------------------------
# Equivalence with the official forward


def test_stage2_layout_matches_numpy_reference_of_official_forward():
    out, ref_sd, ref_logits, sd = check_against_reference(STAGE2, seed=3)
    assert out["decoded"].shape == (2, 16, 16, STAGE2["proxy_codebook_size"])
    ref_pixels = np_stage2_pixels(ref_logits, ref_sd)
    np.testing.assert_allclose(out["pixels"], ref_pixels.transpose(0, 2, 3, 1), atol=1e-4, rtol=1e-4)
    assert ref_sd.read == set(sd)  # every official tensor is used by the reference


def test_pixel_head_layout_matches_numpy_reference_of_official_forward():
    out, ref_sd, _, sd = check_against_reference(PIXELS, seed=7)
    assert out["decoded"].shape == (2, 32, 32, 3)
    assert ref_sd.read == set(sd)


def test_mapping_of_attention_convs_and_norms():
    model = TiTok(**STAGE2)
    sd = random_state_dict(model, seed=11)
    params = ct.convert_titok(sd, model)
    block = params["encoder"]["transformer"]["block_1"]["attn"]
    in_w, in_b = sd["encoder.transformer.1.attn.in_proj_weight"], sd["encoder.transformer.1.attn.in_proj_bias"]
    for i, name in enumerate(("query", "key", "value")):  # rows [q; k; v]
        np.testing.assert_array_equal(block[name]["kernel"], in_w[64 * i : 64 * (i + 1)].T)
        np.testing.assert_array_equal(block[name]["bias"], in_b[64 * i : 64 * (i + 1)])
    np.testing.assert_array_equal(block["out"]["kernel"], sd["encoder.transformer.1.attn.out_proj.weight"].T)
    np.testing.assert_array_equal(params["encoder"]["patch_embed"]["kernel"],
                                  sd["encoder.patch_embed.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["encoder"]["conv_out"]["kernel"], sd["encoder.conv_out.weight"][:, :, 0, 0].T)
    np.testing.assert_array_equal(params["decoder"]["ffn_2"]["kernel"], sd["decoder.ffn.2.weight"][:, :, 0, 0].T)
    np.testing.assert_array_equal(params["decoder"]["ln_post"]["norm"]["scale"], sd["decoder.ln_post.weight"])
    np.testing.assert_array_equal(params["quantize"]["codebook"], sd["quantize.embedding.weight"])
    np.testing.assert_array_equal(params["pixel_vqgan"]["pixel_quantize"]["embedding"],
                                  sd["pixel_quantize.embedding.weight"])
    assert all(v.dtype == np.float32 for v in jax.tree.leaves(params))


# ---------------------------------------------------------------------------------------------
# Loud failures


def test_converter_fails_loudly_on_missing_unused_and_misshaped_keys():
    model = TiTok(**STAGE2)
    sd = random_state_dict(model, seed=13)
    bad = dict(sd)
    del bad["encoder.ln_post.bias"]
    bad["encoder.extra.weight"] = np.zeros(3)
    bad["decoder.ffn.2.weight"] = np.zeros((63, 128, 1, 1))
    bad["encoder.transformer.0.attn.in_proj_weight"] = np.zeros((64, 64))
    with pytest.raises(ValueError) as error:
        ct.convert_titok(bad, model)
    message = str(error.value)
    assert "TiTok(image_size=32, patch_size=2, num_latent_tokens=8" in message
    assert "1 missing keys: encoder.ln_post.bias (64,)" in message
    assert "1 unexpected keys: encoder.extra.weight" in message
    assert "2 mis-shaped keys: " in message
    assert "decoder.ffn.2.weight (63, 128, 1, 1) (expected (64, 128, 1, 1))" in message
    assert "encoder.transformer.0.attn.in_proj_weight (64, 64) (expected (192, 64))" in message

    stage1 = {k: v for k, v in sd.items() if not k.startswith("pixel_")}
    with pytest.raises(ValueError, match=r"missing keys: pixel_.*a stage-1 checkpoint\?"):
        ct.convert_titok(stage1, model)
    with pytest.raises(ValueError, match=r"unexpected keys: pixel_.*pixel_decoder='f16_256'"):
        ct.convert_titok(sd, TiTok(**{**STAGE2, "pixel_decoder": ""}))
    with pytest.raises(ValueError, match="not a TiTok tokenizer state dict"):
        ct.convert_titok({"decoder.conv_in.weight": np.zeros((1,))}, model)
    with pytest.raises(ValueError, match="unknown TiTok variant 'titok_l64'"):
        ct.released_model("titok_l64")


# ---------------------------------------------------------------------------------------------
# The released layouts


def torch_shapes_and_count(variant):
    """(official key -> shape, our parameter count), from one jax.eval_shape of the released model."""
    ours = ct.param_shapes(ct.released_model(variant))
    torch_shapes = {ct.torch_key(p): ct.torch_shape(p, s) for p, s in ct.packed_shapes(ours).items()}
    return torch_shapes, sum(int(np.prod(s)) for s in ours.values())


def module_counts(torch_shapes):
    counts = {}
    for key, shape in torch_shapes.items():
        module = key.split(".")[0]
        counts[module] = counts.get(module, 0) + int(np.prod(shape))
    return counts


def test_released_layouts_have_the_official_names_shapes_and_counts():
    shapes, count = torch_shapes_and_count("titok_l32")
    assert count == 641_054_735  # notes 1.1, from the instantiated torch modules
    counts = module_counts(shapes)
    assert sum(counts.values()) == count
    millions = {k: round(v / 1e6, 2) for k, v in counts.items()}
    assert millions == {"latent_tokens": 0.03, "encoder": 303.41, "decoder": 306.82, "quantize": 0.05,
                        "pixel_quantize": 0.26, "pixel_decoder": 30.48}
    for key, shape in {  # notes 1.8
        "latent_tokens": (32, 1024), "encoder.positional_embedding": (257, 1024),
        "encoder.patch_embed.weight": (1024, 3, 16, 16), "encoder.transformer.23.attn.in_proj_weight": (3072, 1024),
        "encoder.transformer.0.attn.in_proj_bias": (3072,), "encoder.transformer.0.mlp.c_fc.weight": (4096, 1024),
        "encoder.conv_out.weight": (12, 1024, 1, 1), "decoder.mask_token": (1, 1, 1024),
        "decoder.decoder_embed.weight": (1024, 12), "decoder.ffn.0.weight": (2048, 1024, 1, 1),
        "decoder.ffn.2.weight": (1024, 2048, 1, 1), "quantize.embedding.weight": (4096, 12),
        "pixel_quantize.embedding.weight": (1024, 256), "pixel_decoder.up.1.block.0.nin_shortcut.weight": (128, 128, 1, 1),
    }.items():
        assert shapes[key] == shape, key
    assert "decoder.conv_out.weight" not in shapes  # Identity in the legacy head

    for variant, expected in {"titok_b64": {"latent_tokens": 0.05, "encoder": 85.90, "decoder": 88.07},
                              "titok_s128": {"latent_tokens": 0.07, "encoder": 25.82, "decoder": 27.00}}.items():
        got = module_counts(torch_shapes_and_count(variant)[0])
        assert {k: round(got[k] / 1e6, 2) for k in expected} == expected, variant

    vq8k = torch_shapes_and_count("titok_bl64_vq8k")[0]
    assert vq8k["quantize.embedding.weight"] == (8192, 64)
    assert vq8k["encoder.conv_out.weight"] == (64, 768, 1, 1)
    assert vq8k["decoder.decoder_embed.weight"] == (1024, 64)
    assert vq8k["decoder.ffn.0.weight"] == (768, 1024, 1, 1)
    assert vq8k["decoder.conv_out.weight"] == (3, 3, 3, 3)
    assert not any(k.startswith(("pixel_", "decoder.ffn.2")) for k in vq8k)


# ---------------------------------------------------------------------------------------------
# Files


def write_safetensors(path, arrays, dtypes):
    """The safetensors layout, written by hand: u64 header size, JSON header, raw data."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, array in arrays.items():
        if dtypes.get(name) == "BF16":
            blob = (np.asarray(array, np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        else:
            blob = np.asarray(array, "<f4").tobytes()
        header[name] = {"dtype": dtypes.get(name, "F32"), "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_files_round_trip_and_errors_name_the_problem(tmp_path):
    model = TiTok(**PIXELS)
    sd = random_state_dict(model, seed=17)
    params = ct.convert_titok(sd, model)

    np.savez(tmp_path / "torch_keyed.npz", **sd)
    written = save_params(params, str(tmp_path / "converted.npz"))
    write_safetensors(tmp_path / "model.safetensors", sd, {})
    for source in (tmp_path / "torch_keyed.npz", written, tmp_path / "model.safetensors"):
        loaded = ct.load_params(str(source), model)
        assert jax.tree.structure(loaded) == jax.tree.structure(params)
        for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"converted.npz does not match TiTok\(.*missing keys"):
        ct.load_params(written, TiTok(**STAGE2))

    values = np.array([[1.5, -2.0, 3.140625], [0.0, 1e-3, -7.0]], np.float32)
    write_safetensors(tmp_path / "bf16.safetensors", {"w": values}, {"w": "BF16"})
    bf16 = safetensors_format.load(str(tmp_path / "bf16.safetensors"))["w"]
    assert bf16.dtype == np.float32 and bf16.shape == (2, 3)
    np.testing.assert_allclose(bf16, values, rtol=2**-7)

    with pytest.raises(FileNotFoundError, match="fun-research/TiTok/resolve/main/tokenizer_titok_l32.bin"):
        ct.main(["--variant", "titok_l32", "--input", str(tmp_path / "absent.bin"), "--output", str(tmp_path)])
    # main() builds the released model: tiny weights fail by name.
    with pytest.raises(ValueError, match=r"in_proj_weight \(192, 64\) \(expected \(3072, 1024\)\)"):
        ct.main(["--variant", "titok_bl64_vq8k", "--input", str(tmp_path / "model.safetensors"),
                 "--output", str(tmp_path)])


# ---------------------------------------------------------------------------------------------
# The convert CLI


class Parsed(Exception):
    pass


def test_every_arch_reaches_its_converter_with_arguments_it_accepts(tmp_path, monkeypatch):
    """Each converter's own parser accepts what the dispatcher passes (the run stops after parsing)."""
    source = tmp_path / "weights.pth"
    source.write_bytes(b"")
    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(parse_args(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    expected = {"var_vqvae", "var_d16", "var_d20", "var_d24", "var_d30", "var_d36", "maskgit_vqgan",
                "titok_l32", "titok_b64", "titok_s128", "maskgit_l32", "maskgit_b64", "maskgit_s128",
                "inception_fid", "lpips", "convnext_s"}
    assert expected <= set(convert.ARCHS)
    for arch in convert.ARCHS:
        name, url = convert.download_source(arch)
        assert name and url.startswith("https://"), arch
        with pytest.raises(Parsed) as parsed:
            convert.convert(arch, str(source), str(tmp_path / "out"))
        args = vars(parsed.value.args[0])
        assert args["input"] == str(source), arch
        assert args["output"].startswith(str(tmp_path / "out")), arch
    with pytest.raises(Parsed) as parsed:
        convert.convert("var_d36", str(source), str(tmp_path / "out"))
    assert vars(parsed.value.args[0])["depth"] == 36 and vars(parsed.value.args[0])["shared_adaln"]
    with pytest.raises(Parsed) as parsed:
        convert.convert("maskgit_b64", str(source), str(tmp_path / "out"))
    assert vars(parsed.value.args[0]) == {"variant": "B-64", "input": str(source),
                                          "output": str(tmp_path / "out" / "maskgit_b64.npz")}


def test_cli_unknown_arch_and_missing_files_are_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        convert.main(["--arch", "titok_l64", "--input", "x.bin", "--output", str(tmp_path)])
    assert "unknown --arch 'titok_l64'; known: var_vqvae, var_d16" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown arch 'vgg'; known: .*lpips, convnext_s"):
        convert.convert("vgg", "x.bin", str(tmp_path))
    absent = str(tmp_path / "tokenizer_titok_l32.bin")
    with pytest.raises(FileNotFoundError, match=r"tokenizer_titok_l32.bin' not found; --arch titok_l32 converts "
                                                 r"tokenizer_titok_l32.bin, released at https://huggingface.co/fun-research"):
        convert.main(["--arch", "titok_l32", "--input", absent, "--output", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="var_d36.pth, released at https://huggingface.co/FoundationVision/var"):
        convert.convert("var_d36", str(tmp_path / "var_d36.pth"), str(tmp_path))
    present = tmp_path / "present.pth"
    present.write_bytes(b"")
    with pytest.raises(ValueError, match="--lin .* only applies to --arch lpips, not convnext_s"):
        convert.convert("convnext_s", str(present), str(tmp_path), lin=str(present))
    with pytest.raises(FileNotFoundError, match="LPIPS lin-heads file .* not found"):
        convert.convert("lpips", str(present), str(tmp_path), lin=str(tmp_path / "vgg.pth"))


def test_cli_converts_lpips_end_to_end_and_records_it(tmp_path):
    """The smallest released model (VGG16 trunk + lin heads), through the real converter."""
    rng = np.random.default_rng(0)
    sd = {k: rng.standard_normal(size=s, dtype=np.float32) for k, s in convert_perceptual.expected_torch_shapes("lpips").items()}
    np.savez(tmp_path / "vgg16.npz", **{k: v for k, v in sd.items() if not k.startswith("lin")})
    np.savez(tmp_path / "lin.npz", **{k: v for k, v in sd.items() if k.startswith("lin")})
    out = tmp_path / "weights"
    record = convert.main(["--arch", "lpips", "--input", str(tmp_path / "vgg16.npz"), "--lin",
                           str(tmp_path / "lin.npz"), "--output", str(out)])
    total = sum(v.size for v in sd.values())
    assert json.loads((out / "convert.json").read_text()) == {"lpips_vgg16.npz": record}
    assert record == {"arch": "lpips", "input": "vgg16.npz", "output": "lpips_vgg16.npz", "parameters": total,
                      "converter": "titok_var.tools.convert_perceptual", "lin": "lin.npz"}
    params = convert_perceptual.load_params("lpips", str(out / "lpips_vgg16.npz"))
    np.testing.assert_array_equal(params["vgg"]["features_0"]["kernel"], sd["features.0.weight"].transpose(2, 3, 1, 0))

    # ConvNeXt-S from a .safetensors (numpy only) into the same folder: both records are kept.
    convnext_sd = {k: rng.standard_normal(size=s, dtype=np.float32)
                   for k, s in convert_perceptual.expected_torch_shapes("convnext_s").items()}
    safetensors_format.save(convnext_sd, str(tmp_path / "convnext_small.safetensors"))
    second = convert.main(["--arch", "convnext_s", "--input", str(tmp_path / "convnext_small.safetensors"),
                           "--output", str(out)])
    assert json.loads((out / "convert.json").read_text()) == {"lpips_vgg16.npz": record, "convnext_small.npz": second}
    assert second["parameters"] == sum(v.size for v in convnext_sd.values())
