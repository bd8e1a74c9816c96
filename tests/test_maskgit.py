"""MaskGIT generator over TiTok tokens: schedules, models vs NumPy references of the official torch
modules, converter, training masking and loss, and the jitted sampler."""

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from scipy.special import erf

from configs import common
from titok_var.generation import mask_schedule
from titok_var.generation import maskgit_sampling as sampling
from titok_var.losses import masked_tokens
from titok_var.models.maskgit import ImageBert, UViTBert, build_generator
from titok_var.sharding import mesh as mesh_lib
from titok_var.sharding import rules as rules_lib
from titok_var.tools import convert_maskgit

K, C, N = 16, 4, 8  # codebook, classes, tokens of the tiny generators


def tiny_bert(**kw):
    fields = {"codebook_size": K, "num_classes": C, "seq_len": N, "hidden_size": 32, "depth": 2, "num_heads": 4,
              "mlp_dim": 64, "dropout_rate": 0.0, "attention_dropout_rate": 0.0}
    fields.update(kw)
    return ImageBert(**fields)


def tiny_uvit(**kw):
    fields = {"codebook_size": K, "num_classes": C, "seq_len": N, "hidden_size": 32, "depth": 4, "num_heads": 4,
              "mlp_dim": 64}
    fields.update(kw)
    return UViTBert(**fields)


def init_params(model, seed=0):
    tokens = jnp.zeros((1, model.seq_len), jnp.int32)
    return nn.unbox(model.init(jax.random.key(seed), tokens, jnp.zeros((1,), jnp.int32)))["params"]


def random_inputs(seed, batch=3):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, K + 1, (batch, N)).astype(np.int32)  # K = mask id
    labels = rng.integers(0, C + 1, (batch,)).astype(np.int32)    # C = null class
    return tokens, labels


# ---------------------------------------------------------------------------------------------
# Schedules.


@pytest.mark.parametrize("name", sorted(mask_schedule.SCHEDULES))
def test_schedules_go_from_one_to_zero_monotonically(name):
    r = np.linspace(0.0, 1.0, 101)
    ratio = mask_schedule.mask_ratio(r, name)
    assert ratio[0] == pytest.approx(1.0, abs=1e-12) and ratio[-1] == pytest.approx(0.0, abs=1e-12)
    assert np.all(np.diff(ratio) <= 1e-12) and np.all(np.diff(ratio[:-1]) < 0)
    traced = jax.jit(mask_schedule.get_schedule(name))(jnp.asarray(r, jnp.float32))
    np.testing.assert_allclose(traced, ratio, atol=1e-6)


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown mask schedule 'cosin'.*arccos"):
        mask_schedule.mask_ratio(0.5, "cosin")
    with pytest.raises(ValueError, match="guidance_decay"):
        sampling.SamplingSettings(guidance_decay="cosine")


def test_masked_counts_follow_the_official_rule():
    # Worked numbers of the official generate (reference notes, Sec. 4.5).
    np.testing.assert_array_equal(mask_schedule.masked_count_schedule(8, 32), [29, 26, 24, 21, 18, 14, 10, 0])
    np.testing.assert_array_equal(mask_schedule.masked_count_schedule(8, 64), [58, 53, 48, 42, 36, 29, 20, 0])
    s128 = mask_schedule.masked_count_schedule(64, 128)
    assert s128[0] == 126 and list(s128[-3:]) == [20, 14, 0]
    # The [1, #masked - 1] clamp: every step before the last fixes >= 1 token and keeps >= 1 masked.
    np.testing.assert_array_equal(mask_schedule.masked_count_schedule(6, 4), [3, 2, 1, 1, 1, 0])
    step = jax.jit(lambda s, n: mask_schedule.num_masked_after_step(s, 8, 32, n))
    assert int(step(jnp.int32(0), jnp.int32(32))) == 29 and int(step(jnp.int32(7), jnp.int32(10))) == 0


