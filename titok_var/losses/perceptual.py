"""Perceptual loss of tokenizer training: LPIPS-VGG16, ConvNeXt-S logits, or their weighted mix.

Kinds are the official config strings (`losses.perceptual_loss`):
* "lpips": batch mean of LPIPS(x, y) (VAR-style VQVAE recipes);
* "convnext_s": MSE of convnext_small logits at 224 px (TiTok stage 2);
* "lpips-convnext_s-W1-W2": (W1 * lpips + W2 * convnext_s) / (W1 + W2), e.g. TA-TiTok's
  "lpips-convnext_s-1.0-0.1".

Both networks are frozen: the loss stops gradients into their params, only x and y get gradients.
"""

import dataclasses
import os
import re

import jax
import jax.numpy as jnp

from titok_var.models.convnext import ConvNeXt, convnext_logit_loss
from titok_var.models.lpips import LPIPS
from titok_var.tools.convert_perceptual import (
    converted_path,
    load_params,
    missing_weights_message,
)

PERCEPTUAL_KINDS = ("lpips", "convnext_s", "lpips-convnext_s-W1-W2")

_NUMBER = r"(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"
_MIXED_KIND = re.compile(rf"lpips-convnext_s-{_NUMBER}-{_NUMBER}")


def parse_kind(kind: str) -> dict[str, float]:
    """Kind string -> {network: weight} for the networks it uses ("lpips", "convnext_s")."""
    if kind in ("lpips", "convnext_s"):
        return {kind: 1.0}
    if m := _MIXED_KIND.fullmatch(kind):
        weights = {"lpips": float(m.group(1)), "convnext_s": float(m.group(2))}
        if sum(weights.values()) <= 0:
            raise ValueError(f"perceptual loss {kind!r}: the weights sum to 0")
        return weights
    raise ValueError(
        f"unknown perceptual loss {kind!r}; expected one of {PERCEPTUAL_KINDS} (W1, W2 non-negative numbers)"
    )


@dataclasses.dataclass(frozen=True)
class PerceptualLoss:
    """(params, x, y) -> scalar loss; x, y are NHWC images in [0, 1] of one shape.

    params is {"lpips": ..., "convnext_s": ...} holding the networks in `weights`.
    """

    weights: tuple[tuple[str, float], ...]
    lpips: LPIPS | None = None
    convnext: ConvNeXt | None = None

    def components(self, params, x, y) -> dict:
        """Unweighted loss of each network: {"lpips": batch mean, "convnext_s": logit MSE}."""
        params = jax.lax.stop_gradient(params)
        x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
        out = {}
        for name, _ in self.weights:
            if name == "lpips":
                out[name] = jnp.mean(self.lpips.apply({"params": params[name]}, x, y))
            else:
                out[name] = convnext_logit_loss(params[name], self.convnext, x, y)
        return out

    def __call__(self, params, x, y):
        components = self.components(params, x, y)
        total = sum(weight * components[name] for name, weight in self.weights)
        return total / sum(weight for _, weight in self.weights)


def _weights_file(arch: str, weights_path, single: bool) -> str:
    if weights_path is None:
        raise FileNotFoundError(missing_weights_message(arch, None))
    weights_path = os.fspath(weights_path)
    if os.path.isdir(weights_path) or not single:
        return converted_path(arch, weights_path)
    return weights_path


def make_perceptual_loss(
    kind: str,
    weights_path: str | None = None,
    *,
    random_init: bool = False,
    rng: jax.Array | None = None,
    lpips_model: LPIPS | None = None,
    convnext_model: ConvNeXt | None = None,
) -> tuple[PerceptualLoss, dict]:
    """The loss for `kind` and its loaded params.

    weights_path: the directory the converter wrote (lpips_vgg16.npz, convnext_small.npz), or, for
    a single-network kind, the converted .npz itself. A missing file raises FileNotFoundError
    naming the torch file to fetch and the conversion command. random_init=True (with `rng`)
    initialises the networks randomly instead, for tests. lpips_model / convnext_model replace the
    released architectures (e.g. narrow test widths).
    """
    weights = parse_kind(kind)
    models = {
        "lpips": lpips_model if lpips_model is not None else LPIPS(),
        "convnext_s": convnext_model if convnext_model is not None else ConvNeXt(),
    }
    if random_init and rng is None:
        raise ValueError("random_init=True needs an explicit rng (a jax.random.key)")
    params = {}
    for name in weights:
        model = models[name]
        if random_init:
            rng, init_rng = jax.random.split(rng)
            images = jnp.zeros((1, model.min_size, model.min_size, 3), jnp.float32)
            inputs = (images, images) if name == "lpips" else (images,)
            params[name] = jax.jit(model.init)(init_rng, *inputs)["params"]
        else:
            params[name] = jax.tree.map(
                jnp.asarray, load_params(name, _weights_file(name, weights_path, len(weights) == 1), model)
            )
    loss = PerceptualLoss(
        weights=tuple(weights.items()),
        lpips=models["lpips"] if "lpips" in weights else None,
        convnext=models["convnext_s"] if "convnext_s" in weights else None,
    )
    return loss, params
