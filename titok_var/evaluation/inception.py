"""The FID Inception-v3 (TF `2015-12-05` graph, as ported by pytorch-fid) in Flax linen, NHWC.

This is the network behind `pt_inception-2015-12-05-6726825d.pth`: torchvision's Inception-v3
layout with 1008 classes, no auxiliary head, and the FID-specific blocks of pytorch-fid:

* Mixed_5b/5c/5d (A), Mixed_6b..6e (C) and Mixed_7b (E_1) average-pool their pooling branch with
  a 3x3/stride-1/pad-1 window that ignores the padding (`count_include_pad=False`, as TF does);
* Mixed_7c (E_2) max-pools that branch instead.

Every convolution is bias-free and followed by a BatchNorm (eps 1e-3) in inference mode, i.e. a
fixed per-channel affine map computed from the stored scale/bias/mean/var, and a ReLU.

Two input conventions (`input_convention`), as the two families of reference statistics saw them:

* "adm" (default): the TF graph's own head, used by ADM's evaluation suite (the reference batches
  of gFID/IS/precision/recall) and by torch-fidelity (TiTok's evaluator): pixels on the 0-255
  scale, TF1 `ResizeBilinear` to 299x299 (align_corners=False, half_pixel_centers=False: source
  coordinate i * in/out), then (x - 128) / 128.
* "pytorch_fid": pytorch-fid's `InceptionV3(resize_input=True, normalize_input=True)`: images in
  [0, 1], `torch.nn.functional.interpolate` bilinear (half-pixel centres, align_corners=False),
  then 2x - 1.

Neither antialiases when shrinking. The two differ by up to 0.19 (25 levels) on 256 px inputs.

The model returns the 2048-d pool features (FID, precision/recall) and the 1008-way logits
(Inception Score). The logits leave out the fc bias by default, as the ADM suite and
torch-fidelity do for IS (`logits_with_bias=True` adds it).

Parameter names mirror the torch state dict so conversion is a rename plus transposes:
`Mixed_6b.branch7x7_2.conv.weight` -> params["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"],
`...bn.{weight,bias,running_mean,running_var}` -> `...bn/{scale,bias,mean,var}`, and
`fc.{weight,bias}` -> `fc/{kernel,bias}`. See `titok_var/tools/convert_inception.py`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

FID_INPUT_SIZE = 299
FID_FEATURE_DIM = 2048
NUM_LOGITS = 1008
BATCH_NORM_EPS = 1e-3
# Smallest input the network accepts without resizing (every VALID stage keeps >= 1 pixel).
MIN_UNRESIZED_SIZE = 75
# Inception input conventions: ADM's TF graph (reference batches, torch-fidelity) and pytorch-fid.
ADM = "adm"
PYTORCH_FID = "pytorch_fid"
INPUT_CONVENTIONS = (ADM, PYTORCH_FID)

Dtype = Any


def check_input_convention(convention: str) -> str:
    if convention not in INPUT_CONVENTIONS:
        raise ValueError(f"unknown Inception input convention {convention!r}; expected one of {INPUT_CONVENTIONS}")
    return convention


def bilinear_resize_matrix(in_size: int, out_size: int, half_pixel_centers: bool = True) -> np.ndarray:
    """(out_size, in_size) float64 weights of a 1-D bilinear resize, align_corners=False.

    half_pixel_centers=True matches `torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)`: source coordinate (i + 0.5) * in/out - 0.5, clamped below at 0.
    False matches TF1's `ResizeBilinear` (the FID graph's own resize): source coordinate i * in/out.
    Either way the upper neighbour is clamped to the last pixel, and there is no antialiasing.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    # Coordinates in float32, as torch's and TF's kernels compute them (float64 moves some weights by 1e-4).
    scale = np.float32(in_size / out_size)
    index = np.arange(out_size, dtype=np.float32)
    if half_pixel_centers:
        src = np.maximum((index + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0.0))
    else:
        src = index * scale
    src = src.astype(np.float64)
    lower = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    frac = src - lower
    weights = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    np.add.at(weights, (rows, lower), 1.0 - frac)
    np.add.at(weights, (rows, upper), frac)
    return weights


