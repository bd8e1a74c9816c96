"""LPIPS with a VGG16 trunk (Zhang et al. 2018), as taming-transformers / TiTok compute it.

    d(x, y) = sum_k mean_hw( lin_k( (n(f_k(x)) - n(f_k(y)))^2 ) )

* Inputs are NHWC images in [0, 1]; they are mapped to [-1, 1] (the range the released lin
  weights expect) and then through the fixed "scaling layer" (x - shift) / scale.
* f_k are the VGG16 activations relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (torchvision
  `vgg16().features[:30]`, 3x3 convs with padding 1, 2x2/2 max pools between the stages).
* n(f) = f / (||f||_channels + 1e-10) per pixel.
* lin_k is a bias-free 1x1 conv to one channel (the learned channel weights); the official
  dropout before it is inactive in eval, so it is left out.

Parameter names follow the torch state dicts so conversion is a rename plus transposes
(`titok_var.tools.convert_perceptual`): the trunk conv at torchvision index i is `vgg/features_{i}`
(`features.{i}.weight/bias` of torchvision's vgg16), the heads are `lin{k}` (`lin{k}.model.1.weight`
of the LPIPS `vgg.pth`).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from titok_var.sharding import logical

Dtype = Any

# Output channels of each 3x3 conv, stage by stage (torchvision cfg "D"); a stage ends at one of
# the five LPIPS taps, and a 2x2 max pool separates consecutive stages.
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
NORMALIZE_EPS = 1e-10


def vgg_conv_indices(stages: Sequence[Sequence[int]]) -> list[list[int]]:
    """torchvision `features` index of every conv, per stage: each conv is followed by a ReLU
    and each stage by a MaxPool, so with VGG16_STAGES the taps are after indices 3, 8, 15, 22, 29."""
    indices, position = [], 0
    for stage in stages:
        indices.append([position + 2 * j for j in range(len(stage))])
        position += 2 * len(stage) + 1
    return indices


def unit_normalize(features, eps: float = NORMALIZE_EPS):
    """f / (sqrt(sum_c f^2) + eps) over the channel (last) axis.

    Where every channel is 0 (a dead ReLU pixel) the value is 0 either way, but the gradient of
    sqrt at 0 is infinite and would turn the loss gradient into NaN; the double `where` keeps the
    forward value exact and the gradient finite there.
    """
    squares = jnp.sum(jnp.square(features), axis=-1, keepdims=True)
    positive = squares > 0
    norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1.0)), 0.0)
    return features / (norm + eps)


class VGG16Features(nn.Module):
    """Normalised NHWC images -> the activation at the end of every stage (relu1_2 .. relu5_3).

    `stages` holds each stage's conv widths (VGG16_STAGES by default; smaller for tests).
    """

    stages: Sequence[Sequence[int]] = VGG16_STAGES
    dtype: Dtype = jnp.float32
    precision: Any = None

    @nn.compact
    def __call__(self, x):
        taps = []
        for stage_index, (widths, indices) in enumerate(zip(self.stages, vgg_conv_indices(self.stages))):
            if stage_index > 0:  # floor mode, as torch's MaxPool2d(2, 2)
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            for width, index in zip(widths, indices):
                x = nn.Conv(
                    width,
                    (3, 3),
                    padding=((1, 1), (1, 1)),
                    dtype=self.dtype,
                    precision=self.precision,
                    # torchvision's VGG init (kaiming normal, fan_out); only random-weight use sees it.
                    kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                    name=f"features_{index}",
                )(x)
                x = nn.relu(x)
            taps.append(x)
        return taps


class LPIPS(nn.Module):
    """LPIPS distance between two NHWC image batches in [0, 1]: returns (B,) float32.

    Randomly initialised lin heads are all ones (LPIPS' untrained "baseline": a plain channel sum),
    so random-weight distances are non-negative like the trained ones. `precision` is passed to
    the convs (None: the backend default, e.g. TF32 on recent GPUs, as cuDNN convs in torch).
    """

    vgg_stages: Sequence[Sequence[int]] = VGG16_STAGES
    dtype: Dtype = jnp.float32
    precision: Any = None

    @property
    def min_size(self) -> int:
        """Smallest image side that leaves the last VGG stage at least one pixel."""
        return 2 ** (len(self.vgg_stages) - 1)

    @nn.compact
    def __call__(self, x, y):
        if x.ndim != 4 or x.shape[-1] != 3 or x.shape != y.shape:
            raise ValueError(
                f"LPIPS expects two NHWC RGB batches of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        if min(x.shape[1:3]) < self.min_size:
            raise ValueError(
                f"LPIPS needs images of at least {self.min_size}x{self.min_size} pixels "
                f"({len(self.vgg_stages)} VGG stages), got {x.shape[1]}x{x.shape[2]}"
            )
        vgg = VGG16Features(self.vgg_stages, self.dtype, self.precision, name="vgg")
        shift = jnp.array(LPIPS_SHIFT, jnp.float32)
        scale = jnp.array(LPIPS_SCALE, jnp.float32)

        def trunk(images):
            images = logical.constrain(images.astype(jnp.float32), ("act_batch", None, None, None))
            return vgg((((images * 2.0 - 1.0) - shift) / scale).astype(self.dtype))

        # Two trunk passes (shared params), as the official module runs them.
        distance = jnp.zeros((x.shape[0],), jnp.float32)
        for k, (fx, fy) in enumerate(zip(trunk(x), trunk(y))):
            fx, fy = unit_normalize(fx.astype(jnp.float32)), unit_normalize(fy.astype(jnp.float32))
            squared = jnp.square(fx - fy)
            weighted = nn.Conv(
                1,
                (1, 1),
                use_bias=False,
                dtype=jnp.float32,
                precision=self.precision,
                kernel_init=nn.initializers.ones,
                name=f"lin{k}",
            )(squared)
            distance = distance + jnp.mean(weighted, axis=(1, 2, 3))
        return distance
