"""VAR's multi-scale VQVAE (`vae_ch160v4096z32`): LDM "vq-f16" CNN encoder/decoder around the
multi-scale residual quantizer (VAR paper Sec. 3.2).

Layout follows the released model so its weights convert 1:1 (`titok_var.tools.convert_var`):
- GroupNorm(32 groups, eps 1e-6) and SiLU before every conv of a ResnetBlock; a 1x1
  `nin_shortcut` only where the channel count changes.
- Single-head self-attention (scale C^-0.5) after each res block of the lowest-resolution level
  and in the middle; q, k, v come from one 1x1 conv (here a Dense) in that order.
- Downsampling zero-pads one pixel on the right and bottom only, then a stride-2 3x3 conv
  without padding; upsampling is nearest 2x followed by a 3x3 conv.
- The decoder has num_res_blocks + 1 blocks per level and runs its levels from coarse to fine.
- quant_conv / post_quant_conv: 3x3 convs code_dim -> code_dim around the quantizer.

Images are NHWC in [-1, 1], the range the released VQVAE expects (decoded images are clamped to
[-1, 1]); with `unit_range_pixels=True` inputs and outputs are in [0, 1] instead (the data
pipeline's range) and mapped to [-1, 1] inside. With ch_mult (1, 1, 2, 2, 4) the latent is 16x
smaller than the image: 256 px -> 16x16x32 for the schedule (1, 2, 3, 4, 5, 6, 8, 10, 13, 16).

Parameter names mirror the torch modules: `encoder/down_2_block_0/nin_shortcut` is
`encoder.down.2.block.0.nin_shortcut`, `decoder/mid_attn_1/qkv` is `decoder.mid.attn_1.qkv`.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from titok_var.quantizers.multiscale import (
    VAR_PATCH_NUMS_256,
    MultiScaleResidualQuantizer,
    token_count,
    torch_default_conv_init,
)
from titok_var.models.torch_layers import conv, group_norm
from titok_var.sharding import logical

Dtype = Any



class ResnetBlock(nn.Module):
    """x -> nin_shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x))))))."""

    out_channels: int
    norm_groups: int = 32
    channel_axis: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        common = {"axis": self.channel_axis, "dtype": self.dtype}
        h = group_norm("norm1", groups=self.norm_groups, **common)(x)
        h = conv(self.out_channels, "conv1", **common)(nn.silu(h))
        h = group_norm("norm2", groups=self.norm_groups, **common)(h)
        h = conv(self.out_channels, "conv2", **common)(nn.silu(h))
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, "nin_shortcut", kernel=1, padding=0, **common)(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual connection."""

    norm_groups: int = 32
    channel_axis: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        batch, height, width, channels = x.shape

        def dense(features, name):
            return nn.Dense(
                features,
                dtype=self.dtype,
                kernel_init=nn.with_logical_partitioning(torch_default_conv_init(), (None, self.channel_axis)),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (self.channel_axis,)),
                name=name,
            )

        h = group_norm("norm", groups=self.norm_groups, axis=self.channel_axis, dtype=self.dtype)(x)
        qkv = dense(3 * channels, "qkv")(h.reshape(batch, height * width, channels))
        q, k, v = jnp.split(qkv, 3, axis=-1)
        logits = jnp.einsum("bic,bjc->bij", q, k).astype(jnp.float32) * channels**-0.5
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bij,bjc->bic", weights, v)
        out = dense(channels, "proj_out")(out)
        return x + out.reshape(batch, height, width, channels)


