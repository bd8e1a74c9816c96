"""MaskGIT generator over TiTok-S-128 tokens, ImageNet 256 px (paper App. A; released sampling settings).

  python -m titok_var.tools.pretokenize --config configs/maskgit_titok_s128.py
  python main.py --config configs/maskgit_titok_s128.py --workdir runs/maskgit_s128
  python main.py --config configs/maskgit_titok_s128.py --workdir runs/maskgit_s128 --mode sample
"""

from configs import maskgit_model


def get_config(arg=None):
    return maskgit_model.generator_config("S-128", arg)
