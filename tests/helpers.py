"""Tiny configs shared by the tests."""

from configs import titok_tiny


def tiny_titok_config(**train_overrides):
    """A 16 px TiTok on `shapes` that trains a step in milliseconds."""
    config = titok_tiny.get_config()
    config.model.update(image_size=16, patch_size=4, num_latent_tokens=8, codebook_size=64, token_size=8)
    config.data.update(image_size=16, shapes_num_train=256, shapes_num_eval=32)
    config.train.update(num_steps=6, global_batch_size=16, log_every_steps=2, eval_every_steps=0,
                        checkpoint_every_steps=3, keep_checkpoints=5, async_checkpointing=False,
                        data_workers=2)
    config.train.update(train_overrides)
    config.eval.update(global_batch_size=16, num_examples=32, grid_images=4)
    config.optimizer.update(warmup_steps=2)
    return config


def tiny_var_vqvae_config(**train_overrides):
    """A 16 px multi-scale VQVAE (4x4 latent, scales 1, 2, 4) on `shapes`."""
    from configs import var_vqvae_tiny

    config = var_vqvae_tiny.get_config()
    config.model.update(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, code_dim=4, codebook_size=32,
                        patch_nums=(1, 2, 4), norm_groups=4)
    config.data.update(image_size=16, shapes_num_train=256, shapes_num_eval=32)
    config.train.update(num_steps=4, global_batch_size=16, log_every_steps=2, eval_every_steps=0,
                        checkpoint_every_steps=2, keep_checkpoints=5, async_checkpointing=False,
                        data_workers=2)
    config.train.update(train_overrides)
    config.eval.update(global_batch_size=16, num_examples=32, grid_images=4)
    config.optimizer.update(warmup_steps=2)
    return config


VAR_STEPS = 300


def tiny_var_config(export_dir, image_data, data_dir, **train_overrides):
    """A 2-block VAR over the tiny VQVAE's 21 tokens (scales 1, 2, 4)."""
    from configs import var_tiny

    config = var_tiny.get_config()
    config.model.update(depth=2, width=64, num_heads=2, vocab_size=32, vae_channels=4, patch_nums=(1, 2, 4))
    config.tokenizer.update(export_dir=export_dir, image_data=image_data, batch_size=64)
    config.data.update(data_dir=data_dir, train_split=image_data.train_split, eval_split=image_data.eval_split)
    config.train.update(num_steps=VAR_STEPS, global_batch_size=32, log_every_steps=50, eval_every_steps=0,
                        checkpoint_every_steps=VAR_STEPS, async_checkpointing=False)
    config.train.update(train_overrides)
    config.optimizer.update(learning_rate=3e-3, warmup_steps=20)
    config.eval.update(global_batch_size=16, num_examples=16, grid_images=4)
    config.sample.update(num_per_class=4, global_batch_size=64)
    return config


def train_tiny_var_pipeline(root):
    """Tiny VQVAE (300 steps) -> export -> token maps -> tiny VAR (300 steps) under `root`."""
    from titok_var.tools import export, pretokenize
    from titok_var.training import trainer

    vq_config = tiny_var_vqvae_config(num_steps=300, checkpoint_every_steps=300, log_every_steps=100)
    vq_config.optimizer.update(learning_rate=3e-3, warmup_steps=5)
    vq_config.data.update(shapes_num_train=512, shapes_num_eval=32)
    trainer.train(vq_config, str(root / "vqvae"))
    export_dir = export.export_checkpoint(vq_config, str(root / "vqvae"), str(root / "export"))
    data_dir = str(root / "tokens")
    for split in ("train", "eval"):
        pretokenize.pretokenize(export_dir, vq_config.data, data_dir, split, batch_size=64, flips=False)
    config = tiny_var_config(export_dir, vq_config.data, data_dir)
    result = trainer.train(config, str(root / "var"))
    return dict(config=config, result=result, workdir=str(root / "var"), vq_config=vq_config, export_dir=export_dir)


def run_train_steps(config, devices, num_steps: int):
    """(state, per-step metrics as floats) of `num_steps` real jitted train steps of `config` on
    `devices`, from a fresh sharded state and the config's data: the sharded-vs-single-device tests."""
    import jax

    from titok_var.data import pipeline
    from titok_var.training import data_feed, state_init, trainer

    exp = trainer.build_experiment(config, "/tmp/unused", devices)
    with exp.context():
        state = state_init.create_train_state(exp.task, exp.tx, config, exp.mesh, exp.rules, exp.layout)
        step_fn = trainer.jit_train_step(exp)
        batches = data_feed.train_iterator(config, exp.mesh, 0, pipeline.PipelineStats())
        metrics = []
        for _ in range(num_steps):
            state, step_metrics = step_fn(state, next(batches))
            metrics.append({k: float(v) for k, v in jax.device_get(step_metrics).items() if v.ndim == 0})
    return state, metrics
