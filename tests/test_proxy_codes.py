"""TiTok stage 1 with pre-computed proxy codes: the stored codes are the VQGAN's codes of the
centre crop and its mirror; training on them gives the same losses as computing them every step;
bad code folders fail at start by name. Also the 512 px recipe's 2 x 2 codes per patch."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import titok_l32, titok_l64_512
from titok_var import registry
from titok_var.data import builder, proxy_code_table, transforms
from titok_var.data.pipeline import PipelineStats
from titok_var.data.sources import DatasetNotFoundError
from titok_var.models.maskgit_vqgan import MaskGitVQGAN
from titok_var.tools import precompute_proxy_codes
from titok_var.tools.convert_var import save_params
from titok_var.training import data_feed, state_init, trainer


def stage1_config(tmp_path, **proxy):
    config = titok_l32.get_config("stage1,runlocal")
    config.model.update(num_latent_tokens=8)
    config.data.update(shapes_num_train=40, shapes_num_eval=8, random_crop=False)
    config.train.update(num_steps=4, global_batch_size=8, log_every_steps=1, eval_every_steps=0,
                        checkpoint_every_steps=4, async_checkpointing=False)
    config.eval.update(global_batch_size=8, num_examples=8, grid_images=2)
    config.proxy.update({"random_init": False, "precompute_batch_size": 8, "precompute_shard_size": 16, **proxy})
    return config


@pytest.fixture(scope="module")
def vqgan_weights(tmp_path_factory):
    """A random tiny VQGAN saved as a weights file, so every run below uses the same one."""
    config = titok_l32.get_config("stage1,runlocal")
    task = registry.get_task(config)
    params = nn.unbox(task.init_task_state(jax.random.key(7))["vqgan"])
    path = str(tmp_path_factory.mktemp("vqgan") / "tiny_vqgan.npz")
    save_params(jax.device_get(params), path)
    return path, task.vqgan, params


@pytest.fixture(scope="module")
def codes_dir(vqgan_weights, tmp_path_factory):
    directory = tmp_path_factory.mktemp("proxy_codes")
    config = stage1_config(directory, vqgan_weights=vqgan_weights[0], precomputed_dir=str(directory))
    paths = precompute_proxy_codes.precompute_proxy_codes(config, num_workers=2)
    assert [p.name for p in paths] == [f"train-p000-s{i:05d}.npz" for i in range(3)]
    return str(directory)


def test_stored_codes_are_the_vqgans_codes_of_centre_crops_and_mirrors(vqgan_weights, codes_dir, tmp_path):
    _, vqgan, params = vqgan_weights
    config = stage1_config(tmp_path, vqgan_weights=vqgan_weights[0], precomputed_dir=codes_dir)
    source = builder.build_source(config.data, "train")
    table = proxy_code_table.ProxyCodeTable(
        codes_dir, "train", num_examples=len(source), grid=16, codebook_size=64,
        expected_description=proxy_code_table.expected_description(config), need_flipped=True)
    picked = np.array([0, 17, 39])
    images = np.stack([transforms.eval_transform(source.load(int(i))[0], 32) for i in picked])
    for flipped, view in ((False, images), (True, images[:, :, ::-1])):
        direct = vqgan.apply({"params": params}, jnp.asarray(np.ascontiguousarray(view)), method=MaskGitVQGAN.encode)
        np.testing.assert_array_equal(table.lookup(picked, np.full(3, flipped)), np.asarray(direct))


def train_losses(config, workdir, num_steps):
    """The train loop's own pieces (state init, jitted step, data feed), without its final eval."""
    exp = trainer.build_experiment(config, workdir)
    losses = []
    with exp.context():
        state = state_init.create_train_state(exp.task, exp.tx, config, exp.mesh, exp.rules, exp.layout)
        train_step = trainer.jit_train_step(exp)
        batches = data_feed.train_iterator(config, exp.mesh, 0, PipelineStats())
        for _ in range(num_steps):
            state, metrics = train_step(state, next(batches))
            losses.append(float(metrics["loss"]))
    return np.array(losses)