def resize_bilinear(
    images: jnp.ndarray,
    height: int,
    width: int,
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST,
    half_pixel_centers: bool = True,
) -> jnp.ndarray:
    """Bilinear resize of NHWC float images (see `bilinear_resize_matrix` for the two formulas).

    Written as two small matmuls with static interpolation matrices, so it is exact float32 work
    (with HIGHEST precision) and fuses well on accelerators.
    """
    if images.ndim != 4:
        raise ValueError(f"expected NHWC images, got shape {images.shape}")
    in_h, in_w = images.shape[1], images.shape[2]
    if (in_h, in_w) == (height, width):
        return images  # both formulas are the identity here
    dtype = images.dtype
    rows = jnp.asarray(bilinear_resize_matrix(in_h, height, half_pixel_centers), dtype)
    cols = jnp.asarray(bilinear_resize_matrix(in_w, width, half_pixel_centers), dtype)
    out = jnp.einsum("oh,bhwc->bowc", rows, images, precision=precision)
    return jnp.einsum("pw,bowc->bopc", cols, out, precision=precision)


def preprocess(
    images: jnp.ndarray,
    resize: bool = True,
    normalize: bool = True,
    dtype: Dtype = jnp.float32,
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST,
    convention: str = ADM,
) -> jnp.ndarray:
    """[0, 1] floats (or uint8 in [0, 255]) -> 299x299 network input, by `convention` (module doc).

    Without `normalize`, the output stays on the convention's own scale (0-255 for "adm", [0, 1]
    for "pytorch_fid")."""
    check_input_convention(convention)
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected NHWC RGB images, got shape {images.shape}")
    pixel_scale = 255.0 if convention == ADM else 1.0
    if jnp.issubdtype(images.dtype, jnp.integer):
        images = images.astype(dtype) * (pixel_scale / 255.0)
    else:
        images = images.astype(dtype) * pixel_scale
    if resize:
        images = resize_bilinear(images, FID_INPUT_SIZE, FID_INPUT_SIZE, precision,
                                 half_pixel_centers=convention == PYTORCH_FID)
    elif min(images.shape[1], images.shape[2]) < MIN_UNRESIZED_SIZE:
        raise ValueError(
            f"without resizing the input must be at least {MIN_UNRESIZED_SIZE}px, got {images.shape}"
        )
    if not normalize:
        return images
    return (images - 128.0) / 128.0 if convention == ADM else 2.0 * images - 1.0


class FrozenBatchNorm(nn.Module):
    """Inference-mode BatchNorm: x * scale / sqrt(var + eps) + (bias - mean * that factor).

    The four statistics are plain (never updated) parameters named after torch's BatchNorm2d
    entries (`weight`, `bias`, `running_mean`, `running_var`).
    """

    features: int
    eps: float = BATCH_NORM_EPS

    @nn.compact
    def __call__(self, x):
        shape = (self.features,)
        scale = self.param("scale", nn.initializers.ones, shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, shape, jnp.float32)
        mean = self.param("mean", nn.initializers.zeros, shape, jnp.float32)
        var = self.param("var", nn.initializers.ones, shape, jnp.float32)
        factor = scale * jax.lax.rsqrt(var + self.eps)
        shift = bias - mean * factor
        return x * factor.astype(x.dtype) + shift.astype(x.dtype)


