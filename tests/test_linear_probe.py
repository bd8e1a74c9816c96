"""Linear probe (MAE protocol): accuracy on separable / noise data, exact evaluation counts, BN
running statistics, MAE's lr schedule and LARS update against NumPy, determinism, feature extraction.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from titok_var.evaluation.linear_probe import (
    LinearProbe,
    ProbeConfig,
    epoch_batch_indices,
    evaluate_linear_probe,
    extract_features,
    probe_learning_rate,
    probe_optimizer,
    scaled_probe_config,
    titok_encoder_latents,
    titok_feature_fn,
    tokenizer_probe_features,
    train_linear_probe,
)
from titok_var.models.titok import TiTok
from titok_var.quantizers.vector_quantizer import l2_normalize, nearest_code

NUM_CLASSES, DIM = 8, 16
# LARS moves the weights by ~trust_coefficient * lr of their norm per step: 2k examples give 140
# steps where ImageNet gives 7000, so the small runs need a larger base lr (0.1 reaches 0.13 top-1).
SMALL = scaled_probe_config(ProbeConfig(), batch_size=256, epochs=18, base_lr=10.0, eval_batch_size=500)


def gaussian_classes(num_examples, seed, means_seed=0):
    """Features of 8 well separated Gaussian classes, offset and scaled per dimension (work for BN)."""
    means_rng = np.random.default_rng(means_seed)
    means = 3.0 * means_rng.normal(size=(NUM_CLASSES, DIM))
    offset = means_rng.normal(size=DIM) * 5.0
    scale = np.exp(means_rng.uniform(-1.0, 1.0, size=DIM))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, num_examples).astype(np.int32)
    features = (means[labels] + rng.normal(size=(num_examples, DIM))) * scale + offset
    return features.astype(np.float32), labels


def np_probe_logits(variables, features):
    """MAE head in float64: BatchNorm1d(affine=False, eps=1e-6) in eval mode, then Linear."""
    stats, params = variables["batch_stats"]["norm"], variables["params"]["head"]
    mean, var = np.asarray(stats["mean"], np.float64), np.asarray(stats["var"], np.float64)
    normed = (np.asarray(features, np.float64) - mean) / np.sqrt(var + 1e-6)
    return normed @ np.asarray(params["kernel"], np.float64) + np.asarray(params["bias"], np.float64)


def test_probe_separates_gaussian_classes_on_held_out_data():
    train_x, train_y = gaussian_classes(2000, seed=1)
    test_x, test_y = gaussian_classes(1000, seed=2)
    logged = []
    variables, history = train_linear_probe(train_x, train_y, NUM_CLASSES, SMALL, eval_features=test_x,
                                            eval_labels=test_y, log_fn=lambda epoch, entry: logged.append(epoch))
    metrics = evaluate_linear_probe(variables, test_x, test_y, 128)
    assert metrics["top1"] >= 0.95, metrics  # chance is 1/8
    assert metrics["top5"] >= metrics["top1"]
    assert history[-1]["eval_top1"] == metrics["top1"]
    assert logged == list(range(1, SMALL.epochs + 1))
    assert history[-1]["step"] == SMALL.epochs * (2000 // 256)
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_probe_on_noise_labels_stays_near_chance():
    train_x, _ = gaussian_classes(2000, seed=1)
    test_x, _ = gaussian_classes(1000, seed=2)
    rng = np.random.default_rng(3)
    noise_train = rng.integers(0, NUM_CLASSES, 2000).astype(np.int32)
    noise_test = rng.integers(0, NUM_CLASSES, 1000).astype(np.int32)
    variables, _ = train_linear_probe(train_x, noise_train, NUM_CLASSES, SMALL)
    top1 = evaluate_linear_probe(variables, test_x, noise_test, 256)["top1"]
    # Binomial(1000, 1/8) has std 0.0105; structure-free labels cannot be predicted.
    assert abs(top1 - 1 / NUM_CLASSES) < 0.05, top1


def random_probe_variables(num_classes, dim, seed):
    rng = np.random.default_rng(seed)
    return {
        "params": {"head": {"kernel": rng.normal(size=(dim, num_classes)).astype(np.float32),
                            "bias": rng.normal(size=num_classes).astype(np.float32)}},
        "batch_stats": {"norm": {"mean": rng.normal(size=dim).astype(np.float32),
                                 "var": rng.uniform(0.5, 2.0, size=dim).astype(np.float32)}},
    }


@pytest.mark.parametrize("batch_size", [1, 16, 103, 256])
def test_evaluation_counts_every_example_once_whatever_the_batch(batch_size):
    num_classes, num_examples = 12, 103
    variables = random_probe_variables(num_classes, DIM, seed=0)
    rng = np.random.default_rng(1)
    features = rng.normal(size=(num_examples, DIM)).astype(np.float32)
    labels = rng.integers(0, num_classes, num_examples).astype(np.int32)
    metrics = evaluate_linear_probe(variables, features, labels, batch_size)

    logits = np_probe_logits(variables, features)
    ranks = np.argsort(-logits, axis=1)
    expected_top1 = np.sum(ranks[:, 0] == labels)
    expected_top5 = np.sum(np.any(ranks[:, :5] == labels[:, None], axis=1))
    assert 0 < expected_top1 < expected_top5 < num_examples  # a meaningful comparison
    assert metrics["num_examples"] == num_examples
    assert metrics["top1"] == expected_top1 / num_examples
    assert metrics["top5"] == expected_top5 / num_examples


def test_probe_module_is_mae_batchnorm_then_linear():
    variables = random_probe_variables(5, DIM, seed=4)
    features = np.random.default_rng(5).normal(size=(7, DIM)).astype(np.float32)
    logits = LinearProbe(5).apply(variables, features)
    np.testing.assert_allclose(logits, np_probe_logits(variables, features), rtol=1e-5, atol=1e-5)

    init = LinearProbe(1000).init(jax.random.key(0), jnp.zeros((1, 256)))
    assert set(init["batch_stats"]["norm"]) == {"mean", "var"} and "norm" not in init["params"]  # no affine
    kernel = np.asarray(init["params"]["head"]["kernel"])
    assert abs(kernel.std() - 0.01) < 0.0005  # MAE trunc_normal(std=0.01), bounds +-2 never bind
    assert np.all(np.asarray(init["params"]["head"]["bias"]) == 0)


def test_batchnorm_running_statistics_follow_torch_momentum_and_converge():
    train_x, train_y = gaussian_classes(2000, seed=1)
    config = scaled_probe_config(ProbeConfig(), batch_size=200, epochs=6)
    variables, _ = train_linear_probe(train_x, train_y, NUM_CLASSES, config)

    # Replay the EMA (torch momentum 0.1, biased batch variance in flax) over the same batches.
    shuffle_key = jax.random.split(jax.random.key(config.seed))[1]
    mean, var = np.zeros(DIM), np.ones(DIM)
    for epoch in range(config.epochs):
        for rows in epoch_batch_indices(shuffle_key, epoch, 2000, config.batch_size):
            batch = train_x[rows].astype(np.float64)
            mean = 0.9 * mean + 0.1 * batch.mean(axis=0)
            var = 0.9 * var + 0.1 * batch.var(axis=0)
    stats = variables["batch_stats"]["norm"]
    np.testing.assert_allclose(stats["mean"], mean, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stats["var"], var, rtol=1e-4)
    # ... and they have converged to the statistics of the features.
    np.testing.assert_allclose(stats["mean"], train_x.mean(axis=0), atol=0.1 * train_x.std(axis=0).max())
    np.testing.assert_allclose(stats["var"], train_x.var(axis=0), rtol=0.15)


def test_learning_rate_warms_up_linearly_then_decays_by_half_cosine():
    config = ProbeConfig(base_lr=0.1, batch_size=512, epochs=10, warmup_epochs=2, min_lr=0.01)
    schedule = probe_learning_rate(config, steps_per_epoch=10)
    peak = 0.1 * 512 / 256
    assert config.learning_rate == pytest.approx(peak)
    expected = {
        0: 0.0,
        5: peak * 0.25,  # a quarter of the warmup (fractional epoch 0.5 of 2)
        10: peak * 0.5,
        20: peak,  # warmup ends
        50: 0.01 + (peak - 0.01) * 0.5 * (1 + math.cos(math.pi * 3 / 8)),
        60: 0.01 + (peak - 0.01) * 0.5,  # half-way through the cosine
        100: 0.01,
    }
    for step, value in expected.items():
        assert float(schedule(step)) == pytest.approx(value, rel=1e-5, abs=1e-7), step
    values = np.asarray([float(schedule(s)) for s in range(101)])
    assert np.all(np.diff(values[:21]) > 0) and np.all(np.diff(values[20:]) < 0)


def test_scaled_config_keeps_base_lr_and_warmup_fraction():
    small = scaled_probe_config(ProbeConfig(), batch_size=256, epochs=9)
    assert (small.base_lr, small.batch_size, small.epochs) == (0.1, 256, 9)
    assert small.warmup_epochs == pytest.approx(1.0)  # 10 of 90 epochs
    assert small.learning_rate == pytest.approx(0.1)
    assert ProbeConfig.from_config({"epochs": 3, "warmup_epochs": 1}).epochs == 3
    with pytest.raises(KeyError, match="lr_typo"):
        ProbeConfig.from_config({"lr_typo": 1.0})
    with pytest.raises(ValueError, match="warmup_epochs"):
        ProbeConfig(epochs=5, warmup_epochs=6)


def np_mae_lars(params, grads_per_step, lrs, weight_decay, momentum=0.9, trust=0.001):
    """MAE util/lars.py: on ndim > 1, g += wd * p and g *= trust * |p| / |g|; mu = m mu + g; p -= lr mu."""
    params = {k: v.astype(np.float64) for k, v in params.items()}
    mu = {k: np.zeros_like(v) for k, v in params.items()}
    for grads, lr in zip(grads_per_step, lrs):
        for name, p in params.items():
            g = grads[name].astype(np.float64)
            if p.ndim > 1:
                g = g + weight_decay * p
                p_norm, g_norm = np.linalg.norm(p), np.linalg.norm(g)
                if p_norm > 0 and g_norm > 0:
                    g = g * (trust * p_norm / g_norm)
            mu[name] = momentum * mu[name] + g
            params[name] = p - lr * mu[name]
    return params


def test_lars_update_matches_mae_with_a_changing_learning_rate():
    rng = np.random.default_rng(0)
    params = {"kernel": rng.normal(size=(6, 4)).astype(np.float32), "bias": rng.normal(size=4).astype(np.float32)}
    grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()} for _ in range(4)]
    lrs = [0.0, 0.7, 0.3, 1.1]
    config = ProbeConfig(weight_decay=0.05)
    tx = probe_optimizer(config, lambda count: jnp.asarray(lrs)[count])
    state = tx.init(params)
    current = params
    for step_grads in grads:
        updates, state = tx.update(step_grads, state, current)
        current = jax.tree.map(lambda p, u: p + u, current, updates)
    expected = np_mae_lars(params, grads, lrs, weight_decay=0.05)
    for name in params:
        np.testing.assert_allclose(current[name], expected[name], rtol=1e-5, atol=1e-6)


def test_same_seed_gives_identical_probes_and_another_seed_does_not():
    train_x, train_y = gaussian_classes(600, seed=1)
    config = scaled_probe_config(ProbeConfig(), batch_size=128, epochs=3)
    first, history_a = train_linear_probe(train_x, train_y, NUM_CLASSES, config)
    second, history_b = train_linear_probe(train_x, train_y, NUM_CLASSES, config)
    other, _ = train_linear_probe(train_x, train_y, NUM_CLASSES, scaled_probe_config(config, seed=1))
    assert history_a == history_b
    jax.tree.map(np.testing.assert_array_equal, first, second)
    assert not np.array_equal(first["params"]["head"]["kernel"], other["params"]["head"]["kernel"])


def test_epoch_batches_are_fresh_permutations_without_repeats():
    key = jax.random.key(0)
    first = epoch_batch_indices(key, 0, 103, 10)
    second = epoch_batch_indices(key, 1, 103, 10)
    assert first.shape == (10, 10)
    assert len(np.unique(first)) == 100 and np.all(np.diff(first, axis=1) > 0)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(first, epoch_batch_indices(key, 0, 103, 10))


def test_bad_training_inputs_are_clear_errors():
    features, labels = gaussian_classes(100, seed=0)
    with pytest.raises(ValueError, match="fewer than one batch"):
        train_linear_probe(features, labels, NUM_CLASSES, ProbeConfig(batch_size=256))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        train_linear_probe(features, labels, 4, ProbeConfig(batch_size=32))
    with pytest.raises(ValueError, match="99 labels"):
        train_linear_probe(features, labels[:99], NUM_CLASSES, ProbeConfig(batch_size=32))
    with pytest.raises(ValueError, match=r"\(N, F\)"):
        evaluate_linear_probe(random_probe_variables(NUM_CLASSES, DIM, 0), features[None], labels, 8)


def padded_batches(images, labels, batch_size, mask_field):
    """The eval pipeline's layout: fixed-size batches, the last one zero-padded with mask False."""
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        pad = batch_size - len(chunk)
        yield {"image": np.pad(chunk, ((0, pad), (0, 0), (0, 0), (0, 0))),
               "label": np.pad(labels[start:start + batch_size], (0, pad)),
               mask_field: np.arange(batch_size) < len(chunk)}