class Downsample(nn.Module):
    """Zero-pad right and bottom by one, then a 3x3 stride-2 conv without padding (H -> H/2)."""

    channel_axis: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return conv(x.shape[-1], "conv", axis=self.channel_axis, dtype=self.dtype, strides=2, padding=0)(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 conv."""

    channel_axis: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return conv(x.shape[-1], "conv", axis=self.channel_axis, dtype=self.dtype)(x)


class Encoder(nn.Module):
    """Image (B, H, W, 3) -> latent (B, H/2^(n-1), W/2^(n-1), z_channels), n = len(ch_mult)."""

    ch: int = 160
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 32
    using_sa: bool = True
    using_mid_sa: bool = True
    norm_groups: int = 32
    channel_axis: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        common = {"norm_groups": self.norm_groups, "channel_axis": self.channel_axis, "dtype": self.dtype}
        io = {"axis": self.channel_axis, "dtype": self.dtype}
        x = logical.constrain(x.astype(self.dtype), ("act_batch", None, None, None))
        h = conv(self.ch, "conv_in", **io)(x)
        last = len(self.ch_mult) - 1
        for level, mult in enumerate(self.ch_mult):
            for j in range(self.num_res_blocks):
                h = ResnetBlock(self.ch * mult, name=f"down_{level}_block_{j}", **common)(h)
                if level == last and self.using_sa:
                    h = AttnBlock(name=f"down_{level}_attn_{j}", **common)(h)
            if level != last:
                h = Downsample(self.channel_axis, self.dtype, name=f"down_{level}_downsample")(h)
        channels = h.shape[-1]
        h = ResnetBlock(channels, name="mid_block_1", **common)(h)
        if self.using_mid_sa:
            h = AttnBlock(name="mid_attn_1", **common)(h)
        h = ResnetBlock(channels, name="mid_block_2", **common)(h)
        h = group_norm("norm_out", groups=self.norm_groups, **io)(h)
        return conv(self.z_channels, "conv_out", **io)(nn.silu(h))


class Decoder(nn.Module):
    """Latent (B, h, w, z_channels) -> image (B, h*2^(n-1), w*2^(n-1), 3), not clamped."""

    ch: int = 160
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    out_channels: int = 3
    using_sa: bool = True
    using_mid_sa: bool = True
    norm_groups: int = 32
    channel_axis: str | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z):
        common = {"norm_groups": self.norm_groups, "channel_axis": self.channel_axis, "dtype": self.dtype}
        io = {"axis": self.channel_axis, "dtype": self.dtype}
        z = logical.constrain(z.astype(self.dtype), ("act_batch", None, None, None))
        last = len(self.ch_mult) - 1
        h = conv(self.ch * self.ch_mult[last], "conv_in", **io)(z)
        channels = h.shape[-1]
        h = ResnetBlock(channels, name="mid_block_1", **common)(h)
        if self.using_mid_sa:
            h = AttnBlock(name="mid_attn_1", **common)(h)
        h = ResnetBlock(channels, name="mid_block_2", **common)(h)
        for level in reversed(range(len(self.ch_mult))):
            for j in range(self.num_res_blocks + 1):
                h = ResnetBlock(self.ch * self.ch_mult[level], name=f"up_{level}_block_{j}", **common)(h)
                if level == last and self.using_sa:
                    h = AttnBlock(name=f"up_{level}_attn_{j}", **common)(h)
            if level != 0:
                h = Upsample(self.channel_axis, self.dtype, name=f"up_{level}_upsample")(h)
        h = group_norm("norm_out", groups=self.norm_groups, **io)(h)
        # 3 output channels never divide a mesh axis: always replicated.
        return conv(self.out_channels, "conv_out", axis=None, dtype=self.dtype)(nn.silu(h))


class VQVAE(nn.Module):
    """VAR's VQVAE: image <-> multi-scale token maps, plus the VAR-side helpers.

    Defaults are the released `vae_ch160v4096z32` at 256 px. Methods (use with
    `model.apply(variables, ..., method=...)`; initialise through `__call__`):
    - `images_to_indices(images)`: list of (B, p, p) int32 token maps, coarse to fine.
    - `indices_to_fhat(indices)` / `fhat_to_images(f_hat)` / `indices_to_images(indices)`.
    - `__call__(images)`: (reconstruction, aux with the quantizer losses), for training.
    - `indices_to_var_input(indices)`: (B, L - 1, code_dim) teacher-forcing input of VAR.
    - `next_autoregressive_input(si, f_hat, h)`: one sampling step, (f_hat, next input map).

    `channel_axis`: logical axis name for conv/norm output channels (None replicates every
    parameter; "embed" FSDP-shards them and needs every channel count, e.g. 160*k and 32, to
    divide the mesh axes it maps to). `dtype` is the encoder/decoder compute dtype; quant_conv,
    post_quant_conv and the quantizer always run in float32.
    """

    codebook_size: int = 4096
    code_dim: int = 32
    ch: int = 160
    ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    patch_nums: Sequence[int] = VAR_PATCH_NUMS_256
    beta: float = 0.25
    quant_resi: float = 0.5
    share_quant_resi: int = 4
    using_sa: bool = True
    using_mid_sa: bool = True
    norm_groups: int = 32
    unit_range_pixels: bool = False
    channel_axis: str | None = None
    dtype: Dtype = jnp.float32

    def setup(self):
        for mult in self.ch_mult:
            if (self.ch * mult) % self.norm_groups:
                raise ValueError(
                    f"channel count {self.ch * mult} (ch={self.ch} x {mult}) is not divisible by "
                    f"norm_groups={self.norm_groups}"
                )
        cnn = {
            "ch": self.ch,
            "ch_mult": tuple(self.ch_mult),
            "num_res_blocks": self.num_res_blocks,
            "using_sa": self.using_sa,
            "using_mid_sa": self.using_mid_sa,
            "norm_groups": self.norm_groups,
            "channel_axis": self.channel_axis,
            "dtype": self.dtype,
        }
        self.encoder = Encoder(z_channels=self.code_dim, **cnn)
        self.decoder = Decoder(**cnn)
        self.quant_conv = conv(self.code_dim, None, axis=self.channel_axis, dtype=jnp.float32)
        self.post_quant_conv = conv(self.code_dim, None, axis=self.channel_axis, dtype=jnp.float32)
        self.quantize = MultiScaleResidualQuantizer(
            codebook_size=self.codebook_size,
            code_dim=self.code_dim,
            patch_nums=tuple(int(p) for p in self.patch_nums),
            beta=self.beta,
            quant_resi=self.quant_resi,
            share_quant_resi=self.share_quant_resi,
        )

    # -- sizes --------------------------------------------------------------------------------

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_size(self) -> int:
        return int(self.patch_nums[-1])

    @property
    def image_size(self) -> int:
        return self.latent_size * self.downsample_factor

    @property
    def num_tokens(self) -> int:
        """L = sum p^2 over the scales."""
        return token_count(self.patch_nums)

    def check_images(self, images):
        size = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (size, size, 3):
            raise ValueError(
                f"VQVAE expects images of shape (batch, {size}, {size}, 3) (last scale "
                f"{self.latent_size} x downsampling {self.downsample_factor}), got {tuple(images.shape)}"
            )

    # -- image <-> features -------------------------------------------------------------------

    def encode(self, images):
        """Images -> continuous features f = quant_conv(encoder(x)), (B, h, w, code_dim) float32."""
        self.check_images(images)
        images = jnp.asarray(images)
        if self.unit_range_pixels:
            images = images * 2.0 - 1.0
        h = self.encoder(images).astype(jnp.float32)
        return self.quant_conv(h)

    def decode(self, f_hat):
        """f_hat (B, h, w, code_dim) -> images, not clamped."""
        h = self.post_quant_conv(jnp.asarray(f_hat, jnp.float32))
        images = self.decoder(h).astype(jnp.float32)
        if self.unit_range_pixels:
            images = (images + 1.0) * 0.5
        return images

    def fhat_to_images(self, f_hat):
        """f_hat -> images clamped to the pixel range ([-1, 1], or [0, 1] with unit_range_pixels)."""
        low = 0.0 if self.unit_range_pixels else -1.0
        return jnp.clip(self.decode(f_hat), low, 1.0)

    # -- tokens -------------------------------------------------------------------------------

    def images_to_indices(self, images):
        """Images -> token maps: a list with one (B, p, p) int32 array per scale."""
        return self.quantize.f_to_indices(self.encode(images))

    def images_to_fhat(self, images):
        """Images -> the quantized f_hat (B, h, w, code_dim) after all scales."""
        return self.quantize.f_to_fhats(self.encode(images))[-1]

    def indices_to_fhat(self, indices):
        """Token maps ((B, p, p) or (B, p*p) per scale) -> f_hat (B, h, w, code_dim)."""
        return self.quantize.indices_to_fhat(indices)

    def indices_to_images(self, indices):
        """Token maps -> clamped images."""
        return self.fhat_to_images(self.indices_to_fhat(indices))

    def lookup(self, indices):
        """Token ids (...) -> code vectors (..., code_dim)."""
        return self.quantize.lookup(indices)

    # -- training -----------------------------------------------------------------------------

    def __call__(self, images):
        """Training forward: (reconstruction (not clamped), aux).

        aux holds the quantizer outputs: "indices", "commitment_loss" (beta-weighted),
        "codebook_loss", "quantizer_loss". The decoder sees the straight-through f_hat, so the
        reconstruction loss reaches the encoder.
        """
        f_hat, aux = self.quantize(self.encode(images))
        return self.decode(f_hat), aux

    # -- VAR helpers --------------------------------------------------------------------------

    def indices_to_var_input(self, indices):
        """Teacher-forcing input of the VAR transformer, (B, L - 1, code_dim)."""
        return self.quantize.indices_to_var_input(indices)

    def next_autoregressive_input(self, si: int, f_hat, h):
        """Sampling step for scale si: f_hat += phi(upsample(h)); returns (f_hat, input map of
        scale si + 1 (B, p, p, code_dim)), or (f_hat, f_hat) at the last scale. h is the
        (B, p, p, code_dim) or (B, p*p, code_dim) code map of scale si (e.g. `lookup(ids)`)."""
        return self.quantize.next_autoregressive_input(si, f_hat, h)
