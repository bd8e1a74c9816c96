"""VAR as a trainable generator on tokenized `shapes`: loss falls, samples have the requested
class colour above chance, the KV-cached sampler agrees with the teacher-forced forward, editing
keeps the known tokens, sharded equals single-device training in every parameter, fixed seeds give
fixed samples, cfg 0 equals guided sampling at zero weight."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from titok_var.data import pipeline, shapes
from titok_var.generation.var_sampling import sample_scales
from titok_var.tasks.var_vqvae import split_token_maps
from titok_var.tools import sample
from titok_var.training import data_feed, inference, trainer
from tests.helpers import run_train_steps
from tests.test_generator_quality import dominant_colour

@pytest.fixture(scope="module")
def setup(tiny_var_run):
    return tiny_var_run["config"], tiny_var_run["result"], tiny_var_run["workdir"]


def test_loss_falls_clearly(setup):
    _, result, _ = setup
    losses = np.array([result.losses[s] for s in sorted(result.losses)])
    first, last = losses[:20].mean(), losses[-20:].mean()
    assert last < 0.75 * first, (first, last)


def test_eval_reports_per_scale_loss_and_accuracy(setup):
    config, result, workdir = setup
    metrics = inference.evaluate(config, workdir)
    for pn in (1, 2, 4):
        assert 0 <= metrics[f"accuracy_scale_{pn}x{pn}"] <= 1 and metrics[f"loss_scale_{pn}x{pn}"] > 0
    assert metrics["last_scale_loss"] == metrics["loss_scale_4x4"] and metrics["num_examples"] == 16


def test_samples_have_the_requested_colour_more_often_than_chance(setup):
    config, _, workdir = setup
    out_dir = sample.sample_checkpoint(config, workdir)
    samples = np.load(f"{out_dir}/samples_p000.npz")
    assert samples["arr_0"].shape == (64, 16, 16, 3) and samples["arr_0"].dtype == np.uint8
    predicted = np.array([dominant_colour(image) for image in samples["arr_0"]])
    accuracy = float(np.mean(predicted == samples["labels"] % len(shapes.COLOUR_NAMES)))
    assert accuracy >= 0.4, accuracy  # chance 0.25


def _restore(config, workdir):
    exp = trainer.build_experiment(config, workdir)
    checkpointer = trainer.open_checkpointer(config, workdir)
    with exp.context():
        state = trainer.restore_or_create(exp, checkpointer)
    checkpointer.close()
    return exp.task, state.params


def test_greedy_kv_cached_sampling_agrees_with_the_teacher_forced_forward(setup):
    config, _, workdir = setup
    task, params = _restore(config, workdir)
    task.settings = dataclasses.replace(task.settings, cfg=0.0, top_k=1, top_p=0.0)
    labels = jnp.arange(8, dtype=jnp.int32) % 16
    tokens = jax.jit(task.sample_tokens)(params, labels, jax.random.key(0))
    # Each scale was the argmax given the earlier scales: the full block-causal forward on the same
    # tokens must pick the same ids at every position.
    logits = task.model.apply({"params": params}, labels, task.teacher_input(tokens))
    np.testing.assert_array_equal(np.argmax(np.asarray(logits), -1), np.asarray(tokens))


def test_fixed_seed_gives_fixed_samples_and_another_seed_other_samples(setup):
    config, _, workdir = setup
    task, params = _restore(config, workdir)
    labels = jnp.array([0, 5, 9, 15], jnp.int32)
    run = jax.jit(task.sample_tokens)
    a, b = run(params, labels, jax.random.key(3)), run(params, labels, jax.random.key(3))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, run(params, labels, jax.random.key(4)))


def test_cfg_zero_skips_the_null_half_and_equals_guided_sampling_at_zero_weight(setup):
    # cfg 0 runs a batch of B (no null-class rows); cfg 1e-30 runs the guided 2B batch, whose
    # weights t = cfg * si / (n - 1) leave (1 + t) cond - t uncond equal to cond in float32. The
    # same keys then draw the same tokens, with top-k/top-p and temperature-free categorical draws.
    config, _, workdir = setup
    task, params = _restore(config, workdir)
    labels = jnp.array([0, 5, 9, 15, 3, 7], jnp.int32)

    def tokens_with(cfg):
        settings = dataclasses.replace(task.settings, cfg=cfg, top_k=5, top_p=0.9)
        return np.asarray(jax.jit(lambda p, k: sample_scales(task.model, p, task.quantizer_ops(), labels, k,
                                                             settings)[0])(params, jax.random.key(11)))

    unguided = tokens_with(0.0)
    np.testing.assert_array_equal(unguided, tokens_with(1e-30))
    assert not np.array_equal(unguided, tokens_with(4.0))  # guidance does act on these samples


def test_inpainting_keeps_known_tokens_and_matches_their_fhat(setup):
    config, _, workdir = setup
    task, params = _restore(config, workdir)
    known = np.asarray(pipeline_tokens(config, 2))
    maps = split_token_maps(known, (1, 2, 4))
    keep = [np.ones((1, 1), bool), np.array([[1, 0], [1, 1]], bool), np.zeros((4, 4), bool)]
    keep[2][:2] = True
    tokens, f_hat = jax.jit(lambda p, k: sample_scales(
        task.model, p, task.quantizer_ops(), jnp.array([1, 2]), k, task.settings,
        known_tokens=maps, keep_masks=keep))(params, jax.random.key(0))
    out = split_token_maps(np.asarray(tokens), (1, 2, 4))
    for si in range(3):
        np.testing.assert_array_equal(out[si][:, keep[si]], maps[si][:, keep[si]])
    # With everything kept, sampling reproduces the image's own f_hat exactly (teacher path).
    all_keep = [np.ones((p, p), bool) for p in (1, 2, 4)]
    tokens, f_hat = sample_scales(task.model, params, task.quantizer_ops(), jnp.array([1, 2]),
                                  jax.random.key(0), task.settings, known_tokens=maps, keep_masks=all_keep)
    np.testing.assert_array_equal(np.asarray(tokens), known)
    vq_task, vq_params, _ = task._vqvae  # host arrays
    expected = vq_task.model.apply({"params": vq_params}, maps, method=type(vq_task.model).indices_to_fhat)
    np.testing.assert_allclose(np.asarray(f_hat), np.asarray(expected), atol=1e-5)


def pipeline_tokens(config, count):
    batches = data_feed.train_iterator(config, trainer.build_experiment(config, "/tmp/unused").mesh, 0,
                                       pipeline.PipelineStats())
    return jax.device_get(next(batches)["tokens"])[:count]


def test_sharded_training_equals_single_device_over_three_steps_in_every_parameter(setup):
    config, _, _ = setup
    config = config.copy_and_resolve_references()

    def three_steps(devices):
        state, metrics = run_train_steps(config, devices, 3)
        return jax.device_get(state.params), [(m["loss"], m["grad_norm"]) for m in metrics]

    sharded_params, sharded_losses = three_steps(jax.devices()[:8])
    single_params, single_losses = three_steps(jax.devices()[:1])
    np.testing.assert_allclose(sharded_losses, single_losses, rtol=2e-5)
    leaves = jax.tree_util.tree_leaves_with_path(single_params)
    assert len(leaves) == len(jax.tree.leaves(sharded_params))
    for (path, single), sharded in zip(leaves, jax.tree.leaves(sharded_params)):
        np.testing.assert_allclose(sharded, single, atol=5e-6, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


def test_tokens_of_another_tokenizer_are_rejected(setup):
    config, _, workdir = setup
    task, params = _restore(config, workdir)
    with pytest.raises(ValueError, match="another tokenizer"):
        task.loss_fn(params, {"tokens": jnp.zeros((2, 20), jnp.int32), "label": jnp.zeros((2,), jnp.int32)},
                     jax.random.key(0), 0)


def test_tokenizing_in_the_step_equals_training_on_pre_tokenized_shards(tiny_var_run, tmp_path):
    # The same centre crops, tokenized by pre-tokenization or by the frozen VQVAE inside the step,
    # give the same batches (same index order, same token ids), hence the same losses.
    from titok_var import registry
    from titok_var.tasks.var import VarOnlineTokensTask

    shards = tiny_var_run["config"].copy_and_resolve_references()
    shards.train.update(num_steps=3, checkpoint_every_steps=3)
    online = shards.copy_and_resolve_references()
    online.data = tiny_var_run["vq_config"].data.copy_and_resolve_references()
    online.data.update(random_crop=False, random_flip=False)
    assert isinstance(registry.get_task(online), VarOnlineTokensTask)
    from_shards = trainer.train(shards, str(tmp_path / "shards"))
    in_step = trainer.train(online, str(tmp_path / "online"))
    assert sorted(in_step.losses) == sorted(from_shards.losses) == [1, 2, 3]
    for step in (1, 2, 3):
        np.testing.assert_allclose(in_step.losses[step], from_shards.losses[step], rtol=1e-5)
    # Eval batches are images too: the same per-scale metrics as on the eval shards.
    np.testing.assert_allclose(inference.evaluate(online, str(tmp_path / "online"))["loss"],
                               inference.evaluate(shards, str(tmp_path / "shards"))["loss"], rtol=1e-5)


def _greedy_reference(task, params, labels, cfg_at_scale):
    """Step-by-step greedy sampling with the full block-causal forward (no KV cache): at scale si the
    guided logits are (1 + t) cond - t uncond with t = cfg_at_scale(si), and the argmax is taken."""
    from titok_var.models.var import scale_spans

    batch = labels.shape[0]
    tokens = np.zeros((batch, task.model.num_tokens), np.int32)
    null = np.full_like(labels, task.num_classes)
    forward = jax.jit(lambda lab, tok: task.model.apply({"params": params}, lab, task.teacher_input(tok)))
    for si, (begin, end) in enumerate(scale_spans(task.patch_nums)):
        cond, uncond = np.asarray(forward(labels, tokens)), np.asarray(forward(null, tokens))
        t = cfg_at_scale(si)
        tokens[:, begin:end] = np.argmax(((1 + t) * cond - t * uncond)[:, begin:end], axis=-1)
    return tokens


def test_guided_greedy_sampling_ramps_guidance_over_the_scales(setup):
    # Official autoregressive_infer_cfg: t = cfg * si / (num_scales - 1), logits (1 + t) cond - t uncond.
    config, _, workdir = setup
    task, params = _restore(config, workdir)
    cfg = 4.0
    task.settings = dataclasses.replace(task.settings, cfg=cfg, top_k=1, top_p=0.0, more_smooth=False)
    labels = np.arange(16, dtype=np.int32)
    sampled = np.asarray(jax.jit(task.sample_tokens)(params, jnp.asarray(labels), jax.random.key(0)))
    last = len(task.patch_nums) - 1
    ramp = _greedy_reference(task, params, labels, lambda si: cfg * si / last)
    np.testing.assert_array_equal(sampled, ramp)
    # Guidance held at cfg on every scale picks other tokens, so the check above can tell them apart.
    constant = _greedy_reference(task, params, labels, lambda si: cfg)
    assert not np.array_equal(constant, ramp)
