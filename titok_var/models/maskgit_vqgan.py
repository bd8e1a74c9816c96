"""MaskGIT-VQGAN, the frozen CNN tokenizer TiTok trains against (bytedance/1d-tokenizer
`modeling/modules/maskgit_vqgan.py`, a port of Google's MaskGIT tokenizer).

Its encoder + 1024 x 256 codebook gives TiTok's stage-1 "proxy codes" (B, 16, 16); its decoder turns
codes, or TiTok's softmax over them mixed with the codebook (stage 2), into pixels. Images are NHWC
in [0, 1] on both sides, as the official model takes and gives them.

Architecture (no attention anywhere):
- Every conv uses TF "SAME" padding; at stride 1 with odd kernels that is symmetric (k // 2).
- ResnetBlock: conv1(silu(GN1(x))) -> conv2(silu(GN2(.))), both 3x3 without bias, GroupNorm with
  32 groups and eps 1e-6. When the channel count changes the official block returns
  `h + nin_shortcut(h)` (a 1x1 conv out -> out on h, no bias) and drops x: the released weights
  were trained that way, so it is reproduced.
- Encoder: conv_in (no bias), per level num_res_blocks blocks then 2x2 average pooling (all but the
  last level), num_res_blocks middle blocks, GN, silu, 1x1 conv_out to z_channels.
- Decoder: 3x3 conv_in, middle blocks, levels coarse to fine with num_res_blocks blocks, then
  nearest 2x + 3x3 `upsample_conv` (all but level 0), GN, silu, 3x3 conv_out to RGB.
- Codebook: nearest code by squared L2 over raw (not normalised) vectors.

Three modules share these fields (defaults: the released `maskgit-vqgan-imagenet-f16-256.bin`):
- `MaskGitVQGAN`: params {encoder, decoder, quantize}, the released state dict's layout.
- `MaskGitVQGANEncoder`: {encoder, quantize}, proxy codes only.
- `MaskGitVQGANDecoder`: {pixel_decoder, pixel_quantize}, the layout of the copy TiTok fine-tunes.
`encoder_params` / `pixel_decoder_params` cut the full params into the latter two.

Submodule names mirror the torch modules so `tools/convert_maskgit_vqgan.py` is a rename:
`encoder/down_2_block_0/nin_shortcut` is `encoder.down.2.block.0.nin_shortcut`, `decoder/mid_1` is
`decoder.mid.1`, `decoder/up_3_upsample_conv` is `decoder.up.3.upsample_conv`, and
`quantize/embedding` is `quantize.embedding.weight`.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from titok_var.quantizers.vector_quantizer import nearest_code, uniform_init
from titok_var.models import torch_layers
from titok_var.sharding import logical

Dtype = Any

NORM_EPS = 1e-6
NORM_GROUPS = 32

# The released tokenizer: 256 px images -> 16 x 16 codes out of 1024.
MASKGIT_VQGAN_F16_256 = {
    "hidden_channels": 128,
    "channel_mult": (1, 1, 2, 2, 4),
    "num_res_blocks": 2,
    "z_channels": 256,
    "codebook_size": 1024,
    "image_size": 256,
}
# The same network and weights run on 512 px images (it is fully convolutional): 32 x 32 codes,
# the proxy targets of our 512 px TiTok recipe (the paper does not say how it made its own).
MASKGIT_VQGAN_F16_512 = dict(MASKGIT_VQGAN_F16_256, image_size=512)
# For tests: 32 px -> 16 x 16 codes, one pooling step, a channel change (nin_shortcut) both ways.
MASKGIT_VQGAN_TINY = {
    "hidden_channels": 32,
    "channel_mult": (1, 2),
    "num_res_blocks": 1,
    "z_channels": 32,
    "codebook_size": 64,
    "image_size": 32,
}


def conv(features: int, name: str, *, kernel: int, use_bias: bool, axis, dtype):
    """Conv2dSame at stride 1: TF SAME puts the floor half of k - 1 on top/left."""
    total = kernel - 1
    pad = (total // 2, total - total // 2)
    return torch_layers.conv(features, name, axis=axis, dtype=dtype, kernel=kernel, padding=(pad, pad),
                             use_bias=use_bias)


def group_norm(name: str, *, groups: int, axis, dtype):
    return torch_layers.group_norm(name, groups=groups, axis=axis, dtype=dtype, epsilon=NORM_EPS)


def average_pool_2x(x):
    """torch avg_pool2d(kernel 2, stride 2) on NHWC with even H, W."""
    batch, height, width, channels = x.shape
    return x.reshape(batch, height // 2, 2, width // 2, 2, channels).mean(axis=(2, 4))


def nearest_upsample_2x(x):
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)

# TiTok `model.pixel_decoder` names -> VQGAN decoder shape (the released stage-2 models use f16_256).
PIXEL_DECODER_PRESETS = {"f16_256": MASKGIT_VQGAN_F16_256, "f16_512": MASKGIT_VQGAN_F16_512,
                         "tiny": MASKGIT_VQGAN_TINY}


class ResnetBlock(nn.Module):
    """h = conv2(silu(GN2(conv1(silu(GN1(x)))))); h + x, or h + nin_shortcut(h) if channels change."""

    out_channels: int
    norm_groups: int = NORM_GROUPS
    channel_axis: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        io = {"axis": self.channel_axis, "dtype": self.dtype}
        h = group_norm("norm1", groups=self.norm_groups, **io)(x)
        h = conv(self.out_channels, "conv1", kernel=3, use_bias=False, **io)(nn.silu(h))
        h = group_norm("norm2", groups=self.norm_groups, **io)(h)
        h = conv(self.out_channels, "conv2", kernel=3, use_bias=False, **io)(nn.silu(h))
        if x.shape[-1] != self.out_channels:
            # Official quirk: the shortcut reads h, not x; the block input is discarded.
            return h + conv(self.out_channels, "nin_shortcut", kernel=1, use_bias=False, **io)(h)
        return h + x


class Encoder(nn.Module):
    """Images (B, H, W, 3) -> latents (B, H / f, W / f, z_channels), f = 2^(levels - 1)."""

    hidden_channels: int = 128
    channel_mult: Sequence[int] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    norm_groups: int = NORM_GROUPS
    channel_axis: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images):
        block = {"norm_groups": self.norm_groups, "channel_axis": self.channel_axis, "dtype": self.dtype}
        io = {"axis": self.channel_axis, "dtype": self.dtype}
        x = logical.constrain(images.astype(self.dtype), ("act_batch", None, None, None))
        h = conv(self.hidden_channels, "conv_in", kernel=3, use_bias=False, **io)(x)
        last = len(self.channel_mult) - 1
        for level, mult in enumerate(self.channel_mult):
            for j in range(self.num_res_blocks):
                h = ResnetBlock(self.hidden_channels * mult, name=f"down_{level}_block_{j}", **block)(h)
            if level != last:
                h = average_pool_2x(h)
        for j in range(self.num_res_blocks):
            h = ResnetBlock(h.shape[-1], name=f"mid_{j}", **block)(h)
        h = group_norm("norm_out", groups=self.norm_groups, **io)(h)
        return conv(self.z_channels, "conv_out", kernel=1, use_bias=True, **io)(nn.silu(h))


class Decoder(nn.Module):
    """Latents (B, h, w, z_channels) -> images (B, h * f, w * f, 3), not clamped."""

    hidden_channels: int = 128
    channel_mult: Sequence[int] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    out_channels: int = 3
    norm_groups: int = NORM_GROUPS
    channel_axis: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z):
        block = {"norm_groups": self.norm_groups, "channel_axis": self.channel_axis, "dtype": self.dtype}
        io = {"axis": self.channel_axis, "dtype": self.dtype}
        z = logical.constrain(z.astype(self.dtype), ("act_batch", None, None, None))
        h = conv(self.hidden_channels * self.channel_mult[-1], "conv_in", kernel=3, use_bias=True, **io)(z)
        for j in range(self.num_res_blocks):
            h = ResnetBlock(h.shape[-1], name=f"mid_{j}", **block)(h)
        for level in reversed(range(len(self.channel_mult))):
            channels = self.hidden_channels * self.channel_mult[level]
            for j in range(self.num_res_blocks):
                h = ResnetBlock(channels, name=f"up_{level}_block_{j}", **block)(h)
            if level != 0:
                h = nearest_upsample_2x(h)
                h = conv(channels, f"up_{level}_upsample_conv", kernel=3, use_bias=True, **io)(h)
        h = group_norm("norm_out", groups=self.norm_groups, **io)(h)
        # 3 output channels never divide a mesh axis: always replicated.
        return conv(self.out_channels, "conv_out", kernel=3, use_bias=True, axis=None, dtype=self.dtype)(nn.silu(h))


class Codebook(nn.Module):
    """The quantizer's `embedding` (codebook_size, code_dim), float32; torch init U(+-1/K)."""

    codebook_size: int
    code_dim: int

    def setup(self):
        limit = 1.0 / self.codebook_size
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(uniform_init(-limit, limit), ("codebook", "code_dim")),
            (self.codebook_size, self.code_dim),
            jnp.float32,
        )

    def nearest(self, z):
        """(..., code_dim) -> int32 ids of the nearest code (squared L2, as the official addmm)."""
        return nearest_code(z.astype(jnp.float32), self.embedding)

    def lookup(self, codes):
        return jnp.take(self.embedding, codes, axis=0)

    def mix(self, probabilities):
        """Expected code under per-position probabilities (..., K) -> (..., code_dim)."""
        return jnp.einsum("...k,kc->...c", probabilities.astype(jnp.float32), self.embedding)

    def __call__(self, codes):
        return self.lookup(codes)


