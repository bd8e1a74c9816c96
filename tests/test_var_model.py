"""VAR transformer: official forward (NumPy reference over torch-named weights), block causality,
KV-cached per-scale decoding, converter, released parameter counts and initialisation.

The reference follows the official torch modules (reference notes Sec. 2) in float64, with torch
layouts: Linear weights (out, in), mat_qkv (3C, C) ordered [q | k | v] and head-major, AdaLN
chunks [g1, g2, s1, s2, b1, b2]. Params come from random torch state dicts pushed through the
converter: jitted `init` compiles slowly on CPU, so only the init-statistics test runs it.
"""

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from titok_var.models.var import VAR, block_causal_mask, drop_path, init_kv_cache, scale_ids, scale_spans
from titok_var.sharding import mesh as mesh_lib
from titok_var.sharding import rules as rules_lib
from titok_var.tools import convert_var_transformer as convert

TINY = {"depth": 2, "width": 64, "num_heads": 2, "vocab_size": 32, "vae_channels": 8, "patch_nums": (1, 2, 3),
        "num_classes": 5}
L_TINY = 14


def tiny(**kw):
    return VAR(**{**TINY, **kw})


# ---------------------------------------------------------------------------------------------
# Official layout (reference notes Sec. 2.7 / Appendix B), built independently of the model.


def official_shapes(depth, patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16), width=None, heads=None, vocab=4096,
                    cvae=32, num_classes=1000, shared=False, buffers=False):
    C = 64 * depth if width is None else width
    H = depth if heads is None else heads
    L = sum(p * p for p in patch_nums)
    shapes = {
        "pos_start": (1, patch_nums[0] ** 2, C),
        "pos_1LC": (1, L, C),
        "word_embed.weight": (C, cvae), "word_embed.bias": (C,),
        "class_emb.weight": (num_classes + 1, C),
        "lvl_embed.weight": (len(patch_nums), C),
    }
    if buffers:
        shapes.update({"lvl_1L": (1, L), "attn_bias_for_masking": (1, 1, L, L)})
    if shared:
        shapes.update({"shared_ada_lin.1.weight": (6 * C, C), "shared_ada_lin.1.bias": (6 * C,)})
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({
            b + "attn.scale_mul_1H11": (1, H, 1, 1), b + "attn.q_bias": (C,), b + "attn.v_bias": (C,),
            b + "attn.mat_qkv.weight": (3 * C, C),
            b + "attn.proj.weight": (C, C), b + "attn.proj.bias": (C,),
            b + "ffn.fc1.weight": (4 * C, C), b + "ffn.fc1.bias": (4 * C,),
            b + "ffn.fc2.weight": (C, 4 * C), b + "ffn.fc2.bias": (C,),
        })
        if shared:
            shapes[b + "ada_gss"] = (1, 1, 6, C)
        else:
            shapes.update({b + "ada_lin.1.weight": (6 * C, C), b + "ada_lin.1.bias": (6 * C,)})
        if buffers:
            shapes[b + "attn.zero_k_bias"] = (C,)
    shapes.update({"head_nm.ada_lin.1.weight": (2 * C, C), "head_nm.ada_lin.1.bias": (2 * C,),
                   "head.weight": (vocab, C), "head.bias": (vocab,)})
    return shapes


def random_torch_state_dict(model: VAR, seed=0):
    """A checkpoint-like state dict for `model` (buffers included), with values large enough that
    every path (AdaLN gates, biases, the scale_mul cap) matters."""
    rng = np.random.default_rng(seed)
    sd = {}
    shapes = official_shapes(model.depth, model.patch_nums, model.embed_dim, model.heads, model.vocab_size,
                             model.vae_channels, model.num_classes, model.shared_adaln, buffers=True)
    ids = np.concatenate([np.full(p * p, i) for i, p in enumerate(model.patch_nums)])
    for key, shape in shapes.items():
        if key == "lvl_1L":
            value = ids[None]
        elif key == "attn_bias_for_masking":
            value = np.where(ids[:, None] >= ids[None, :], 0.0, -np.inf)[None, None]
        elif key.endswith("zero_k_bias"):
            value = np.zeros(shape)
        elif key.endswith("scale_mul_1H11"):
            value = math.log(4.0) + 0.3 * rng.normal(size=shape)
            value[0, 0] = 5.0  # above ln(100): the cap must apply
        elif key.endswith("weight") and len(shape) == 2 and "emb" not in key:
            value = rng.normal(size=shape) / math.sqrt(shape[1])
        elif key.endswith("bias"):
            value = 0.1 * rng.normal(size=shape)
        else:  # embeddings, positions, ada_gss
            value = 0.5 * rng.normal(size=shape)
        sd[key] = np.asarray(value, np.int64 if key == "lvl_1L" else np.float32)
    return sd