def test_training_on_precomputed_codes_equals_codes_on_the_fly(vqgan_weights, codes_dir, tmp_path):
    on_the_fly = stage1_config(tmp_path, vqgan_weights=vqgan_weights[0])
    precomputed = stage1_config(tmp_path, vqgan_weights=vqgan_weights[0], precomputed_dir=codes_dir)
    # Random flips are on, so both views of the table are read.
    batch = next(data_feed.host_train_batches(precomputed, 0, PipelineStats()))
    assert batch["proxy_codes"].shape == (8, 16, 16) and "source_index" not in batch
    first = train_losses(on_the_fly, str(tmp_path / "fly"), 3)
    second = train_losses(precomputed, str(tmp_path / "pre"), 3)
    np.testing.assert_allclose(second, first, rtol=1e-6)
    assert first[-1] < first[0]


def test_bad_code_folders_fail_at_start_by_name(vqgan_weights, codes_dir, tmp_path):
    def feed(config):
        return data_feed.host_train_batches(config, 0, PipelineStats())

    weights = vqgan_weights[0]
    with pytest.raises(DatasetNotFoundError, match="precompute_proxy_codes"):
        feed(stage1_config(tmp_path, vqgan_weights=weights, precomputed_dir=str(tmp_path / "none")))
    config = stage1_config(tmp_path, vqgan_weights=weights, precomputed_dir=codes_dir)
    config.data.random_crop = True
    with pytest.raises(ValueError, match="data.random_crop=False"):
        feed(config)
    with pytest.raises(ValueError, match="vqgan_weights='tiny_vqgan.npz'"):
        feed(stage1_config(tmp_path, vqgan_weights="/elsewhere/other.npz", precomputed_dir=codes_dir))
    config = stage1_config(tmp_path, vqgan_weights=weights, precomputed_dir=codes_dir)
    config.data.shapes_num_train = 41  # one image more than the codes cover
    with pytest.raises(ValueError, match="1 of 41 images have no pre-computed proxy codes .*image 40"):
        feed(config)
    config = stage1_config(tmp_path, vqgan_weights=weights, precomputed_dir=codes_dir)
    config.data.shapes_num_train = 30
    with pytest.raises(ValueError, match="refers to image 31 but the dataset has 30"):
        feed(config)
    config = stage1_config(tmp_path, vqgan_weights=weights, precomputed_dir=codes_dir, random_init=True)
    with pytest.raises(ValueError, match="proxy.vqgan_weights"):
        precompute_proxy_codes.precompute_proxy_codes(config)


def test_512_recipe_predicts_two_by_two_codes_per_patch():
    config = titok_l64_512.get_config("stage1,runlocal")
    task = registry.get_task(config)  # checks TiTok's 16 x 16 code grid against the VQGAN's
    assert (config.model.patch_size, config.model.proxy_codes_per_side) == (4, 2)
    images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
    params = nn.unbox(task.init_params(jax.random.key(0)))
    (logits, _), state = task.model.apply({"params": params}, images, capture_intermediates=True)
    assert logits.shape == (2, 16, 16, 64)
    # Recompute the head from the decoder's final LayerNorm: patch (i, j)'s 4 x 64 outputs fill
    # the code cells (2i + a, 2j + b) in row-major (a, b) order.
    features = state["intermediates"]["decoder"]["ln_post"]["__call__"][0].reshape(2, 8, 8, -1)
    head = params["decoder"]
    hidden = jnp.tanh(features @ head["ffn_0"]["kernel"] + head["ffn_0"]["bias"])
    per_patch = (hidden @ head["ffn_2"]["kernel"] + head["ffn_2"]["bias"]).reshape(2, 8, 8, 2, 2, 64)
    expected = per_patch.transpose(0, 1, 3, 2, 4, 5).reshape(2, 16, 16, 64)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)

    stage2 = titok_l64_512.get_config("stage2,runlocal")
    task2 = registry.get_task(stage2)
    params2 = nn.unbox(task2.init_params(jax.random.key(0)))
    pixels = task2.model.apply({"params": params2}, images[:1], method=lambda m, x: m.decode_pixels(m.encode(x)[0]))
    assert pixels.shape == (1, 32, 32, 3) and bool(jnp.all(jnp.isfinite(pixels)))
