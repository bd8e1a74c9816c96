"""Conv and GroupNorm built the way the released PyTorch CNNs compute them (torch default conv
init, variance as the mean of squared deviations), with logical names on output channels."""

import flax.linen as nn

from titok_var.quantizers.multiscale import torch_default_conv_init

NORM_EPS = 1e-6  # the released VQGAN-family GroupNorm epsilon


def conv(features: int, name: str | None, *, axis, dtype, kernel: int = 3, strides: int = 1, padding=1,
         use_bias: bool = True, precision=None):
    """torch Conv2d; `padding` is an int (symmetric) or ((top, bottom), (left, right))."""
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding=padding,
        use_bias=use_bias,
        dtype=dtype,
        precision=precision,
        kernel_init=nn.with_logical_partitioning(torch_default_conv_init(), (None, None, None, axis)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis,)),
        name=name,
    )


def group_norm(name: str, *, groups: int, axis, dtype, epsilon: float = NORM_EPS):
    # use_fast_variance=False: the mean of squared deviations, as torch computes it.
    return nn.GroupNorm(
        num_groups=groups,
        epsilon=epsilon,
        use_fast_variance=False,
        dtype=dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (axis,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis,)),
        name=name,
    )