# ---------------------------------------------------------------------------------------------
# NumPy reference of the official forward (float64).


def np_linear(x, sd, name):
    return x @ sd[name + ".weight"].astype(np.float64).T + sd[name + ".bias"]


def np_layer_norm(x, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)


def np_silu(x):
    return x / (1.0 + np.exp(-x))


def np_gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_normalize(x, eps=1e-12):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def np_attention(x, sd, prefix, heads, attn_bias):
    """Official SelfAttention with attn_l2_norm=True; x (B, T, C), attn_bias (T, S) or None."""
    B, T, C = x.shape
    bias = np.concatenate([sd[prefix + "q_bias"], sd[prefix + "zero_k_bias"], sd[prefix + "v_bias"]])
    qkv = (x @ sd[prefix + "mat_qkv.weight"].astype(np.float64).T + bias).reshape(B, T, 3, heads, C // heads)
    q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # (B, H, T, d) each
    scale_mul = np.exp(np.minimum(sd[prefix + "scale_mul_1H11"].astype(np.float64), math.log(100)))
    q, k = np_normalize(q) * scale_mul, np_normalize(k)
    logits = q @ k.transpose(0, 1, 3, 2)  # softmax scale 1
    if attn_bias is not None:
        logits = logits + attn_bias
    out = (np_softmax(logits) @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
    return np_linear(out, sd, prefix + "proj")


def np_var_forward(sd, labels, x_in, patch_nums, depth, heads, shared):
    """VAR.forward with cond_drop_rate 0: (B, L, V) logits."""
    C = sd["pos_start"].shape[-1]
    ids = np.concatenate([np.full(p * p, i) for i, p in enumerate(patch_nums)])
    attn_bias = np.where(ids[:, None] >= ids[None, :], 0.0, -np.inf)
    cond = sd["class_emb.weight"].astype(np.float64)[labels]
    sos = cond[:, None] + sd["pos_start"]
    x = np.concatenate([sos, np_linear(x_in.astype(np.float64), sd, "word_embed")], axis=1)
    x = x + sd["lvl_embed.weight"][ids] + sd["pos_1LC"][0]
    if shared:
        shared_out = np_linear(np_silu(cond), sd, "shared_ada_lin.1").reshape(-1, 1, 6, C)
    for i in range(depth):
        prefix = f"blocks.{i}."
        if shared:
            gss = sd[prefix + "ada_gss"] + shared_out
        else:
            gss = np_linear(np_silu(cond), sd, prefix + "ada_lin.1").reshape(-1, 1, 6, C)
        g1, g2, s1, s2, b1, b2 = (gss[:, :, j] for j in range(6))
        x = x + np_attention(np_layer_norm(x) * (1 + s1) + b1, sd, prefix + "attn.", heads, attn_bias) * g1
        h = np_layer_norm(x) * (1 + s2) + b2
        h = np_linear(np_gelu_tanh(np_linear(h, sd, prefix + "ffn.fc1")), sd, prefix + "ffn.fc2")
        x = x + h * g2
    scale, shift = np.moveaxis(np_linear(np_silu(cond), sd, "head_nm.ada_lin.1").reshape(-1, 1, 2, C), 2, 0)
    return np_linear(np_layer_norm(x) * (1 + scale) + shift, sd, "head")


def inputs(model, batch=3, seed=1):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, model.num_classes + 1, batch)
    labels[-1] = model.num_classes  # the null class
    var_input = rng.normal(size=(batch, model.num_tokens - model.first_l, model.vae_channels)).astype(np.float32)
    return labels.astype(np.int32), var_input


def forward(model, params, labels, var_input):
    return np.asarray(model.apply({"params": params}, jnp.asarray(labels), jnp.asarray(var_input)))


# ---------------------------------------------------------------------------------------------
# Layout, forward, causality, cache.


def test_token_layout_and_block_causal_mask():
    assert scale_ids((1, 2, 3)).tolist() == [0] + [1] * 4 + [2] * 9
    assert scale_spans((1, 2, 3)) == ((0, 1), (1, 5), (5, 14))
    mask = block_causal_mask((1, 2, 3))
    expected = np.zeros((14, 14), bool)
    for begin, end in scale_spans((1, 2, 3)):
        expected[begin:end, :end] = True  # a scale sees all coarser scales and itself fully
    np.testing.assert_array_equal(mask, expected)
    assert block_causal_mask((1, 2, 3, 4, 5, 6, 8, 10, 13, 16)).shape == (680, 680)


@pytest.mark.parametrize("shared", [False, True])
def test_converted_state_dict_matches_numpy_reference_of_official_forward(shared):
    model = tiny(shared_adaln=shared)
    sd = random_torch_state_dict(model, seed=3)
    params = convert.convert_var_transformer(sd, model)
    labels, var_input = inputs(model)
    got = forward(model, params, labels, var_input)
    want = np_var_forward(sd, labels, var_input, model.patch_nums, model.depth, model.heads, shared)
    assert got.shape == (3, L_TINY, 32) and got.dtype == np.float32
    assert np.abs(want).max() > 1.0  # not a degenerate comparison
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)