class _Fields(nn.Module):
    """Configuration shared by the three modules, with the input checks that depend on it."""

    hidden_channels: int = 128
    channel_mult: Sequence[int] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    codebook_size: int = 1024
    image_size: int = 256
    norm_groups: int = NORM_GROUPS
    channel_axis: str | None = None
    dtype: Dtype = jnp.float32

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.downsample_factor

    def _validated_cnn_fields(self) -> dict:
        for mult in self.channel_mult:
            if (self.hidden_channels * mult) % self.norm_groups:
                raise ValueError(
                    f"channel count {self.hidden_channels * mult} (hidden_channels={self.hidden_channels} x "
                    f"{mult}) is not divisible by norm_groups={self.norm_groups}"
                )
        if self.image_size % self.downsample_factor:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by the downsampling factor "
                f"{self.downsample_factor} of channel_mult={tuple(self.channel_mult)}"
            )
        return {
            "hidden_channels": self.hidden_channels,
            "channel_mult": tuple(self.channel_mult),
            "num_res_blocks": self.num_res_blocks,
            "norm_groups": self.norm_groups,
            "channel_axis": self.channel_axis,
            "dtype": self.dtype,
        }

    def _check_images(self, images):
        size = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (size, size, 3):
            raise ValueError(
                f"MaskGIT-VQGAN expects images of shape (batch, {size}, {size}, 3) in [0, 1], got "
                f"{tuple(images.shape)}"
            )

    def _check_grid(self, what: str, array, channels: int):
        grid = self.latent_size
        if array.ndim != 4 or tuple(array.shape[1:]) != (grid, grid, channels):
            raise ValueError(
                f"MaskGIT-VQGAN expects {what} of shape (batch, {grid}, {grid}, {channels}), got "
                f"{tuple(array.shape)}"
            )

    def _code_grid(self, codes):
        """(B, h, w) or the official flat (B, h * w) ids -> (B, h, w)."""
        grid = self.latent_size
        if codes.ndim == 2 and codes.shape[1] == grid * grid:
            codes = codes.reshape(codes.shape[0], grid, grid)
        if codes.ndim != 3 or tuple(codes.shape[1:]) != (grid, grid):
            raise ValueError(
                f"MaskGIT-VQGAN expects codes of shape (batch, {grid}, {grid}) or (batch, {grid * grid}), "
                f"got {tuple(codes.shape)}"
            )
        if not jnp.issubdtype(codes.dtype, jnp.integer):
            raise ValueError(f"codes must be integer ids in [0, {self.codebook_size}), got dtype {codes.dtype}")
        return codes


