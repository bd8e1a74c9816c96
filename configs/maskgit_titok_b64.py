"""MaskGIT generator over TiTok-B-64 tokens, ImageNet 256 px (paper App. A; released sampling settings).

  python -m titok_var.tools.pretokenize --config configs/maskgit_titok_b64.py
  python main.py --config configs/maskgit_titok_b64.py --workdir runs/maskgit_b64
  python main.py --config configs/maskgit_titok_b64.py --workdir runs/maskgit_b64 --mode sample
"""

from configs import maskgit_model


def get_config(arg=None):
    return maskgit_model.generator_config("B-64", arg)