def test_logits_of_a_scale_depend_only_on_that_and_coarser_scales():
    model = tiny()
    params = convert.convert_var_transformer(random_torch_state_dict(model), model)
    labels, var_input = inputs(model)
    base = forward(model, params, labels, var_input)
    spans = scale_spans(model.patch_nums)
    for k in (1, 2):  # change the inputs of scale k (var_input rows are tokens first_l..L-1)
        begin, end = spans[k]
        changed = var_input.copy()
        changed[:, begin - 1:end - 1] += 1.0
        out = forward(model, params, labels, changed)
        np.testing.assert_allclose(out[:, :begin], base[:, :begin], atol=1e-6, rtol=0)
        assert np.all(np.abs(out[:, begin:] - base[:, begin:]).max(axis=-1) > 1e-3)
    other = labels.copy()
    other[0] = (labels[0] + 1) % model.num_classes
    out = forward(model, params, other, var_input)
    assert np.all(np.abs(out[0] - base[0]).max(axis=-1) > 1e-3)  # the class reaches every scale
    np.testing.assert_array_equal(out[1:], base[1:])


def decode_all_scales(model, params, labels, var_input):
    """Per-scale KV-cached decoding fed with the teacher inputs; concatenated logits."""
    cache = init_kv_cache(model, labels.shape[0])
    logits = []
    for si, (begin, end) in enumerate(scale_spans(model.patch_nums)):
        scale_input = None if si == 0 else var_input[:, begin - model.first_l:end - model.first_l]
        out, cache = model.apply({"params": params}, labels, si, scale_input, cache, method=model.decode_scale)
        logits.append(out)
    return jnp.concatenate(logits, axis=1), cache