class _EncodeMethods(_Fields):
    """Image -> codes methods; subclasses provide `_encoder_net` and `_codebook`."""

    def encode_latents(self, images):
        """Images (B, S, S, 3) in [0, 1] -> continuous encoder output (B, h, w, z_channels) float32."""
        self._check_images(images)
        return self._encoder_net(images).astype(jnp.float32)

    def encode(self, images):
        """Images (B, S, S, 3) in [0, 1] -> codes (B, h, w) int32 (TiTok's proxy codes)."""
        return self._codebook.nearest(self.encode_latents(images))


class _DecodeMethods(_Fields):
    """Codes -> image methods; subclasses provide `_decoder_net` and `_codebook`."""

    def decode_latents(self, latents):
        """Code vectors (B, h, w, z_channels) -> images (B, S, S, 3), not clamped."""
        self._check_grid("latents", latents, self.z_channels)
        return self._decoder_net(latents).astype(jnp.float32)

    def decode_codes(self, codes):
        """Codes (B, h, w) or (B, h * w) -> images clamped to [0, 1] (PretrainedTokenizer.decode)."""
        latents = self._codebook.lookup(self._code_grid(codes))
        return jnp.clip(self.decode_latents(latents), 0.0, 1.0)

    def decode_soft(self, probabilities):
        """Per-position probabilities over the codes (B, h, w, K) -> images, not clamped.

        TiTok stage 2: einsum('nchw,cd->ndhw', softmax(logits), codebook) then the decoder. The
        softmax is the caller's (TiTok applies it to its logits); nothing is normalised here.
        """
        self._check_grid("code probabilities", probabilities, self.codebook_size)
        return self.decode_latents(self._codebook.mix(probabilities))


