"""TiTok's PatchGAN-style discriminator (bytedance/1d-tokenizer `modeling/modules/discriminator.py`).

Layout of the official `NLayerDiscriminator` (defaults: 128 hidden channels, 3 stages, 1.91 M
parameters), NHWC here:

    block_in:   Conv2dSame 5x5 (3 -> C) -> LeakyReLU(0.1)
    blocks_i:   Conv2dSame 3x3 (C*m_i -> C*m_{i+1}) -> BlurDown (or 2x2 avg-pool) -> GroupNorm(32,
                eps 1e-5) -> LeakyReLU(0.1)                 with m = (1, 1, 2, 4, ...), so the
                                                            resolution halves per stage
    pool:       AdaptiveMaxPool2d((16, 16))                 (256 px: 32x32 -> 16x16)
    to_logits:  Conv2dSame 1x1 (C' -> C') -> LeakyReLU(0.1) -> Conv2dSame 5x5 (C' -> 1)

Images go in exactly as the official receives them: TiTok feeds [0, 1] pixels and the module
does not rescale them. Output: patch logits (B, 16, 16, 1) for the default pool size.

Conv2dSame is TensorFlow "SAME" padding, the lower half of the total on the top/left. BlurDown
is a fixed depthwise [1,3,3,1]x[1,3,3,1]/64 filter at stride 2; like the official it pads as if
the kernel were 4 wide whatever `blur_kernel_size` says. The blur filter is a constant, not a
parameter (torch keeps it as the buffer `blocks.{i}.1.kernel`, which a converter drops).

Parameter names mirror the torch state dict with indices joined by underscores: `block_in_0`
is `block_in.0`, `blocks_1_2/scale` is `blocks.1.2.weight` (GroupNorm), `to_logits_2` is
`to_logits.2`. Initialisation is torch's default (the official applies no custom init).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from titok_var.quantizers.multiscale import torch_default_conv_init
from titok_var.sharding import logical

Dtype = Any

NEGATIVE_SLOPE = 0.1
NORM_EPS = 1e-5  # torch GroupNorm's default, which the official discriminator keeps
BLUR_TAPS = {3: (1, 2, 1), 4: (1, 3, 3, 1), 5: (1, 4, 6, 4, 1)}
_BLUR_PADDING_KERNEL = 4  # the official computes the blur's SAME padding for k=4 at every size
_BLUR_STRIDE = 2


def tf_same_padding(size: int, kernel: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
    """TF "SAME" padding of one spatial axis as (before, after); the odd pixel goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def blur_kernel(taps) -> np.ndarray:
    """Normalised separable 2-D blur filter outer(taps, taps) / sum, float32 (k, k)."""
    taps = np.asarray(taps, np.float64)
    kernel = np.outer(taps, taps)
    return (kernel / kernel.sum()).astype(np.float32)


def blur_output_size(size: int, kernel_size: int) -> int:
    before, after = tf_same_padding(size, _BLUR_PADDING_KERNEL, _BLUR_STRIDE)
    return (size + before + after - kernel_size) // _BLUR_STRIDE + 1


def blur_downsample(x, kernel_size: int = 4):
    """Official BlurBlock: per-channel blur at stride 2, (B, H, W, C) -> (B, ~H/2, ~W/2, C)."""
    if kernel_size not in BLUR_TAPS:
        raise ValueError(f"blur_kernel_size must be one of {sorted(BLUR_TAPS)}, got {kernel_size}")
    height, width, channels = x.shape[1:]
    out_h, out_w = blur_output_size(height, kernel_size), blur_output_size(width, kernel_size)
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"a {height}x{width} feature map is too small for a {kernel_size}-tap blur downsample "
            f"(output would be {out_h}x{out_w})"
        )
    pads = (tf_same_padding(height, _BLUR_PADDING_KERNEL, _BLUR_STRIDE),
            tf_same_padding(width, _BLUR_PADDING_KERNEL, _BLUR_STRIDE))
    kernel = jnp.asarray(blur_kernel(BLUR_TAPS[kernel_size]), x.dtype)
    depthwise = jnp.broadcast_to(kernel[:, :, None, None], kernel.shape + (1, channels))
    return jax.lax.conv_general_dilated(
        x, depthwise, window_strides=(_BLUR_STRIDE, _BLUR_STRIDE), padding=pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels,
    )


