"""TiTok two-stage recipe: stage-1 proxy-code loss falls with a random frozen VQGAN; stage 2 starts
from the stage-1 export with the encoder, latent tokens and quantizer bit-identical, the
discriminator switching on at its step; missing helper weights fail at start by name."""

import jax
import numpy as np
import pytest

from configs import titok_l32
from titok_var import registry
from titok_var.tools import export
from titok_var.training import trainer


def stage_config(stage, **train_overrides):
    config = titok_l32.get_config(f"{stage},runlocal")
    config.model.update(num_latent_tokens=8)
    config.data.update(shapes_num_train=256, shapes_num_eval=16)
    config.train.update(global_batch_size=16, log_every_steps=1, eval_every_steps=0, async_checkpointing=False)
    config.train.update(train_overrides)
    config.eval.update(global_batch_size=16, num_examples=16, grid_images=4)
    config.optimizer.update(learning_rate=1e-3, warmup_steps=2)
    return config


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage1")
    config = stage_config("stage1", num_steps=40, checkpoint_every_steps=40, eval_every_steps=40)
    result = trainer.train(config, str(root / "work"))
    return config, result, export.export_checkpoint(config, str(root / "work"), str(root / "export"))


def test_stage1_proxy_code_loss_falls(stage1):
    _, result, _ = stage1
    losses = np.array([result.losses[s] for s in sorted(result.losses)])
    # Measured: 4.18 (about ln 64, chance over the 64 proxy codes) -> 3.69 in 40 steps.
    assert losses[-5:].mean() < losses[:5].mean() - 0.3, (losses[:5], losses[-5:])
    metrics = result.eval_metrics
    assert 0 <= metrics["proxy_code_accuracy"] <= 1 and np.isfinite(metrics["psnr"])
    assert np.isfinite(metrics["vqgan_psnr"])


def test_stage2_starts_from_stage1_and_keeps_the_encoder_frozen(stage1, tmp_path):
    _, _, stage1_export = stage1
    config = stage_config("stage2", num_steps=7, checkpoint_every_steps=7)
    config.init.stage1_export = stage1_export
    seen = {}
    result = trainer.train(config, str(tmp_path / "stage2"),
                           step_callback=lambda step, state: seen.__setitem__(
                               step, jax.device_get(state.task_state["discriminator"]["params"])))
    _, stage1_params, _ = export.load_exported_to_host(stage1_export)
    final = jax.device_get(result.state.params)
    for frozen in ("encoder", "latent_tokens", "quantize"):
        for a, b in zip(jax.tree.leaves(final[frozen]), jax.tree.leaves(stage1_params[frozen])):
            np.testing.assert_array_equal(a, b)
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(final["decoder"]),
                                                          jax.tree.leaves(stage1_params["decoder"]))]
    assert any(changed)
    flat = {s: np.concatenate([np.ravel(x) for x in jax.tree.leaves(v)]) for s, v in seen.items()}
    # discriminator_start=5: counters 0..4 (steps 1..5) leave it alone; counter 5 (step 6) is its first
    # step, at the official warm-up's rate 0; counter 6 (step 7) moves it.
    np.testing.assert_array_equal(flat[1], flat[5])
    np.testing.assert_array_equal(flat[5], flat[6])
    assert not np.array_equal(flat[6], flat[7])
    assert all(np.isfinite(v) for v in result.losses.values())


def test_missing_helper_weights_fail_at_start_by_name():
    # initial_overrides runs right after the sharded init, before the first step.
    config = stage_config("stage1", num_steps=1)
    config.proxy.random_init = False
    with pytest.raises(FileNotFoundError, match="maskgit-vqgan-imagenet-f16-256"):
        registry.get_task(config).initial_overrides()
    config = stage_config("stage2", num_steps=1)
    config.init.random_init = False
    with pytest.raises(FileNotFoundError, match="stage1_export"):
        registry.get_task(config).initial_overrides()
    config = stage_config("stage1")
    config.model.decoder_head = "pixels"
    with pytest.raises(ValueError, match="proxy_codes"):
        registry.get_task(config)


def test_stage2_loads_converted_perceptual_weights_into_the_task_state_at_start(tmp_path):
    from titok_var.losses.perceptual import make_perceptual_loss
    from titok_var.tools.convert_perceptual import converted_path
    from titok_var.tools.convert_var import save_params
    from titok_var.training import state_init

    _, params = make_perceptual_loss("lpips", random_init=True, rng=jax.random.key(3))
    save_params(jax.device_get(params["lpips"]), converted_path("lpips", str(tmp_path)))
    config = stage_config("stage2", num_steps=1)
    config.loss.update(perceptual_random_init=False, perceptual_weights=str(tmp_path))
    exp = trainer.build_experiment(config, str(tmp_path / "work"))
    with exp.context():
        state = state_init.create_train_state(exp.task, exp.tx, config, exp.mesh, exp.rules, exp.layout)
    loaded = jax.device_get(state.task_state["perceptual"]["lpips"])
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(jax.device_get(params["lpips"]))):
        np.testing.assert_array_equal(a, b)
    config.loss.perceptual_weights = str(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="(?s)lpips_vgg16.npz.*convert_perceptual --arch lpips"):
        registry.get_task(config).initial_overrides()
