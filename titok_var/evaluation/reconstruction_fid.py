"""rFID features for any tokenizer: Inception pool features of originals and reconstructions.

Used by the tokenizer tasks' `eval_features`; the eval loop accumulates them in float64 and the
task turns the two statistics into a Frechet distance.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from titok_var.evaluation import fid


def make_reconstruction_features(inception_weights: str, reconstruct: Callable,
                                 convention: str = "adm") -> Callable | None:
    """fn(params, batch) -> {"real", "reconstructed"} pool features, or None without weights.

    `reconstruct(params, images)` returns reconstructions in [0, 1]. Both sides are rounded to 8-bit
    levels first, as the reference evaluators only ever see saved PNGs. `convention` is the
    Inception input convention (`inception.INPUT_CONVENTIONS`; TiTok's evaluator uses ADM's).
    """
    if not inception_weights:
        return None
    from titok_var.evaluation import inception
    from titok_var.tools.convert_inception import load_inception_params

    network = inception.InceptionV3(input_convention=inception.check_input_convention(convention))
    inception_params = load_inception_params(inception_weights)

    @jax.jit
    def features(params, inception_params, images):
        reconstructions = reconstruct(params, images)
        both = jnp.round(jnp.concatenate([images, reconstructions]) * 255.0) / 255.0
        pool, _ = network.apply({"params": inception_params}, both)
        return pool[: images.shape[0]], pool[images.shape[0]:]

    def run(params, batch):
        real, fake = features(params, inception_params, batch["image"])
        return {"real": real, "reconstructed": fake}

    return run


def summarize_reconstruction_features(feature_stats) -> dict[str, float]:
    real, fake = feature_stats["real"].statistics(), feature_stats["reconstructed"].statistics()
    return {"rfid": fid.frechet_distance(*real, *fake)}