def _pairs(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class ConvBN(nn.Module):
    """torchvision's BasicConv2d: bias-free conv, frozen BatchNorm (eps 1e-3), ReLU.

    `kernel_size`, `strides` and `padding` use torch's conventions (an int or (h, w); symmetric
    zero padding per spatial side).
    """

    features: int
    kernel_size: Any = 1
    strides: Any = 1
    padding: Any = 0
    precision: Any = jax.lax.Precision.HIGHEST
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        pad_h, pad_w = _pairs(self.padding)
        x = nn.Conv(
            self.features,
            _pairs(self.kernel_size),
            strides=_pairs(self.strides),
            padding=((pad_h, pad_h), (pad_w, pad_w)),
            use_bias=False,
            # He init only matters for random-weight use (tests): it keeps activations O(1).
            kernel_init=nn.initializers.he_normal(),
            dtype=self.dtype,
            precision=self.precision,
            name="conv",
        )(x)
        x = FrozenBatchNorm(self.features, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3_same(x):
    # TF's average pool divides by the number of real (non-padding) pixels in the window.
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_same(x):
    return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_3x3_stride2(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class _Block(nn.Module):
    precision: Any = jax.lax.Precision.HIGHEST
    dtype: Dtype = jnp.float32

    def conv(self, name: str, features: int, kernel_size=1, strides=1, padding=0) -> ConvBN:
        return ConvBN(features, kernel_size, strides, padding, self.precision, self.dtype, name=name)


class InceptionA(_Block):
    """35x35 block (Mixed_5b/5c/5d), FID variant: padding-excluding average pool."""

    pool_features: int = 32

    @nn.compact
    def __call__(self, x):
        branch1x1 = self.conv("branch1x1", 64)(x)
        branch5x5 = self.conv("branch5x5_1", 48)(x)
        branch5x5 = self.conv("branch5x5_2", 64, 5, padding=2)(branch5x5)
        branch3x3dbl = self.conv("branch3x3dbl_1", 64)(x)
        branch3x3dbl = self.conv("branch3x3dbl_2", 96, 3, padding=1)(branch3x3dbl)
        branch3x3dbl = self.conv("branch3x3dbl_3", 96, 3, padding=1)(branch3x3dbl)
        branch_pool = self.conv("branch_pool", self.pool_features)(_avg_pool_3x3_same(x))
        return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(_Block):
    """Grid reduction 35 -> 17 (Mixed_6a)."""

    @nn.compact
    def __call__(self, x):
        branch3x3 = self.conv("branch3x3", 384, 3, strides=2)(x)
        branch3x3dbl = self.conv("branch3x3dbl_1", 64)(x)
        branch3x3dbl = self.conv("branch3x3dbl_2", 96, 3, padding=1)(branch3x3dbl)
        branch3x3dbl = self.conv("branch3x3dbl_3", 96, 3, strides=2)(branch3x3dbl)
        return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionC(_Block):
    """17x17 block with factorised 7x7 convolutions (Mixed_6b..6e), FID average pool."""

    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        branch1x1 = self.conv("branch1x1", 192)(x)
        branch7x7 = self.conv("branch7x7_1", c7)(x)
        branch7x7 = self.conv("branch7x7_2", c7, (1, 7), padding=(0, 3))(branch7x7)
        branch7x7 = self.conv("branch7x7_3", 192, (7, 1), padding=(3, 0))(branch7x7)
        dbl = self.conv("branch7x7dbl_1", c7)(x)
        dbl = self.conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0))(dbl)
        dbl = self.conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3))(dbl)
        dbl = self.conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0))(dbl)
        dbl = self.conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))(dbl)
        branch_pool = self.conv("branch_pool", 192)(_avg_pool_3x3_same(x))
        return jnp.concatenate([branch1x1, branch7x7, dbl, branch_pool], axis=-1)


class InceptionD(_Block):
    """Grid reduction 17 -> 8 (Mixed_7a)."""

    @nn.compact
    def __call__(self, x):
        branch3x3 = self.conv("branch3x3_1", 192)(x)
        branch3x3 = self.conv("branch3x3_2", 320, 3, strides=2)(branch3x3)
        branch7x7x3 = self.conv("branch7x7x3_1", 192)(x)
        branch7x7x3 = self.conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(branch7x7x3)
        branch7x7x3 = self.conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(branch7x7x3)
        branch7x7x3 = self.conv("branch7x7x3_4", 192, 3, strides=2)(branch7x7x3)
        return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionE(_Block):
    """8x8 block with expanded filter banks (Mixed_7b: `pool="avg"`, Mixed_7c: `pool="max"`).

    The max pool of Mixed_7c is a quirk of the TF FID graph that pytorch-fid reproduces
    (FIDInceptionE_2); Mixed_7b averages without counting the padding (FIDInceptionE_1).
    """

    pool: str = "avg"

    @nn.compact
    def __call__(self, x):
        if self.pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {self.pool!r}")
        branch1x1 = self.conv("branch1x1", 320)(x)
        branch3x3 = self.conv("branch3x3_1", 384)(x)
        branch3x3 = jnp.concatenate([
            self.conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))(branch3x3),
            self.conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))(branch3x3),
        ], axis=-1)
        dbl = self.conv("branch3x3dbl_1", 448)(x)
        dbl = self.conv("branch3x3dbl_2", 384, 3, padding=1)(dbl)
        dbl = jnp.concatenate([
            self.conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(dbl),
            self.conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(dbl),
        ], axis=-1)
        pooled = _avg_pool_3x3_same(x) if self.pool == "avg" else _max_pool_3x3_same(x)
        branch_pool = self.conv("branch_pool", 192)(pooled)
        return jnp.concatenate([branch1x1, branch3x3, dbl, branch_pool], axis=-1)


class Logits(nn.Module):
    """The 2048 -> 1008 classifier; the bias is stored (it is in the checkpoint) but optional."""

    features: int = NUM_LOGITS
    use_bias: bool = False
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features), jnp.float32
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        y = jnp.dot(x, kernel.astype(x.dtype), precision=self.precision)
        if self.use_bias:
            y = y + bias.astype(x.dtype)
        return y