@pytest.mark.parametrize("shared", [False, True])
def test_kv_cached_decoding_equals_teacher_forced_forward(shared):
    model = tiny(shared_adaln=shared)
    params = convert.convert_var_transformer(random_torch_state_dict(model, seed=5), model)
    labels, var_input = inputs(model, seed=2)
    full = forward(model, params, labels, var_input)
    cached, cache = decode_all_scales(model, params, jnp.asarray(labels), jnp.asarray(var_input))
    np.testing.assert_allclose(np.asarray(cached), full, atol=1e-5, rtol=1e-5)
    # every position of the cache was written: cached keys are unit vectors
    norms = np.linalg.norm(np.asarray(cache[0]["key"]), axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    if not shared:  # the last scale under jit (static scale index, 4-D input map), from the eager cache
        side = model.patch_nums[-1]
        begin, end = scale_spans(model.patch_nums)[-1]
        last_map = var_input[:, begin - 1:end - 1].reshape(-1, side, side, model.vae_channels)
        cache = init_kv_cache(model, 3)
        for si in range(2):
            _, cache = model.apply({"params": params}, labels, si, None if si == 0 else var_input[:, :4], cache,
                                   method=model.decode_scale)
        step = jax.jit(lambda p, y, x, c: model.apply({"params": p}, y, 2, x, c, method=model.decode_scale))
        jitted, _ = step(params, labels, last_map, cache)
        np.testing.assert_allclose(np.asarray(jitted), full[:, begin:], atol=1e-5, rtol=1e-5)


def test_drop_path_is_per_sample_and_only_in_training():
    x = jnp.ones((4000, 3, 2))
    out = np.asarray(drop_path(x, 0.25, jax.random.key(0)))
    per_sample = out.reshape(4000, -1)
    assert set(np.unique(per_sample).tolist()) <= {0.0, np.float32(1.0) / np.float32(0.75)}
    assert np.all(per_sample.min(axis=1) == per_sample.max(axis=1))  # whole samples
    assert abs((per_sample[:, 0] == 0).mean() - 0.25) < 0.03
    np.testing.assert_array_equal(drop_path(x, 0.0, jax.random.key(0)), x)

    model = tiny(drop_path_rate=0.5)
    assert model.drop_path_rates == (0.0, 0.5)  # linspace(0, rate, depth) as the official blocks
    assert VAR(depth=16).drop_path_rates[-1] == pytest.approx(0.1 * 16 / 24)
    params = convert.convert_var_transformer(random_torch_state_dict(model), model)
    labels, var_input = inputs(model, batch=8)

    def run(m, deterministic, seed):
        return np.asarray(m.apply({"params": params}, labels, var_input, deterministic=deterministic,
                                  rngs={"dropout": jax.random.key(seed)}))

    base = forward(model, params, labels, var_input)
    np.testing.assert_array_equal(run(model, True, 1), base)
    np.testing.assert_array_equal(run(model, False, 1), run(model, False, 1))
    assert np.abs(run(model, False, 1) - run(model, False, 2)).max() > 1e-3
    np.testing.assert_array_equal(run(tiny(drop_path_rate=0.0), False, 1), base)


def test_bad_inputs_raise_clear_errors():
    model = tiny()
    params = convert.convert_var_transformer(random_torch_state_dict(model), model)
    labels, var_input = inputs(model)
    with pytest.raises(ValueError, match=re.escape("var_input must have shape (batch, L - first_l, vae_channels) "
                                                   "= (3, 13, 8)")):
        forward(model, params, labels, var_input[:, :-1])
    with pytest.raises(ValueError, match=re.escape("labels must lie in [0, 5]")):
        forward(model, params, np.array([0, 6, 1], np.int32), var_input)
    with pytest.raises(ValueError, match="labels must be a \\(batch,\\) integer array"):
        forward(model, params, labels.astype(np.float32), var_input)
    cache = init_kv_cache(model, 3)
    decode = model.decode_scale
    with pytest.raises(ValueError, match="scale 0 starts from the class token"):
        model.apply({"params": params}, labels, 0, var_input[:, :1], cache, method=decode)
    with pytest.raises(ValueError, match=re.escape("scale 2 input must have shape (3, 9, 8)")):
        model.apply({"params": params}, labels, 2, var_input[:, :4], cache, method=decode)
    with pytest.raises(ValueError, match="scale index must be a Python int in \\[0, 3\\)"):
        model.apply({"params": params}, labels, 3, None, cache, method=decode)
    with pytest.raises(ValueError, match=re.escape("cache key must have shape (3, 14, 2, 32)")):
        model.apply({"params": params}, labels, 0, None, init_kv_cache(model, 2), method=decode)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        forward(tiny(num_heads=3), params, labels, var_input)


# ---------------------------------------------------------------------------------------------
# Converter.


def test_converter_maps_every_official_key_and_round_trips(tmp_path):
    for shared in (False, True):
        model = tiny(shared_adaln=shared)
        expected = official_shapes(2, (1, 2, 3), 64, 2, 32, 8, 5, shared)
        assert convert.expected_torch_shapes(model) == expected
    model = tiny()
    sd = random_torch_state_dict(model)
    params = convert.convert_var_transformer(sd, model)
    qkv = params["blocks_1"]["attn"]["mat_qkv"]["kernel"]  # (C, 3, H, d): [q | k | v], head-major
    np.testing.assert_array_equal(qkv[:, 1, 0, :], sd["blocks.1.attn.mat_qkv.weight"][64:96].T)
    np.testing.assert_array_equal(params["blocks_0"]["ada_lin"]["kernel"], sd["blocks.0.ada_lin.1.weight"].T)
    np.testing.assert_array_equal(params["class_emb"]["embedding"], sd["class_emb.weight"])

    # Saved in convert_var's flat format and loaded back identically; torch-keyed .npz too.
    np.savez(tmp_path / "sd.npz", **sd)
    written = convert.save_params(params, str(tmp_path / "tiny.npz"))
    loaded = convert.load_params(written, model)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    from_torch_npz = convert.load_params(str(tmp_path / "sd.npz"), model)
    assert jax.tree.structure(from_torch_npz) == jax.tree.structure(params)
    with pytest.raises(ValueError, match="does not match the VAR depth=2 width=64"):
        convert.load_params(written, tiny(vocab_size=16))


def test_converter_fails_loudly_on_missing_extra_misshaped_and_nonzero_k_bias():
    model = tiny()
    sd = random_torch_state_dict(model)
    bad = dict(sd)
    del bad["blocks.1.ffn.fc2.bias"]
    with pytest.raises(ValueError, match=r"1 missing keys: blocks.1.ffn.fc2.bias \(64,\)$"):
        convert.convert_var_transformer(bad, model)
    bad = dict(sd, **{"blocks.2.attn.q_bias": np.zeros(64, np.float32)})
    with pytest.raises(ValueError, match=r"1 unexpected keys: blocks.2.attn.q_bias$"):
        convert.convert_var_transformer(bad, model)
    bad = dict(sd, **{"head.weight": sd["head.weight"].T})
    with pytest.raises(ValueError, match=re.escape("1 mis-shaped keys: head.weight (64, 32) (expected (32, 64))")):
        convert.convert_var_transformer(bad, model)
    bad = dict(sd, **{"blocks.0.attn.zero_k_bias": np.full(64, 0.5, np.float32)})
    with pytest.raises(ValueError, match="1 zero_k_bias buffers that are not zero: blocks.0.attn.zero_k_bias"):
        convert.convert_var_transformer(bad, model)
    with pytest.raises(ValueError, match=r"4 missing keys: blocks.0.ada_gss .* 4 unexpected keys: blocks.0.ada_lin"):
        convert.convert_var_transformer(sd, tiny(shared_adaln=True))
    vqvae_like = {"quantize.embedding.weight": np.zeros((32, 8), np.float32)}
    with pytest.raises(ValueError, match="none of its .* parameter keys is present"):
        convert.convert_var_transformer(vqvae_like, model)


def test_cli_writes_converted_params(tmp_path, monkeypatch):
    model = tiny()
    sd = random_torch_state_dict(model)
    np.savez(tmp_path / "sd.npz", **sd)
    # The CLI builds released-size models (only depth, shared AdaLN and schedule are flags):
    # give its VAR the tiny vocabulary, classes and width.
    monkeypatch.setattr(convert, "VAR", lambda **kw: VAR(**{**TINY, **kw}))
    convert.main(["--depth", "2", "--input", str(tmp_path / "sd.npz"), "--output", str(tmp_path / "out"),
                  "--patch-nums", "1,2,3"])
    written = tmp_path / "out" / "var_d2.npz"
    loaded = convert.load_params(str(written), model)
    want = convert.convert_var_transformer(sd, model)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="matches no released schedule"):
        convert.main(["--depth", "2", "--input", str(tmp_path / "sd.npz"), "--output", str(tmp_path / "o2")])


