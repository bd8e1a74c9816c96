"""torchvision ConvNeXt (Liu et al. 2022) in Flax, NHWC, and TiTok's ConvNeXt-S logit loss.

Architecture (torchvision `ConvNeXt`, inference only: stochastic depth is the identity in eval):
* stem: 4x4 stride-4 conv (bias) -> LayerNorm over channels;
* stage i: depths[i] blocks at width dims[i]; between stages LayerNorm -> 2x2 stride-2 conv;
* block: x + layer_scale * Linear(GELU(Linear(LayerNorm(dwconv7x7(x))))), the MLP 4x wide,
  GELU exact (erf), layer_scale a per-channel vector initialised to 1e-6;
* head: global average pool -> LayerNorm -> Linear(num_classes).
Every LayerNorm has eps 1e-6 and uses the biased variance, as torch does.

Parameter names mirror torchvision's state dict with "." -> "_" in module names, so conversion
(`titok_var.tools.convert_perceptual`) is a rename plus transposes: `features_0_0` (stem conv),
`features_0_1` (stem norm), `features_{1,3,5,7}_{j}/block_{0,2,3,5}` and `.../layer_scale`,
`features_{2,4,6}_{0,1}` (downsample norm and conv), `classifier_0` (norm), `classifier_2`.

The TiTok stage-2 perceptual loss (`convnext_logit_loss`) is the MSE between the 1000 logits of
both images after resizing them to 224x224 (bilinear, antialias, align_corners=False) and
ImageNet normalisation.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from titok_var.sharding import logical

Dtype = Any

LAYER_NORM_EPS = 1e-6
# torchvision convnext_small (IMAGENET1K_V1, `convnext_small-0c510722.pth`).
CONVNEXT_SMALL = {"dims": (96, 192, 384, 768), "depths": (3, 3, 27, 3)}
LOGIT_LOSS_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision initialises convs and linears with trunc_normal(std=0.02) and zero bias; only
# random-weight use (tests) sees these.
_KERNEL_INIT = nn.initializers.truncated_normal(0.02)


def _layer_norm(name: str, dtype):
    return nn.LayerNorm(epsilon=LAYER_NORM_EPS, use_fast_variance=False, dtype=dtype, name=name)


class CNBlock(nn.Module):
    """x + layer_scale * (dwconv7x7 -> LayerNorm -> Linear 4x -> GELU -> Linear)(x)."""

    dim: int
    layer_scale_init: float = 1e-6
    dtype: Dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        dense = {"dtype": self.dtype, "precision": self.precision, "kernel_init": _KERNEL_INIT}
        h = nn.Conv(self.dim, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=self.dim,
                    name="block_0", **dense)(x)
        h = _layer_norm("block_2", self.dtype)(h)
        h = nn.Dense(4 * self.dim, name="block_3", **dense)(h)
        h = nn.gelu(h, approximate=False)
        h = nn.Dense(self.dim, name="block_5", **dense)(h)
        gamma = self.param("layer_scale", nn.initializers.constant(self.layer_scale_init), (self.dim,))
        return x + gamma.astype(h.dtype) * h


class ConvNeXt(nn.Module):
    """NHWC images (already resized and ImageNet-normalised) -> (B, num_classes) float32 logits.

    Defaults are torchvision's convnext_small (`CONVNEXT_SMALL`); tests use narrow widths.
    `precision` goes to every conv and Dense (None: the backend default, e.g. TF32 on recent GPUs).
    """

    dims: Sequence[int] = CONVNEXT_SMALL["dims"]
    depths: Sequence[int] = CONVNEXT_SMALL["depths"]
    num_classes: int = 1000
    layer_scale_init: float = 1e-6
    dtype: Dtype = jnp.float32
    precision: Any = None

    @property
    def min_size(self) -> int:
        """Smallest image side that leaves the last stage at least one pixel."""
        return 4 * 2 ** (len(self.dims) - 1)

    @nn.compact
    def __call__(self, images):
        if len(self.dims) != len(self.depths):
            raise ValueError(f"dims {tuple(self.dims)} and depths {tuple(self.depths)} differ in length")
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"ConvNeXt expects NHWC RGB images, got shape {tuple(images.shape)}")
        if min(images.shape[1:3]) < self.min_size:
            raise ValueError(
                f"ConvNeXt needs images of at least {self.min_size}x{self.min_size} pixels, "
                f"got {images.shape[1]}x{images.shape[2]}"
            )
        conv = {"dtype": self.dtype, "precision": self.precision, "kernel_init": _KERNEL_INIT}
        x = logical.constrain(images.astype(self.dtype), ("act_batch", None, None, None))
        x = nn.Conv(self.dims[0], (4, 4), strides=(4, 4), padding="VALID", name="features_0_0", **conv)(x)
        x = _layer_norm("features_0_1", self.dtype)(x)
        for stage, (dim, depth) in enumerate(zip(self.dims, self.depths)):
            if stage > 0:
                x = _layer_norm(f"features_{2 * stage}_0", self.dtype)(x)
                x = nn.Conv(dim, (2, 2), strides=(2, 2), padding="VALID", name=f"features_{2 * stage}_1", **conv)(x)
            for j in range(depth):
                x = CNBlock(dim, self.layer_scale_init, self.dtype, self.precision,
                            name=f"features_{2 * stage + 1}_{j}")(x)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        x = _layer_norm("classifier_0", jnp.float32)(x)
        return nn.Dense(self.num_classes, name="classifier_2", **{**conv, "dtype": jnp.float32})(x)


def resize_bilinear_antialiased(images, height: int, width: int):
    """NHWC float images -> (B, height, width, C) as torch's
    `F.interpolate(mode="bilinear", align_corners=False, antialias=True)`.

    `jax.image.resize(..., "linear", antialias=True)` is the same filter: a triangle kernel that
    is widened by in/out when downsampling (plain bilinear when upsampling), sampled at the
    pixel-centre positions (i + 0.5) * in/out - 0.5 and renormalised over the taps that fall
    inside the image. It differs from torch only in float32 rounding (weights and summation
    order), ~1e-6 on [0, 1] images; the tests check it against a NumPy port of torch's kernel.
    """
    batch, _, _, channels = images.shape
    return jax.image.resize(images, (batch, height, width, channels), method="linear", antialias=True)


def imagenet_input(images, size: int = LOGIT_LOSS_SIZE):
    """[0, 1] NHWC images -> resized to size x size and normalised with the ImageNet mean/std."""
    images = resize_bilinear_antialiased(images.astype(jnp.float32), size, size)
    mean = jnp.array(IMAGENET_MEAN, jnp.float32)
    std = jnp.array(IMAGENET_STD, jnp.float32)
    return (images - mean) / std


def convnext_logit_loss(params, model: ConvNeXt, x, y):
    """TiTok's "convnext_s" perceptual loss: mean over B x classes of (logits(x) - logits(y))^2.

    x, y: NHWC images in [0, 1] of one shape (any size: both are resized to 224x224).
    """
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape != y.shape:
        raise ValueError(
            f"convnext_logit_loss expects two NHWC RGB batches of the same shape, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    # Two passes (shared params), as the official loss runs them.
    logits_x = model.apply({"params": params}, imagenet_input(x))
    logits_y = model.apply({"params": params}, imagenet_input(y))
    return jnp.mean(jnp.square(logits_x - logits_y))
