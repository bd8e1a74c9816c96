"""TiTok-B-128 at 512 px (patch 32, paper App. A): single-stage pixel recipe by default,
`:stage1` / `:stage2` for the two-stage recipe. The paper does not say how its 512 px proxy codes
were made; ours come from the released 256 px MaskGIT-VQGAN run on 512 px images (32 x 32 codes),
2 x 2 of them predicted per 32 px patch (model.proxy_codes_per_side=2).

  python main.py --config configs/titok_b128_512.py --workdir /path/to/workdir
  python main.py --config configs/titok_b128_512.py:stage1 --workdir /path/to/stage1 \
      --config.proxy.vqgan_weights=/path/to/maskgit_vqgan.npz
  python main.py --config configs/titok_b128_512.py:runlocal --workdir /tmp/titok_b128_512   # tiny CPU smoke run
"""

from configs import titok_model


def get_config(arg=None):
    return titok_model.titok_config("b128_512", arg)