# ---------------------------------------------------------------------------------------------
# Released sizes.


def count(shapes):
    return sum(int(np.prod(s)) for s in shapes.values())


def test_d16_layout_and_parameter_count_are_official():
    expected = official_shapes(16)
    assert len(official_shapes(16, buffers=True)) == 220  # Appendix B entries
    got = convert.expected_torch_shapes(VAR(depth=16))
    assert got == expected
    assert count(expected) == 310_283_520


@pytest.mark.parametrize("depth,total", [(20, 600_917_136), (24, 1_033_399_360), (30, 2_010_020_356)])
def test_released_sizes_and_paper_eq8(depth, total):
    shapes = convert.param_shapes(VAR(depth=depth))
    assert count(shapes) == total  # measured on the official models (reference notes Sec. 0)
    w, h = 64 * depth, depth
    blocks = sum(int(np.prod(s)) for p, s in shapes.items() if p[0].startswith("blocks_"))
    # Eq. 8 counts the weight matrices only (attn 4w^2 + ffn 8w^2 + AdaLN 6w^2 per block); each
    # block adds the biases of q, v, proj, fc1 (4w), fc2, ada_lin (6w) = 14w and scale_mul (h).
    assert blocks == 73728 * depth**3 + depth * (14 * w + h)
    L = 680
    rest = w * (1 + L + 33 + 1001 + 10) + (2 * w * w + 2 * w) + (4096 * w + 4096)
    assert total - blocks == rest  # pos_start, pos_1LC, word_embed, class_emb, lvl_embed, head_nm, head


