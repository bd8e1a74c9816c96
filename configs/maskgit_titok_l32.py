"""MaskGIT generator over TiTok-L-32 tokens, ImageNet 256 px (paper App. A; released sampling settings).

  python -m titok_var.tools.pretokenize --config configs/maskgit_titok_l32.py
  python main.py --config configs/maskgit_titok_l32.py --workdir runs/maskgit_l32
  python main.py --config configs/maskgit_titok_l32.py --workdir runs/maskgit_l32 --mode sample
"""

from configs import maskgit_model


def get_config(arg=None):
    return maskgit_model.generator_config("L-32", arg)