def test_per_step_factors_match_the_official_generate():
    l32 = sampling.SamplingSettings.for_variant("L-32")
    assert (l32.num_steps, l32.guidance_scale, l32.randomize_temperature) == (8, 4.5, 9.5)
    np.testing.assert_allclose(sampling.guidance_scales(l32), np.arange(8) / 8 * 4.5)
    np.testing.assert_allclose(sampling.softmax_temperatures(l32), [1.2, 1.1, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5])
    np.testing.assert_allclose(sampling.gumbel_temperatures(l32), 9.5 * (1 - np.arange(1, 9) / 8))
    s128 = sampling.SamplingSettings.for_variant("S-128")
    np.testing.assert_allclose(sampling.guidance_scales(s128)[[0, 32, 48, 63]], [1.0, 1.225, 3.233, 6.869], atol=1e-3)
    np.testing.assert_allclose(sampling.guidance_scales(sampling.SamplingSettings(guidance_scale=2.0)), 2.0)


# ---------------------------------------------------------------------------------------------
# NumPy references of the official torch modules, reading torch-layout state dicts.


def np_layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def np_gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def np_attention(q, k, v, heads):
    b, l, d = q.shape
    split = lambda t: t.reshape(b, l, heads, d // heads).transpose(0, 2, 1, 3)
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d // heads)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return (probs @ v).transpose(0, 2, 1, 3).reshape(b, l, d)


def np_ids(tokens, labels):
    return np.concatenate([labels[:, None] + K + 1, tokens], axis=1)


def np_imagebert(sd, tokens, labels, depth, heads):
    """HF BertModel (post-LN, eps 1e-12) + lm_head, as ImageBert.forward with cond_drop_prob=0."""
    g = lambda name: sd["model." + name].astype(np.float64)
    lin = lambda x, name: x @ g(name + ".weight").T + g(name + ".bias")
    ln = lambda x, name: np_layer_norm(x, g(name + ".weight"), g(name + ".bias"), 1e-12)
    ids = np_ids(tokens, labels)
    h = (g("embeddings.word_embeddings.weight")[ids] + g("embeddings.position_embeddings.weight")[: ids.shape[1]]
         + g("embeddings.token_type_embeddings.weight")[0])
    h = ln(h, "embeddings.LayerNorm")
    for i in range(depth):
        p = f"encoder.layer.{i}."
        a = np_attention(lin(h, p + "attention.self.query"), lin(h, p + "attention.self.key"),
                         lin(h, p + "attention.self.value"), heads)
        h = ln(h + lin(a, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        m = np_gelu(lin(h, p + "intermediate.dense"))
        h = ln(h + lin(m, p + "output.dense"), p + "output.LayerNorm")
    return lin(h[:, 1:], "lm_head")


def np_uvit(sd, tokens, labels, depth, heads):
    """UViTBert.forward: LIFO long skips, pre-LN blocks (eps 1e-5), qkv without bias."""
    g = lambda name: sd[name].astype(np.float64)
    lin = lambda x, name: x @ g(name + ".weight").T + g(name + ".bias")
    ln = lambda x, name: np_layer_norm(x, g(name + ".weight"), g(name + ".bias"), 1e-5)

    def block(x, p, skip=None):
        if skip is not None:
            x = lin(np.concatenate([x, skip], -1), p + "skip_linear")
        y = ln(x, p + "norm1")
        qkv = y @ g(p + "attn.qkv.weight").T
        d = x.shape[-1]
        x = x + lin(np_attention(qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:], heads), p + "attn.proj")
        return x + lin(np_gelu(lin(ln(x, p + "norm2"), p + "mlp.fc1")), p + "mlp.fc2")

    ids = np_ids(tokens, labels)
    h = g("embeddings.weight")[ids] + g("pos_embed")[:, : ids.shape[1]]
    skips = []
    for i in range(depth // 2):
        h = block(h, f"in_blocks.{i}.")
        skips.append(h)
    h = block(h, "mid_block.")
    for i in range(depth // 2):
        h = block(h, f"out_blocks.{i}.", skips.pop())
    return lin(ln(h, "norm")[:, 1:], "lm_head")


# Test-side inverse of the converter: our params -> official names and layouts, written out by
# hand from the official module structure (not derived from tools/convert_maskgit).


def bert_to_torch(params, depth):
    sd = {}
    emb = params["embeddings"]
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        sd[f"model.embeddings.{name}.weight"] = emb[name]["embedding"]
    sd["model.embeddings.LayerNorm.weight"] = emb["LayerNorm"]["scale"]
    sd["model.embeddings.LayerNorm.bias"] = emb["LayerNorm"]["bias"]

    def linear(prefix, p):
        sd[prefix + ".weight"], sd[prefix + ".bias"] = np.asarray(p["kernel"]).T, p["bias"]

    def norm(prefix, p):
        sd[prefix + ".weight"], sd[prefix + ".bias"] = p["scale"], p["bias"]

    for i in range(depth):
        layer, t = params["encoder"][f"layer_{i}"], f"model.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            linear(t + "attention.self." + name, layer["attention"]["self"][name])
        linear(t + "attention.output.dense", layer["attention"]["output"]["dense"])
        norm(t + "attention.output.LayerNorm", layer["attention"]["output"]["LayerNorm"])
        linear(t + "intermediate.dense", layer["intermediate"]["dense"])
        linear(t + "output.dense", layer["output"]["dense"])
        norm(t + "output.LayerNorm", layer["output"]["LayerNorm"])
    linear("model.lm_head", params["lm_head"])
    return {k: np.asarray(v) for k, v in sd.items()}


def uvit_to_torch(params, depth):
    sd = {"embeddings.weight": params["embeddings"]["embedding"], "pos_embed": params["pos_embed"]}

    def block(prefix, p):
        for norm in ("norm1", "norm2"):
            sd[f"{prefix}.{norm}.weight"], sd[f"{prefix}.{norm}.bias"] = p[norm]["scale"], p[norm]["bias"]
        kernel = np.asarray(p["attn"]["qkv"]["kernel"])  # (D, 3, H, d)
        sd[f"{prefix}.attn.qkv.weight"] = kernel.reshape(kernel.shape[0], -1).T
        linears = {"attn.proj": p["attn"]["proj"], "mlp.fc1": p["mlp"]["fc1"], "mlp.fc2": p["mlp"]["fc2"]}
        if "skip_linear" in p:
            linears["skip_linear"] = p["skip_linear"]
        for name, sub in linears.items():
            sd[f"{prefix}.{name}.weight"], sd[f"{prefix}.{name}.bias"] = np.asarray(sub["kernel"]).T, sub["bias"]

    for i in range(depth // 2):
        block(f"in_blocks.{i}", params[f"in_blocks_{i}"])
        block(f"out_blocks.{i}", params[f"out_blocks_{i}"])
    block("mid_block", params["mid_block"])
    sd["norm.weight"], sd["norm.bias"] = params["norm"]["scale"], params["norm"]["bias"]
    sd["lm_head.weight"], sd["lm_head.bias"] = np.asarray(params["lm_head"]["kernel"]).T, params["lm_head"]["bias"]
    return {k: np.asarray(v) for k, v in sd.items()}


def randomized(sd, seed):
    """Same names and shapes, fresh values (LayerNorm scales around 1 so the check is sensitive)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, value in sd.items():
        fresh = rng.normal(0.0, 0.2, value.shape)
        if re.search(r"(LayerNorm|(^|\.)norm\d?)\.weight$", name):
            fresh += 1.0
        out[name] = fresh.astype(np.float32)
    return out


@pytest.mark.parametrize("kind", ["imagebert", "uvit"])
def test_converter_round_trip_and_numpy_reference(kind):
    model = tiny_bert() if kind == "imagebert" else tiny_uvit()
    to_torch = bert_to_torch if kind == "imagebert" else uvit_to_torch
    reference = np_imagebert if kind == "imagebert" else np_uvit
    params = init_params(model)
    official = to_torch(params, model.depth)
    expected = convert_maskgit.expected_torch_shapes(model)
    assert {k: v.shape for k, v in official.items()} == expected

    # Our params -> official dict -> our params is the identity.
    back = convert_maskgit.convert_generator(official, model)
    flat_back, flat_orig = traverse_util.flatten_dict(back), traverse_util.flatten_dict(params)
    assert flat_back.keys() == flat_orig.keys()
    for path in flat_orig:
        np.testing.assert_array_equal(flat_back[path], flat_orig[path], err_msg="/".join(path))

    # Random official weights: converted model == NumPy re-implementation of the torch forward.
    random_sd = randomized(official, seed=1)
    if kind == "imagebert":  # buffers saved by older transformers versions are ignored
        random_sd["model.embeddings.position_ids"] = np.arange(N + 1)[None]
    converted = convert_maskgit.convert_generator(random_sd, model)
    tokens, labels = random_inputs(2)
    ours = model.apply({"params": converted}, jnp.asarray(tokens), jnp.asarray(labels))
    assert ours.shape == (3, N, K) and ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, reference(random_sd, tokens, labels, model.depth, model.num_heads),
                               atol=2e-4, rtol=2e-4)


def test_converter_names_missing_unexpected_and_misshaped_keys():
    model = tiny_bert()
    sd = bert_to_torch(init_params(model), model.depth)
    del sd["model.encoder.layer.1.output.dense.bias"]
    sd["model.pooler.dense.weight"] = np.zeros((32, 32), np.float32)
    sd["model.lm_head.weight"] = np.zeros((K + 1, 32), np.float32)
    with pytest.raises(ValueError) as err:
        convert_maskgit.convert_imagebert(sd, model)
    message = str(err.value)
    assert "missing keys: model.encoder.layer.1.output.dense.bias (32,)" in message
    assert "unexpected keys: model.pooler.dense.weight" in message
    assert "model.lm_head.weight (17, 32) (expected (16, 32))" in message
    with pytest.raises(TypeError, match="UViTBert"):
        convert_maskgit.convert_uvitbert(sd, model)


def test_released_generators_have_official_sizes():
    sizes = {}
    for variant in ("L-32", "B-64", "S-128"):
        shapes = convert_maskgit.param_shapes(build_generator(variant))
        sizes[variant] = sum(int(np.prod(s)) for s in shapes.values())
    # 177.2 M (N=32), 177.23 M (N=64), 295.0 M (UViT, 21 blocks): reference notes Sec. 4.2 / 4.3.
    assert sizes == {"L-32": 177_202_432, "B-64": 177_227_008, "S-128": 294_990_848}
    model = build_generator("L-32")
    assert (model.mask_token_id, model.null_label, model.vocab_size) == (4096, 1000, 5098)


# ---------------------------------------------------------------------------------------------
# Model plumbing: dropout and sharding annotations.


def test_dropout_only_when_not_deterministic():
    model = tiny_bert(dropout_rate=0.1, attention_dropout_rate=0.1)
    params = init_params(model)
    tokens, labels = map(jnp.asarray, random_inputs(0))
    a = model.apply({"params": params}, tokens, labels)
    b = model.apply({"params": params}, tokens, labels, deterministic=True, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_array_equal(a, b)
    c = model.apply({"params": params}, tokens, labels, deterministic=False, rngs={"dropout": jax.random.key(1)})
    d = model.apply({"params": params}, tokens, labels, deterministic=False, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, c) and not np.allclose(c, d)


@pytest.mark.parametrize("make", [tiny_bert, tiny_uvit])
def test_every_parameter_is_annotated_and_runs_sharded(make):
    model = make()
    tokens, labels = map(jnp.asarray, random_inputs(0, batch=8))
    boxed = jax.eval_shape(model.init, jax.random.key(0), tokens, labels)
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
    rules = common.sharding_rules()
    rules_lib.assert_rules_cover(boxed, rules)
    params = init_params(model)
    expected = model.apply({"params": params}, tokens, labels)
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):  # activation names must all be known
        got = jax.jit(lambda p, t, y: model.apply({"params": p}, t, y))(params, tokens, labels)
    np.testing.assert_allclose(got, expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Training inputs and loss.


def test_training_masks_follow_the_official_rule():
    mask = np.asarray(masked_tokens.sample_mask(jax.random.key(0), 4096, N))
    counts = mask.sum(1)
    assert counts.min() >= 1 and counts.max() == N
    # n = max(1, round(N * arccos(t) / (pi/2))), t ~ U[0,1): P(n = N) = P(t < cos(pi/2 * 7.5/8)).
    assert abs(np.mean(counts == N) - math.cos(math.pi / 2 * 7.5 / N)) < 0.03
    assert abs(counts.mean() - N * 2 / math.pi) < 0.2  # E[arccos(t)/(pi/2)] = 2/pi
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, K, (64, N)), jnp.int32)
    inputs, mask = masked_tokens.mask_tokens(jax.random.key(1), tokens, K)
    np.testing.assert_array_equal(np.where(mask, K, tokens), inputs)


def test_label_dropout_rate_is_about_ten_percent():
    labels = jnp.asarray(np.random.default_rng(0).integers(0, C, 200_000), jnp.int32)
    dropped = np.asarray(masked_tokens.drop_labels(jax.random.key(0), labels, C))
    is_null = dropped == C
    assert abs(is_null.mean() - 0.1) < 0.004
    np.testing.assert_array_equal(dropped[~is_null], np.asarray(labels)[~is_null])
    inputs, labels2, mask = masked_tokens.prepare_inputs(jax.random.key(1), jnp.zeros((8, N), jnp.int32),
                                                         labels[:8], mask_token_id=K, null_label=C)
    assert inputs.shape == mask.shape == (8, N) and labels2.shape == (8,)


def test_masked_loss_ignores_unmasked_positions():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(4, N, K)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, K, (4, N)), jnp.int32)
    mask = jnp.asarray(rng.random((4, N)) < 0.5).at[:, 0].set(True)
    changed = jnp.where(mask[..., None], logits, logits + 5.0 * rng.normal(size=(4, N, K)))
    loss, metrics = masked_tokens.masked_token_loss(logits, targets, mask)
    loss2, metrics2 = masked_tokens.masked_token_loss(changed, targets, mask)
    assert float(loss) == pytest.approx(float(loss2), rel=1e-6)
    assert float(metrics["masked_accuracy"]) == pytest.approx(float(metrics2["masked_accuracy"]))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    assert float(loss) == pytest.approx(float(jnp.sum(ce * mask) / jnp.sum(mask)), rel=1e-5)
    # The official weighting (0.1 on unmasked positions, label smoothing 0.1) does see them.
    official, _ = masked_tokens.masked_token_loss(logits, targets, mask, **masked_tokens.OFFICIAL_LOSS_SETTINGS)
    official2, _ = masked_tokens.masked_token_loss(changed, targets, mask, **masked_tokens.OFFICIAL_LOSS_SETTINGS)
    assert abs(float(official) - float(official2)) > 1e-3
    smooth = optax.smooth_labels(jax.nn.one_hot(targets, K), 0.1)
    w = jnp.where(mask, 1.0, 0.1)
    expected = jnp.sum(optax.softmax_cross_entropy(logits, smooth) * w) / jnp.sum(w)
    assert float(official) == pytest.approx(float(expected), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Sampling.


def random_logits_fn(seed=0):
    """A fixed random bidirectional model (tiny ImageBert) as a logits_fn."""
    model = tiny_bert()
    params = init_params(model, seed)
    return lambda tokens, labels: model.apply({"params": params}, tokens, labels)


def sample(logits_fn, labels, key, settings, **kw):
    fn = jax.jit(lambda y, k: sampling.sample_tokens(logits_fn, y, k, seq_len=N, mask_token_id=K, null_label=C,
                                                     settings=settings, **kw))
    return fn(jnp.asarray(labels, jnp.int32), key)


def test_sampler_unmasks_on_schedule_and_is_seeded():
    settings = sampling.SamplingSettings(num_steps=6, guidance_scale=2.0, randomize_temperature=3.0,
                                         guidance_decay="linear", softmax_temperature_annealing=True)
    labels = np.arange(8) % (C + 1)
    fn = random_logits_fn()
    tokens, history = sample(fn, labels, jax.random.key(0), settings, return_history=True)
    assert history.shape == (6, 8, N) and tokens.dtype == jnp.int32
    masked_per_step = np.asarray((history == K).sum(-1))  # (steps, batch)
    expected = mask_schedule.masked_count_schedule(6, N)
    np.testing.assert_array_equal(masked_per_step, np.repeat(expected[:, None], 8, 1))
    assert expected[-1] == 0 and np.all((np.asarray(tokens) >= 0) & (np.asarray(tokens) < K))
    # Tokens fixed at one step are never changed afterwards.
    hist = np.asarray(history)
    for s in range(1, 6):
        fixed = hist[s - 1] != K
        np.testing.assert_array_equal(hist[s][fixed], hist[s - 1][fixed])
    again = sample(fn, labels, jax.random.key(0), settings)
    np.testing.assert_array_equal(tokens, again)
    other = sample(fn, labels, jax.random.key(1), settings)
    assert np.mean(np.asarray(other) != np.asarray(tokens)) > 0.2


def test_guidance_scale_zero_is_the_conditional_path():
    cond, uncond = jnp.arange(6.0).reshape(2, 3), jnp.full((2, 3), jnp.nan)
    for decay in sampling.GUIDANCE_DECAYS:
        np.testing.assert_array_equal(sampling.combine_guidance(cond, uncond, 0.0, decay), cond)
    np.testing.assert_allclose(sampling.combine_guidance(cond, cond - 1, 2.0, "linear"), cond + 2)
    np.testing.assert_allclose(sampling.combine_guidance(cond, cond - 1, 2.0, "power-cosine"), cond + 1)

    fn = random_logits_fn()

    def poisoned(tokens, labels):  # NaN logits for the null class: any use of them shows up
        logits = fn(tokens, labels)
        return jnp.where((labels == C)[:, None, None], jnp.nan, logits)

    labels = np.arange(6) % C
    key = jax.random.key(3)
    zero = sampling.SamplingSettings(guidance_scale=0.0, randomize_temperature=2.0)
    np.testing.assert_array_equal(sample(poisoned, labels, key, zero), sample(fn, labels, key, zero))
    # Guidance does use the unconditional pass. Synthetic logits: cond prefers token 0 over 1
    # (1.0 vs 0.9), uncond only token 0, so cond + g (cond - uncond) prefers token 1 when g > 1/9.
    def synthetic(tokens, labels):
        cond = jnp.zeros(K).at[0].set(1.0).at[1].set(0.9)
        uncond = jnp.zeros(K).at[0].set(1.0)
        logits = jnp.where((labels == C)[:, None], uncond, cond)
        return jnp.broadcast_to(logits[:, None], tokens.shape + (K,))

    greedy = {"randomize_temperature": 0.0, "num_steps": 4}
    tokens = sample(synthetic, labels, key, sampling.SamplingSettings(guidance_scale=0.0, **greedy))
    assert np.all(np.asarray(tokens) == 0)
    constant = sampling.SamplingSettings(guidance_scale=3.0, guidance_decay="constant", **greedy)
    assert np.all(np.asarray(sample(synthetic, labels, key, constant)) == 1)
    # Linear: step 0 has scale 0 (cond only), so the tokens fixed at step 0 are 0, the rest 1.
    linear = sampling.SamplingSettings(guidance_scale=3.0, guidance_decay="linear", **greedy)
    tokens, history = sample(synthetic, labels, key, linear, return_history=True)
    first = np.asarray(history[0]) != K
    assert np.all(np.asarray(tokens)[first] == 0) and np.all(np.asarray(tokens)[~first] == 1)


def test_make_sampler_with_a_model():
    model = tiny_uvit()
    params = init_params(model)
    sampler = sampling.make_sampler(model, sampling.SamplingSettings(num_steps=4))
    tokens = sampler(params, jnp.arange(4) % C, jax.random.key(0))
    assert tokens.shape == (4, N) and np.all((np.asarray(tokens) >= 0) & (np.asarray(tokens) < K))
    np.testing.assert_array_equal(tokens, sampler(params, jnp.arange(4) % C, jax.random.key(0)))


# ---------------------------------------------------------------------------------------------
# End to end: a tiny generator learns one token sequence per class.


def test_tiny_generator_overfits_and_greedy_sampling_reproduces():
    model = tiny_bert(hidden_size=64, num_heads=4, mlp_dim=128, depth=2)
    data = jnp.asarray(np.random.default_rng(0).integers(0, K, (C, N)), jnp.int32)  # one sequence per class
    params = init_params(model, seed=1)
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)

    def loss_fn(p, key):
        label_key, mask_key = jax.random.split(key)
        labels = jax.random.randint(label_key, (64,), 0, C)
        inputs, cond, mask = masked_tokens.prepare_inputs(mask_key, data[labels], labels, mask_token_id=K,
                                                          null_label=C)
        logits = model.apply({"params": p}, inputs, cond)
        return masked_tokens.masked_token_loss(logits, data[labels], mask)

    @jax.jit
    def train(params, opt_state, key):
        def step(carry, k):
            p, s = carry
            (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, k)
            updates, s = tx.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), jax.random.split(key, 300))
        return params, opt_state, losses

    params, opt_state, losses = train(params, opt_state, jax.random.key(0))
    losses = np.asarray(losses)
    assert losses[:10].mean() > 2.0 and losses[-20:].mean() < 0.1 * losses[:10].mean(), losses[::30]

    labels = jnp.arange(C)
    greedy = sampling.SamplingSettings(num_steps=4, guidance_scale=0.0, randomize_temperature=0.0)
    np.testing.assert_array_equal(sampling.make_sampler(model, greedy)(params, labels, jax.random.key(0)), data)
    guided = sampling.SamplingSettings.for_variant("L-32", randomize_temperature=0.0)
    np.testing.assert_array_equal(sampling.make_sampler(model, guided)(params, labels, jax.random.key(0)), data)
