"""How far bfloat16 compute moves the outputs of released-size models, against float32.

    python bench/precision.py --what titok   # TiTok-L-32 with its MaskGIT-VQGAN pixel decoder
    python bench/precision.py --what var     # VAR-d16

Both runs use the same float32 parameters (the models' own initialisation with a fixed seed:
the released files cannot be downloaded here) and differ only in `model.dtype`. Printed:
- TiTok: token agreement of the encoder (the quantizer's nearest code), max |difference| of the
  proxy-code logits and of the decoded images (pixels in [0, 1]);
- VAR: max |difference| of the teacher-forced logits, agreement of their argmax, and agreement of
  the tokens sampled with one seed (top-k 900, top-p 0.96, cfg 1.5; one early flip changes every
  later scale, so this is the strictest number).
"""

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import titok_l32, var_d16  # noqa: E402
from titok_var import registry  # noqa: E402
from titok_var.data import shapes  # noqa: E402
from titok_var.models.titok import TiTok  # noqa: E402


def _task(config, dtype):
    config = config.copy_and_resolve_references()
    config.model.dtype = dtype
    return registry.get_task(config)


def titok(batch: int) -> dict:
    config = titok_l32.get_config("stage2")
    f32, bf16 = _task(config, "float32"), _task(config, "bfloat16")
    params = jax.jit(lambda k: jax.tree.map(lambda x: getattr(x, "value", x), f32.init_params(k)))(jax.random.key(0))
    rng = np.random.default_rng(0)
    images = np.stack([shapes.render_example(i % 16, 256, rng) for i in range(batch)]).astype(np.float32) / 255.0

    def outputs(task):
        def run(p, x):
            quantized, aux = task.model.apply({"params": p}, x, method=TiTok.encode)
            logits = task.model.apply({"params": p}, quantized, method=TiTok.decode)
            pixels = task.model.apply({"params": p}, quantized, method=TiTok.decode_pixels)
            return aux["indices"], logits.astype(jnp.float32), jnp.clip(pixels, 0, 1)
        return jax.device_get(jax.jit(run)(params, images))

    (t32, l32, p32), (t16, l16, p16) = outputs(f32), outputs(bf16)
    return {"token_agreement": float(np.mean(t32 == t16)), "max_abs_logit_diff": float(np.abs(l32 - l16).max()),
            "max_abs_pixel_diff": float(np.abs(p32 - p16).max()), "mean_abs_pixel_diff": float(np.abs(p32 - p16).mean())}


def var(batch: int) -> dict:
    from titok_var.generation.var_sampling import VarSamplingSettings, sample_scales
    from titok_var.models.var_vqvae import VQVAE
    from titok_var.quantizers.multiscale import MultiScaleResidualQuantizer
    from titok_var.generation.var_sampling import QuantizerOps

    config = var_d16.get_config()
    f32, bf16 = _task(config, "float32"), _task(config, "bfloat16")
    params = jax.jit(lambda k: jax.tree.map(lambda x: getattr(x, "value", x), f32.init_params(k)))(jax.random.key(0))
    vq = VQVAE()
    quantizer = MultiScaleResidualQuantizer(codebook_size=vq.codebook_size, code_dim=vq.code_dim,
                                            patch_nums=tuple(vq.patch_nums), beta=vq.beta, quant_resi=vq.quant_resi,
                                            share_quant_resi=vq.share_quant_resi)
    from titok_var.tasks.var_vqvae import split_token_maps

    maps = [jnp.zeros((1, p, p), jnp.int32) for p in vq.patch_nums]
    q_params = jax.jit(lambda k: quantizer.init(k, maps, method=MultiScaleResidualQuantizer.indices_to_var_input))(
        jax.random.key(1))["params"]
    bound = quantizer.bind({"params": q_params})
    ops = QuantizerOps(lookup=bound.lookup, codebook=lambda: q_params["embedding"],
                       next_input=bound.next_autoregressive_input, full_size=bound.full_size, code_dim=quantizer.code_dim)
    labels = jnp.arange(batch, dtype=jnp.int32) * 97 % 1000
    tokens = jax.random.randint(jax.random.key(2), (batch, f32.model.num_tokens), 0, vq.codebook_size)
    var_input = quantizer.apply({"params": q_params}, split_token_maps(tokens, vq.patch_nums),
                                method=MultiScaleResidualQuantizer.indices_to_var_input)
    settings = VarSamplingSettings(cfg=1.5, top_k=900, top_p=0.96)

    def outputs(task):
        logits = jax.jit(lambda p: task.model.apply({"params": p}, labels, var_input).astype(jnp.float32))(params)
        sampled = jax.jit(lambda p: sample_scales(task.model, p, ops, labels, jax.random.key(3), settings)[0])(params)
        return jax.device_get((logits, sampled))

    (l32, s32), (l16, s16) = outputs(f32), outputs(bf16)
    return {"max_abs_logit_diff": float(np.abs(l32 - l16).max()),
            "argmax_agreement": float(np.mean(l32.argmax(-1) == l16.argmax(-1))),
            "sampled_token_agreement": float(np.mean(s32 == s16)),
            "first_scale_agreement": float(np.mean(s32[:, :1] == s16[:, :1]))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--what", choices=["titok", "var", "both"], default="both")
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; batch {args.batch}")
    for name, fn in (("titok_l32", titok), ("var_d16", var)):
        if args.what in (name.split("_")[0], "both"):
            start = time.time()
            result = fn(args.batch)
            print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in result.items()) + f"  ({time.time() - start:.0f} s)",
                  flush=True)


if __name__ == "__main__":
    main()
