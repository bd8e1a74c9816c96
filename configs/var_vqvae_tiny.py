"""Tiny multi-scale VQVAE on the built-in `shapes` dataset (32 px, 8x8 latent, 6 scales): the VAR
quickstart's tokenizer and the tests' model (CPU, minutes).

  python main.py --config configs/var_vqvae_tiny.py --workdir runs/var_quickstart/vqvae
"""

from configs import common
from configs import var_model

TINY_PATCH_NUMS = (1, 2, 3, 4, 6, 8)


def get_config(arg=None):
    del arg
    config = common.base_config("var_vqvae")
    config.model = var_model.vqvae_model_config(
        ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, code_dim=8, codebook_size=256,
        patch_nums=TINY_PATCH_NUMS, norm_groups=8, dtype="float32",
    )
    config.loss = var_model.vqvae_loss_config()
    config.data = common.data_config(name="shapes", image_size=32, shapes_num_train=20_000, shapes_num_eval=512)
    config.optimizer = common.optimizer_config(learning_rate=2e-3, end_learning_rate=1e-4, warmup_steps=50,
                                               weight_decay=1e-4, b2=0.99)
    config.train = common.train_config(
        num_steps=1500, global_batch_size=32, log_every_steps=100, eval_every_steps=500,
        checkpoint_every_steps=500, keep_checkpoints=2, keep_period=0, ema_decay=0.99, data_workers=2,
    )
    config.eval = common.eval_config(global_batch_size=64, num_examples=512, grid_images=8)
    return config
