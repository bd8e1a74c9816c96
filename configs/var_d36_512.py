"""VAR-d36 at 512 px: one shared AdaLN (paper Sec. 5.1 footnote), patch_nums 1..32, 2240 tokens.

  python main.py --config configs/var_d36_512.py --workdir /ckpt/var_d36
"""

from configs import var_model


def get_config(arg=None):
    return var_model.var_config(36, arg)
