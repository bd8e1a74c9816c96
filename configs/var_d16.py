"""VAR-d16 at 256 px with the official recipe (README "VAR zoo"); needs the VQVAE export and
ImageNet token shards (see README, VAR).

  python main.py --config configs/var_d16.py --workdir /ckpt/var_d16
"""

from configs import var_model


def get_config(arg=None):
    return var_model.var_config(16, arg)
