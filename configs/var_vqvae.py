"""VAR's multi-scale VQVAE at the released shape (`vae_ch160v4096z32`, 256 px, 680 tokens).

  python main.py --config configs/var_vqvae.py --workdir /ckpt/var_vqvae
  python main.py --config configs/var_vqvae.py:runlocal --workdir /tmp/vqvae   # CPU smoke run

The paper trains it on OpenImages; any tfds image dataset can be named in `data.name`.
"""

from configs import common
from configs import var_model


def get_config(arg=None):
    args = common.parse_arg(arg, runlocal=False)
    config = common.base_config("var_vqvae")
    config.model = var_model.vqvae_model_config(dtype="bfloat16")
    config.loss = var_model.vqvae_loss_config()
    config.optimizer = common.optimizer_config(learning_rate=1e-4, end_learning_rate=1e-5, warmup_steps=5_000,
                                               weight_decay=1e-4, b1=0.5, b2=0.9)
    config.train = common.train_config(num_steps=500_000, global_batch_size=256)
    # The official loader (utils/data.py::build_dataset): shorter side round(1.125 * 256) = 288 with
    # LANCZOS, a random 256 crop for training, the centre crop for evaluation, no flips.
    config.data = common.data_config(name="imagenet2012", image_size=256, resize_ratio=1.125, resize_filter="lanczos",
                                     random_crop=True, random_flip=False)
    if args.runlocal:
        config.model.update(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, code_dim=8, codebook_size=256,
                            patch_nums=(1, 2, 4, 8), norm_groups=8, dtype="float32")
        config.data.update(name="shapes", image_size=32, shapes_num_train=2048, shapes_num_eval=256)
        config.train.update(num_steps=20, global_batch_size=8, log_every_steps=5, eval_every_steps=10,
                            checkpoint_every_steps=10, data_workers=2)
        config.eval.update(global_batch_size=8, num_examples=32)
        config.optimizer.warmup_steps = 5
    return config