class InceptionV3(nn.Module):
    """FID Inception-v3: NHWC images in [0, 1] -> (pool features (B, 2048), logits (B, 1008)).

    Attributes:
      input_convention: "adm" (default) or "pytorch_fid": how pixels are resized and scaled
        (module docstring); statistics compare only within one convention.
      resize_input: bilinearly resize to 299x299 first. Without it the input must be at least
        75x75 and is used at its own size.
      normalize_input: map pixels to the network's [-1, 1] range.
      logits_with_bias: add the fc bias to the logits (default off, as ADM/torch-fidelity IS).
      precision: conv/matmul precision; HIGHEST keeps float32 convs out of TF32/bf16 passes.
      dtype: computation dtype. Outputs are float32 either way.
    """

    input_convention: str = ADM
    resize_input: bool = True
    normalize_input: bool = True
    logits_with_bias: bool = False
    precision: Any = jax.lax.Precision.HIGHEST
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images):
        x = preprocess(
            images, self.resize_input, self.normalize_input, self.dtype, self.precision, self.input_convention
        )

        kw = {"precision": self.precision, "dtype": self.dtype}

        def conv(name, features, kernel_size=1, strides=1, padding=0):
            return ConvBN(features, kernel_size, strides, padding, name=name, **kw)

        x = conv("Conv2d_1a_3x3", 32, 3, strides=2)(x)
        x = conv("Conv2d_2a_3x3", 32, 3)(x)
        x = conv("Conv2d_2b_3x3", 64, 3, padding=1)(x)
        x = _max_pool_3x3_stride2(x)
        x = conv("Conv2d_3b_1x1", 80)(x)
        x = conv("Conv2d_4a_3x3", 192, 3)(x)
        x = _max_pool_3x3_stride2(x)
        x = InceptionA(pool_features=32, name="Mixed_5b", **kw)(x)
        x = InceptionA(pool_features=64, name="Mixed_5c", **kw)(x)
        x = InceptionA(pool_features=64, name="Mixed_5d", **kw)(x)
        x = InceptionB(name="Mixed_6a", **kw)(x)
        x = InceptionC(channels_7x7=128, name="Mixed_6b", **kw)(x)
        x = InceptionC(channels_7x7=160, name="Mixed_6c", **kw)(x)
        x = InceptionC(channels_7x7=160, name="Mixed_6d", **kw)(x)
        x = InceptionC(channels_7x7=192, name="Mixed_6e", **kw)(x)
        x = InceptionD(name="Mixed_7a", **kw)(x)
        x = InceptionE(pool="avg", name="Mixed_7b", **kw)(x)
        x = InceptionE(pool="max", name="Mixed_7c", **kw)(x)
        pool = jnp.mean(x, axis=(1, 2))
        logits = Logits(use_bias=self.logits_with_bias, precision=self.precision, name="fc")(pool)
        return pool.astype(jnp.float32), logits.astype(jnp.float32)


def init_params(seed: int = 0, model: InceptionV3 | None = None):
    """Random float32 parameters shaped like the converted checkpoint (for tests and smoke runs).

    Built with NumPy from `param_shapes`: He-normal conv kernels, identity BatchNorms, a
    LeCun-normal fc. (Flax's own init compiles one random kernel per distinct shape, which takes
    ~20 s for this network on CPU.)
    """
    rng = np.random.default_rng(seed)

    def make(path, leaf):
        names = [getattr(k, "key", str(k)) for k in path]
        shape = leaf.shape
        if names[-1] == "kernel":
            gain = 1.0 if names[0] == "fc" else 2.0
            fan_in = int(np.prod(shape[:-1]))
            return jnp.asarray(rng.standard_normal(shape, np.float32) * np.sqrt(gain / fan_in))
        if names[-1] in ("scale", "var"):
            return jnp.ones(shape, jnp.float32)
        return jnp.zeros(shape, jnp.float32)

    return jax.tree_util.tree_map_with_path(make, param_shapes(model))


def param_shapes(model: InceptionV3 | None = None):
    """Nested dict of the parameters' ShapeDtypeStructs (no compute, no allocation)."""
    model = InceptionV3() if model is None else model
    small = model.clone(resize_input=False)
    dummy = jax.ShapeDtypeStruct((1, MIN_UNRESIZED_SIZE, MIN_UNRESIZED_SIZE, 3), jnp.float32)
    return jax.eval_shape(small.init, jax.random.key(0), dummy)["params"]


def make_feature_fn(model: InceptionV3 | None = None):
    """A jitted `fn(params, images) -> (pool (B, 2048), logits (B, 1008))` for `model`."""
    model = InceptionV3() if model is None else model

    @jax.jit
    def features(params, images: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        return model.apply({"params": params}, images)

    return features

