"""TiTok-B-128 at 512 px (patch 32, paper App. A), single-stage pixel recipe.

  python main.py --config configs/titok_b128_512.py --workdir /path/to/workdir
  python main.py --config configs/titok_b128_512.py:runlocal --workdir /tmp/titok_b128_512   # tiny CPU smoke run
"""

from configs import titok_model


def get_config(arg=None):
    return titok_model.titok_config("b128_512", arg)
