"""TiTok-B64 at 256 px: single-stage pixel training with l2 + quantizer losses by default;
`:stage1` / `:stage2` for the paper's two-stage recipe.

  python main.py --config configs/titok_b64.py --workdir /path/to/workdir
  python main.py --config configs/titok_b64.py:runlocal --workdir /tmp/titok_b64   # tiny CPU smoke run
"""

from configs import titok_model


def get_config(arg=None):
    return titok_model.titok_config("b64", arg)