def average_downsample(x):
    """torch AvgPool2d(2, 2): non-overlapping 2x2 means, an odd last row/column is dropped."""
    batch, height, width, channels = x.shape
    if height < 2 or width < 2:
        raise ValueError(f"a {height}x{width} feature map is too small for 2x2 average pooling")
    x = x[:, : height // 2 * 2, : width // 2 * 2]
    return x.reshape(batch, height // 2, 2, width // 2, 2, channels).mean(axis=(2, 4))


def _adaptive_max_pool_axis(x, out_size: int, axis: int):
    """Max over torch's adaptive bins [floor(i*n/m), ceil((i+1)*n/m)) along one axis."""
    size = x.shape[axis]
    starts = [i * size // out_size for i in range(out_size)]
    ends = [-(-(i + 1) * size // out_size) for i in range(out_size)]
    width = max(e - s for s, e in zip(starts, ends))
    # Shorter bins repeat their last element, which leaves the max unchanged.
    index = np.array([[min(s + j, e - 1) for j in range(width)] for s, e in zip(starts, ends)])
    return jnp.take(x, index, axis=axis).max(axis=axis + 1)


def adaptive_max_pool(x, output_size: tuple[int, int]):
    """torch AdaptiveMaxPool2d on NHWC (separable: a rectangle's max is a max of row maxima)."""
    return _adaptive_max_pool_axis(_adaptive_max_pool_axis(x, output_size[0], 1), output_size[1], 2)


def torch_default_bias_init(fan_in: int):
    """torch's Conv2d default bias init: U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv2d_same(features: int, kernel_size: int, in_channels: int, name: str, *, axis, dtype):
    """The official Conv2dSame at stride 1: TF "SAME" padding (size-independent at stride 1,
    (k - 1) split low-first) and torch-default init."""
    pad = tf_same_padding(1, kernel_size)
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        padding=(pad, pad),
        dtype=dtype,
        kernel_init=nn.with_logical_partitioning(torch_default_conv_init(), (None, None, None, axis)),
        bias_init=nn.with_logical_partitioning(
            torch_default_bias_init(kernel_size * kernel_size * in_channels), (axis,)
        ),
        name=name,
    )


def _leaky_relu(x):
    return nn.leaky_relu(x, negative_slope=NEGATIVE_SLOPE)


class NLayerDiscriminator(nn.Module):
    """Images (B, H, W, num_channels), as the official receives them -> logits (B, p, p, 1).

    `hidden_channels`, `num_stages`, `norm_groups` and `pool_size` shrink it for tests (the
    official fixes 32 groups and a 16x16 pool). `blur_resample=False` swaps BlurDown for a 2x2
    average pool, as the official option does. `channel_axis` is the logical name of the
    conv/norm output channels (None replicates every parameter). Logits are float32.
    """

    num_channels: int = 3
    hidden_channels: int = 128
    num_stages: int = 3
    blur_resample: bool = True
    blur_kernel_size: int = 4
    norm_groups: int = 32
    pool_size: int = 16
    channel_axis: str | None = None
    dtype: Dtype = jnp.float32

    def stage_channels(self) -> list[int]:
        """Output channels of blocks_0 .. blocks_{n-1}: C * (1, 2, 4, ...)."""
        return [self.hidden_channels * 2**i for i in range(self.num_stages)]

    def _check(self, images):
        if self.num_stages < 1:
            raise ValueError(f"the discriminator needs at least one stage, got num_stages={self.num_stages}")
        if self.blur_resample and self.blur_kernel_size not in BLUR_TAPS:
            raise ValueError(f"blur_kernel_size must be one of {sorted(BLUR_TAPS)}, got {self.blur_kernel_size}")
        bad = [c for c in self.stage_channels() if c % self.norm_groups]
        if bad:
            raise ValueError(f"stage channel counts {bad} are not divisible by norm_groups={self.norm_groups}")
        if images.ndim != 4 or images.shape[-1] != self.num_channels:
            raise ValueError(
                f"discriminator expects NHWC images (batch, height, width, {self.num_channels}), "
                f"got shape {tuple(images.shape)}"
            )

    @nn.compact
    def __call__(self, images):
        self._check(images)
        x = logical.constrain(jnp.asarray(images).astype(self.dtype), ("act_batch", None, None, None))
        common = {"axis": self.channel_axis, "dtype": self.dtype}
        x = _leaky_relu(conv2d_same(self.hidden_channels, 5, x.shape[-1], "block_in_0", **common)(x))
        for i, channels in enumerate(self.stage_channels()):
            x = conv2d_same(channels, 3, x.shape[-1], f"blocks_{i}_0", **common)(x)
            x = blur_downsample(x, self.blur_kernel_size) if self.blur_resample else average_downsample(x)
            x = nn.GroupNorm(
                num_groups=self.norm_groups,
                epsilon=NORM_EPS,
                use_fast_variance=False,  # mean of squared deviations, as torch computes it
                dtype=self.dtype,
                scale_init=nn.with_logical_partitioning(nn.initializers.ones, (self.channel_axis,)),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (self.channel_axis,)),
                name=f"blocks_{i}_2",
            )(x)
            x = _leaky_relu(x)
        x = adaptive_max_pool(x, (self.pool_size, self.pool_size))
        x = _leaky_relu(conv2d_same(x.shape[-1], 1, x.shape[-1], "to_logits_0", **common)(x))
        # One output channel never divides a mesh axis: replicated.
        logits = conv2d_same(1, 5, x.shape[-1], "to_logits_2", axis=None, dtype=self.dtype)(x)
        return logits.astype(jnp.float32)
