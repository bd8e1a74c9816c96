"""TiTok: a ViT that compresses an image into K one-dimensional tokens and decodes them back.

Layout follows the released models (bytedance/1d-tokenizer) so their weights convert 1:1:
encoder sequence [class, patches, latent tokens], decoder sequence [class, mask tokens, latents].
Images are NHWC in [0, 1].
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from titok_var.models.transformer import LayerNorm, Transformer, dense_init
from titok_var.quantizers.vector_quantizer import VectorQuantizer
from titok_var.models.maskgit_vqgan import PIXEL_DECODER_PRESETS, MaskGitVQGANDecoder
from titok_var.sharding import logical

Dtype = Any

# Official sizes of the encoder/decoder ViTs.
VIT_SIZES = {
    "tiny": dict(width=64, depth=2, num_heads=4),
    "small": dict(width=512, depth=8, num_heads=8),
    "base": dict(width=768, depth=12, num_heads=12),
    "large": dict(width=1024, depth=24, num_heads=16),
}
DECODER_HEADS = ("pixels", "proxy_codes")


def embedding_param(module: nn.Module, name: str, shape, names):
    width = shape[-1]
    init = nn.initializers.normal(stddev=width**-0.5)
    return module.param(name, nn.with_logical_partitioning(init, names), shape, jnp.float32)


def pixel_shuffle(x, patch_size: int):
    """(B, g, g, p*p*3) with channel order (p1, p2, c) -> (B, g*p, g*p, 3)."""
    batch, grid_h, grid_w, _ = x.shape
    x = x.reshape(batch, grid_h, grid_w, patch_size, patch_size, -1)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, grid_h * patch_size, grid_w * patch_size, -1)


def proxy_code_grid(model_config) -> int:
    """Side of the proxy-code grid TiTok's proxy head predicts (patch grid x codes per patch side)."""
    return model_config.image_size // model_config.patch_size * model_config.get("proxy_codes_per_side", 1)


