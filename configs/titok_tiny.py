"""Tiny TiTok on the built-in `shapes` dataset: the CPU quickstart (minutes on 2 cores).

  python main.py --config configs/titok_tiny.py --workdir runs/quickstart
"""

from configs import common
from configs import titok_model


def get_config(arg=None):
    del arg
    config = common.base_config("titok")
    config.model = titok_model.model_config(
        "tiny", "tiny", 16, image_size=32, patch_size=8, codebook_size=256, token_size=8, dtype="float32",
        # Centred pixels and no commitment term: with the paper's commitment cost of 0.25, the
        # nearly identical early encodings are pulled onto one code per position and this tiny
        # model never leaves the mean image (measured: PSNR 15.3, 16 of 256 codes used).
        symmetric_pixels=True, commitment_cost=0.0,
    )
    config.loss = titok_model.loss_config()
    config.data = common.data_config(
        name="shapes", image_size=32, shapes_num_train=20_000, shapes_num_eval=512
    )
    config.optimizer = common.optimizer_config(learning_rate=2e-3, end_learning_rate=1e-4, warmup_steps=50,
                                               weight_decay=1e-4, b2=0.99)
    config.train = common.train_config(
        num_steps=1500, global_batch_size=32, log_every_steps=100, eval_every_steps=500,
        checkpoint_every_steps=500, keep_checkpoints=2, keep_period=0, ema_decay=0.99, data_workers=2,
    )
    config.eval = common.eval_config(global_batch_size=64, num_examples=512, grid_images=8)
    return config