class MaskGitVQGAN(_EncodeMethods, _DecodeMethods):
    """The released tokenizer: params {encoder, decoder, quantize}. `__call__` reconstructs.

    Methods (`model.apply(variables, x, method=...)`): `encode`, `encode_latents`, `decode_codes`,
    `decode_soft`, `decode_latents`.
    """

    def setup(self):
        cnn = self._validated_cnn_fields()
        self.encoder = Encoder(z_channels=self.z_channels, **cnn)
        self.decoder = Decoder(**cnn)
        self.quantize = Codebook(self.codebook_size, self.z_channels)

    @property
    def _encoder_net(self):
        return self.encoder

    @property
    def _decoder_net(self):
        return self.decoder

    @property
    def _codebook(self):
        return self.quantize

    def __call__(self, images):
        """Images -> their reconstruction through the nearest codes, clamped to [0, 1]."""
        return self.decode_codes(self.encode(images))


class MaskGitVQGANEncoder(_EncodeMethods):
    """Encoder + codebook only, params {encoder, quantize}: `__call__` = `encode` (proxy codes)."""

    def setup(self):
        self.encoder = Encoder(z_channels=self.z_channels, **self._validated_cnn_fields())
        self.quantize = Codebook(self.codebook_size, self.z_channels)

    @property
    def _encoder_net(self):
        return self.encoder

    @property
    def _codebook(self):
        return self.quantize

    def __call__(self, images):
        return self.encode(images)


class MaskGitVQGANDecoder(_DecodeMethods):
    """Decoder + codebook under TiTok's names, params {pixel_decoder, pixel_quantize}.

    `__call__` = `decode_soft` (the stage-2 path); `decode_codes` / `decode_latents` as above.
    """

    def setup(self):
        self.pixel_decoder = Decoder(**self._validated_cnn_fields())
        self.pixel_quantize = Codebook(self.codebook_size, self.z_channels)

    @property
    def _decoder_net(self):
        return self.pixel_decoder

    @property
    def _codebook(self):
        return self.pixel_quantize

    def __call__(self, probabilities):
        return self.decode_soft(probabilities)


def example_inputs(model: _Fields):
    """A batch of one zero input that `model.init` accepts (for init / jax.eval_shape)."""
    if isinstance(model, MaskGitVQGANDecoder):
        grid = model.latent_size
        return jnp.zeros((1, grid, grid, model.codebook_size), jnp.float32)
    return jnp.zeros((1, model.image_size, model.image_size, 3), jnp.float32)


def _require(params, keys, what):
    missing = [k for k in keys if k not in params]
    if missing:
        raise KeyError(f"{what} needs params {list(keys)}, missing {missing} (got {sorted(params)})")


def encoder_params(params) -> dict:
    """`MaskGitVQGAN` params -> `MaskGitVQGANEncoder` params (shared arrays, no copy)."""
    _require(params, ("encoder", "quantize"), "MaskGitVQGANEncoder")
    return {"encoder": params["encoder"], "quantize": params["quantize"]}


def pixel_decoder_params(params) -> dict:
    """`MaskGitVQGAN` params -> `MaskGitVQGANDecoder` params: the official stage-2 init, which loads
    every non-encoder key of the MaskGIT checkpoint under the `pixel_` prefix."""
    _require(params, ("decoder", "quantize"), "MaskGitVQGANDecoder")
    return {"pixel_decoder": params["decoder"], "pixel_quantize": params["quantize"]}