@pytest.mark.parametrize("mask_field", ["mask", "valid"])
def test_extract_features_drops_padded_rows(mask_field):
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(11, 4, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 10, 11).astype(np.int32)

    def feature_fn(x):
        return jnp.mean(x, axis=(1, 2)) * 2.0

    features, got_labels = extract_features(feature_fn, padded_batches(images, labels, 4, mask_field))
    np.testing.assert_allclose(features, images.mean(axis=(1, 2)) * 2.0, rtol=1e-6)
    np.testing.assert_array_equal(got_labels, labels)

    out = np.zeros((20, 3), np.float32)
    into_out, _ = extract_features(feature_fn, padded_batches(images, labels, 4, mask_field), out=out)
    assert into_out.shape == (11, 3) and np.shares_memory(into_out, out)
    np.testing.assert_array_equal(into_out, features)
    with pytest.raises(KeyError, match="label"):
        extract_features(feature_fn, [{"image": images}])


def test_tokenizer_features_flatten_or_average_the_tokens():
    latents = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
    np.testing.assert_array_equal(tokenizer_probe_features(latents), latents.reshape(3, 20))
    np.testing.assert_allclose(tokenizer_probe_features(latents, "mean"), latents.mean(axis=1), rtol=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        tokenizer_probe_features(latents, "max")
    with pytest.raises(ValueError, match=r"\(batch, tokens, channels\)"):
        tokenizer_probe_features(latents[0])


def random_variables(module, *args, seed=0):
    """Random float32 variables with the module's structure; compiling `init` takes ~30 s on CPU."""
    abstract = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), *args))
    rng = np.random.default_rng(seed)

    def value(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return rng.normal(size=leaf.shape) / math.sqrt(np.prod(leaf.shape[:-1]))
        if name == "scale":
            return 1.0 + 0.1 * rng.normal(size=leaf.shape)
        return 0.1 * rng.normal(size=leaf.shape) if name == "bias" else rng.normal(size=leaf.shape)

    return jax.tree_util.tree_map_with_path(lambda path, leaf: value(path, leaf).astype(np.float32), abstract)


def test_titok_latents_are_what_the_quantizer_receives():
    model = TiTok(image_size=16, patch_size=4, num_latent_tokens=8, encoder_size="tiny", decoder_size="tiny",
                  codebook_size=32, token_size=6, symmetric_pixels=True)
    images = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
    variables = random_variables(model, images)
    run = jax.jit(lambda variables, images: (  # one compilation: eager applies take ~10 s here
        model.apply(variables, images, method=titok_encoder_latents),
        model.apply(variables, images, method=TiTok.encode)[1]["indices"],
        titok_feature_fn(model, variables)(images),
    ))
    latents, indices, features = run(variables, images)
    codebook = l2_normalize(variables["params"]["quantize"]["codebook"])
    assert latents.shape == (2, 8, 6)
    np.testing.assert_array_equal(nearest_code(l2_normalize(latents), codebook), indices)
    np.testing.assert_array_equal(features, np.asarray(latents).reshape(2, 48))
    with pytest.raises(ValueError, match="16, 16, 3"):
        model.apply(variables, images[:, :8], method=titok_encoder_latents)