class TiTokEncoder(nn.Module):
    image_size: int
    patch_size: int
    num_latent_tokens: int
    width: int
    depth: int
    num_heads: int
    token_size: int
    mlp_ratio: float = 4.0
    legacy_reshape: bool = False
    remat: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images, latent_tokens):
        batch = images.shape[0]
        grid = self.image_size // self.patch_size
        patches = nn.Conv(
            self.width,
            (self.patch_size, self.patch_size),
            strides=(self.patch_size, self.patch_size),
            padding="VALID",
            dtype=self.dtype,
            kernel_init=nn.with_logical_partitioning(dense_init(), (None, None, None, "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name="patch_embed",
        )(images.astype(self.dtype))
        patches = patches.reshape(batch, grid * grid, self.width)

        class_embedding = embedding_param(self, "class_embedding", (1, self.width), (None, "embed"))
        positional = embedding_param(
            self, "positional_embedding", (grid * grid + 1, self.width), ("length", "embed")
        )
        latent_positional = embedding_param(
            self, "latent_token_positional_embedding", (self.num_latent_tokens, self.width), ("length", "embed")
        )
        cls = jnp.broadcast_to(class_embedding, (batch, 1, self.width)).astype(self.dtype)
        x = jnp.concatenate([cls, patches], axis=1) + positional.astype(self.dtype)
        latents = jnp.broadcast_to(
            (latent_tokens + latent_positional).astype(self.dtype), (batch, self.num_latent_tokens, self.width)
        )
        x = jnp.concatenate([x, latents], axis=1)
        x = logical.constrain(x, ("act_batch", "act_length", "act_embed"))

        x = LayerNorm(dtype=self.dtype, name="ln_pre")(x)
        x = Transformer(self.depth, self.num_heads, self.mlp_ratio, self.remat, self.dtype, name="transformer")(x)
        tokens = LayerNorm(dtype=self.dtype, name="ln_post")(x[:, grid * grid + 1 :])

        if self.legacy_reshape:
            # The released S/B/L models reinterpret (B, N, D) memory as (B, D, N) before the 1x1
            # conv; reproduced so their weights give the same tokens.
            tokens = tokens.reshape(batch, self.width, self.num_latent_tokens).transpose(0, 2, 1)
        return nn.Dense(
            self.token_size,
            dtype=self.dtype,
            kernel_init=nn.with_logical_partitioning(dense_init(), ("embed", "code_dim")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("code_dim",)),
            name="conv_out",
        )(tokens).astype(jnp.float32)


class TiTokDecoder(nn.Module):
    image_size: int
    patch_size: int
    num_latent_tokens: int
    width: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    head: str = "pixels"
    proxy_codebook_size: int = 1024
    proxy_codes_per_side: int = 1
    remat: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, quantized):
        batch, num_tokens, _ = quantized.shape
        grid = self.image_size // self.patch_size
        x = nn.Dense(
            self.width,
            dtype=self.dtype,
            kernel_init=nn.with_logical_partitioning(dense_init(), ("code_dim", "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name="decoder_embed",
        )(quantized.astype(self.dtype))

        class_embedding = embedding_param(self, "class_embedding", (1, self.width), (None, "embed"))
        positional = embedding_param(
            self, "positional_embedding", (grid * grid + 1, self.width), ("length", "embed")
        )
        mask_token = embedding_param(self, "mask_token", (1, 1, self.width), (None, None, "embed"))
        latent_positional = embedding_param(
            self, "latent_token_positional_embedding", (self.num_latent_tokens, self.width), ("length", "embed")
        )
        masks = jnp.broadcast_to(mask_token, (1, grid * grid, self.width))
        queries = jnp.concatenate([class_embedding[None], masks], axis=1) + positional
        queries = jnp.broadcast_to(queries.astype(self.dtype), (batch, grid * grid + 1, self.width))
        x = x + latent_positional[:num_tokens].astype(self.dtype)
        x = jnp.concatenate([queries, x], axis=1)
        x = logical.constrain(x, ("act_batch", "act_length", "act_embed"))

        x = LayerNorm(dtype=self.dtype, name="ln_pre")(x)
        x = Transformer(self.depth, self.num_heads, self.mlp_ratio, self.remat, self.dtype, name="transformer")(x)
        x = LayerNorm(dtype=self.dtype, name="ln_post")(x[:, 1 : grid * grid + 1])
        x = x.reshape(batch, grid, grid, self.width)

        if self.head == "proxy_codes":
            # Logits over the MaskGIT-VQGAN codebook ("legacy" head of the released models).
            x = nn.Dense(
                2 * self.width,
                dtype=self.dtype,
                kernel_init=nn.with_logical_partitioning(dense_init(), ("embed", "mlp")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
                name="ffn_0",
            )(x)
            x = jnp.tanh(x)
            x = nn.Dense(
                self.proxy_codebook_size * self.proxy_codes_per_side**2,
                dtype=self.dtype,
                kernel_init=nn.with_logical_partitioning(dense_init(), ("mlp", "vocab")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                name="ffn_2",
            )(x)
            # r x r codes per patch (our 512 px recipe: patch 32 over the VQGAN's 16 px codes).
            return pixel_shuffle(x, self.proxy_codes_per_side).astype(jnp.float32)
        if self.head != "pixels":
            raise ValueError(f"unknown decoder head {self.head!r}; expected one of {DECODER_HEADS}")
        x = nn.Dense(
            self.patch_size * self.patch_size * 3,
            dtype=self.dtype,
            kernel_init=nn.with_logical_partitioning(dense_init(), ("embed", None)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
            name="ffn_0",
        )(x)
        x = pixel_shuffle(x, self.patch_size)
        x = nn.Conv(
            3,
            (3, 3),
            padding=1,
            dtype=self.dtype,
            kernel_init=nn.with_logical_partitioning(dense_init(), (None, None, None, None)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
            name="conv_out",
        )(x)
        return x.astype(jnp.float32)


class TiTok(nn.Module):
    """Image (B, H, W, 3) in [0, 1] -> K discrete tokens -> image (or proxy-code logits)."""

    image_size: int = 256
    patch_size: int = 16
    num_latent_tokens: int = 32
    encoder_size: str = "large"
    decoder_size: str = "large"
    codebook_size: int = 4096
    token_size: int = 12
    use_l2_norm: bool = True
    commitment_cost: float = 0.25
    legacy_reshape: bool = False
    decoder_head: str = "pixels"
    proxy_codebook_size: int = 1024
    # Proxy codes per patch side: 1 for the released 256 px models (patch 16 = the VQGAN's stride);
    # 2 for patch 32 at 512 px, where the VQGAN gives a 2x finer code grid than TiTok's patches.
    proxy_codes_per_side: int = 1
    mlp_ratio: float = 4.0
    # Work in [-1, 1] inside the network (inputs 2x-1, pixel outputs (y+1)/2). The released models
    # use [0, 1] directly; centred pixels let small models leave the mean-image plateau quickly.
    symmetric_pixels: bool = False
    # Proxy-code head only: a frozen-then-fine-tuned MaskGIT-VQGAN decoder ("pixel_decoder" and
    # "pixel_quantize" of the released stage-2 models) turning code probabilities into pixels.
    # "" = none, else a preset of models/maskgit_vqgan.PIXEL_DECODER_PRESETS.
    pixel_decoder: str = ""
    remat: bool = False
    dtype: Dtype = jnp.float32

    def setup(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for which, size in (("encoder_size", self.encoder_size), ("decoder_size", self.decoder_size)):
            if size not in VIT_SIZES:
                raise ValueError(f"unknown {which} {size!r}; expected one of {sorted(VIT_SIZES)}")
        enc, dec = VIT_SIZES[self.encoder_size], VIT_SIZES[self.decoder_size]
        self.latent_tokens = embedding_param(
            self, "latent_tokens", (self.num_latent_tokens, enc["width"]), ("length", "embed")
        )
        self.encoder = TiTokEncoder(
            self.image_size, self.patch_size, self.num_latent_tokens, token_size=self.token_size,
            mlp_ratio=self.mlp_ratio, legacy_reshape=self.legacy_reshape, remat=self.remat,
            dtype=self.dtype, **enc,
        )
        self.quantize = VectorQuantizer(
            self.codebook_size, self.token_size, self.commitment_cost, self.use_l2_norm
        )
        self.decoder = TiTokDecoder(
            self.image_size, self.patch_size, self.num_latent_tokens, mlp_ratio=self.mlp_ratio,
            head=self.decoder_head, proxy_codebook_size=self.proxy_codebook_size,
            proxy_codes_per_side=self.proxy_codes_per_side, remat=self.remat,
            dtype=self.dtype, **dec,
        )
        if self.pixel_decoder:
            if self.decoder_head != "proxy_codes":
                raise ValueError("pixel_decoder needs decoder_head='proxy_codes' (it decodes code probabilities)")
            preset = PIXEL_DECODER_PRESETS.get(self.pixel_decoder)
            if preset is None:
                raise ValueError(f"unknown pixel_decoder {self.pixel_decoder!r}; expected one of "
                                 f"{sorted(PIXEL_DECODER_PRESETS)}")
            if preset["codebook_size"] != self.proxy_codebook_size:
                raise ValueError(f"pixel_decoder {self.pixel_decoder!r} has {preset['codebook_size']} codes, "
                                 f"proxy_codebook_size is {self.proxy_codebook_size}")
            self.pixel_vqgan = MaskGitVQGANDecoder(dtype=self.dtype, **preset)

    def check_images(self, images):
        expected = (self.image_size, self.image_size, 3)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"TiTok expects images of shape (batch, {self.image_size}, {self.image_size}, 3), "
                f"got {tuple(images.shape)}"
            )

    def encode(self, images):
        """Returns the straight-through quantized tokens (B, K, C) and the quantizer outputs."""
        self.check_images(images)
        if self.symmetric_pixels:
            images = images * 2.0 - 1.0
        return self.quantize(self.encoder(images, self.latent_tokens))

    def decode(self, quantized):
        """Pixels in [0, 1] (not clipped) or proxy-code logits, depending on the decoder head."""
        output = self.decoder(quantized)
        if self.symmetric_pixels and self.decoder_head == "pixels":
            output = (output + 1.0) * 0.5
        return output

    def decode_tokens(self, indices):
        """Token ids (B, K) -> decoder output."""
        return self.decode(self.quantize.lookup(indices))

    def proxy_logits_to_pixels(self, logits):
        """Stage-2 path: softmax over the proxy codes, mixed codebook vectors, VQGAN decoder ->
        pixels in [0, 1] (not clipped)."""
        if not self.pixel_decoder:
            raise ValueError("this TiTok has no pixel_decoder; set model.pixel_decoder")
        return self.pixel_vqgan.decode_soft(jax.nn.softmax(logits.astype(jnp.float32), axis=-1))

    def decode_pixels(self, quantized):
        """Pixels in [0, 1] (not clipped) from either head (the proxy head needs pixel_decoder)."""
        output = self.decode(quantized)
        if self.decoder_head == "pixels":
            return output
        return self.proxy_logits_to_pixels(output)

    def decode_tokens_to_pixels(self, indices):
        """Token ids (B, K) -> pixels in [0, 1] (not clipped), whatever the head."""
        return self.decode_pixels(self.quantize.lookup(indices))

    def __call__(self, images):
        quantized, aux = self.encode(images)
        output = self.decode(quantized)
        if self.pixel_decoder and self.is_initializing():
            self.proxy_logits_to_pixels(output)  # create the pixel decoder's parameters
        return output, aux