def test_d36_shared_adaln_size():
    model = VAR(depth=36, shared_adaln=True, patch_nums=(1, 2, 3, 4, 6, 9, 13, 18, 24, 32))
    shapes = convert.param_shapes(model)
    assert count(shapes) == 2_353_893_904
    w = 64 * 36
    blocks = sum(int(np.prod(s)) for p, s in shapes.items() if p[0].startswith("blocks_"))
    shared = count({p: s for p, s in shapes.items() if p[0] == "shared_ada_lin"})
    # Paper footnote: about 12 d w^2 + 6 w^2; exactly that plus per-block biases/ada_gss/scale_mul.
    assert blocks + shared == 12 * 36 * w * w + 6 * w * w + 36 * (8 * w + 6 * w + 36) + 6 * w


# ---------------------------------------------------------------------------------------------
# Initialisation and sharding annotations.


def test_initialisation_follows_official_init_weights():
    model = VAR(depth=1, width=128, num_heads=2, vocab_size=64, vae_channels=8, patch_nums=(1, 2), num_classes=5,
                init_adaln=0.5, init_adaln_gamma=1e-3, init_head=0.02)
    key = jax.random.key(0, impl="rbg")  # threefry compiles slowly on CPU
    params = nn.unbox(jax.jit(model.init)(key, jnp.zeros((1,), jnp.int32), jnp.zeros((1, 4, 8))))["params"]
    params = jax.tree.map(np.asarray, params)
    std = math.sqrt(1 / (3 * 128))

    def check_std(x, want):  # within 4 standard errors of a normal sample's std, 1 / sqrt(2n)
        assert abs(np.std(x) / want - 1) < 4 / math.sqrt(2 * np.size(x)), (np.std(x), want)

    block = params["blocks_0"]
    check_std(block["attn"]["mat_qkv"]["kernel"], std)
    check_std(block["ffn"]["fc1"]["kernel"], std)
    check_std(block["attn"]["proj"]["kernel"], std / math.sqrt(2))  # / sqrt(2 depth)
    check_std(block["ffn"]["fc2"]["kernel"], std / math.sqrt(2))
    check_std(block["ada_lin"]["kernel"][:, :256], std * 1e-3)  # gamma1, gamma2 columns
    check_std(block["ada_lin"]["kernel"][:, 256:], std * 0.5)
    check_std(params["head"]["kernel"], std * 0.02)
    check_std(params["head_nm"]["ada_lin"]["kernel"], std * 0.5)
    for leaf in (params["class_emb"]["embedding"], params["lvl_embed"]["embedding"], params["pos_1LC"],
                 params["pos_start"], params["word_embed"]["kernel"]):
        check_std(leaf, std)
    np.testing.assert_array_equal(block["attn"]["scale_mul_1H11"], np.full((1, 2, 1, 1), np.log(4.0), np.float32))
    for bias in (block["attn"]["q_bias"], block["attn"]["v_bias"], block["ada_lin"]["bias"], params["head"]["bias"],
                 block["ffn"]["fc2"]["bias"], params["word_embed"]["bias"]):
        np.testing.assert_array_equal(bias, 0)


def test_every_parameter_is_annotated_and_lowers_sharded():
    model = tiny(shared_adaln=True)
    labels, var_input = inputs(model, batch=8)
    boxed = jax.eval_shape(model.init, jax.random.key(0), labels, var_input)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
    rules = common.sharding_rules()
    rules_lib.assert_rules_cover(boxed, rules)
    assert rules_lib.logical_names_of(boxed) == {"embed", "mlp", "heads", "kv", "vocab", "length"}
    # Lowering (no compile: slow on CPU) under a mesh fails on any activation name or parameter
    # sharding the rules cannot place, in training and in cached decoding.
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rules_lib.assert_divisible(boxed, mesh, rules)
    shardings = jax.tree.map(lambda spec: jax.sharding.NamedSharding(mesh, spec),
                             rules_lib.mesh_partition_specs(boxed, rules)["params"],
                             is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          nn.unbox(boxed)["params"], shardings)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        jax.jit(lambda p, y, x: model.apply({"params": p}, y, x)).lower(params, labels, var_input)
        decode = jax.jit(lambda p, y, x, c: model.apply({"params": p}, y, 1, x, c, method=model.decode_scale))
        decode.lower(params, labels, var_input[:, :4], init_kv_cache(model, 8))
