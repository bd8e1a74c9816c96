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
