"""Pre-LayerNorm ViT transformer blocks (OpenCLIP layout used by TiTok), with logical axis names.

Every parameter carries logical axis names (embed, mlp, heads, kv) so the sharding rules of the
config place it on the mesh; activations are constrained to (batch, length, embed).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from titok_var.sharding import logical

# TiTok's torch modules use LayerNorm eps 1e-5 and exact (erf) GELU; flax defaults differ.
LAYER_NORM_EPS = 1e-5

Dtype = Any


def dense_init(stddev: float = 0.02):
    return nn.initializers.truncated_normal(stddev)


class LayerNorm(nn.Module):
    """LayerNorm with torch's epsilon, sharded over the embed axis."""

    epsilon: float = LAYER_NORM_EPS
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return nn.LayerNorm(
            epsilon=self.epsilon,
            dtype=self.dtype,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name="norm",
        )(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (no mask, 1/sqrt(d) scale)."""

    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
        head_dim = width // self.num_heads

        def projection(name):
            # Plain Dense over heads * head_dim: one torch Linear per projection in converters.
            out = nn.Dense(
                width,
                dtype=self.dtype,
                kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(), ("embed", "heads")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("heads",)),
                name=name,
            )(x)
            return out.reshape(*x.shape[:-1], self.num_heads, head_dim)

        query, key, value = projection("query"), projection("key"), projection("value")
        attended = jax.nn.dot_product_attention(query, key, value)
        attended = logical.constrain(attended, ("act_batch", "act_length", "act_heads", "act_kv"))
        attended = attended.reshape(*x.shape[:-1], width)
        return nn.Dense(
            width,
            dtype=self.dtype,
            kernel_init=nn.with_logical_partitioning(dense_init(), ("heads", "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name="out",
        )(attended)


class Mlp(nn.Module):
    """Two-layer MLP with exact GELU."""

    hidden_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        h = nn.Dense(
            self.hidden_dim,
            dtype=self.dtype,
            kernel_init=nn.with_logical_partitioning(dense_init(), ("embed", "mlp")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
            name="fc_in",
        )(x)
        h = nn.gelu(h, approximate=False)
        h = logical.constrain(h, ("act_batch", "act_length", "act_mlp"))
        return nn.Dense(
            width,
            dtype=self.dtype,
            kernel_init=nn.with_logical_partitioning(dense_init(), ("mlp", "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name="fc_out",
        )(h)


class ResidualAttentionBlock(nn.Module):
    """x + attn(ln_1(x)); x + mlp(ln_2(x))."""

    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        x = x + SelfAttention(self.num_heads, dtype=self.dtype, name="attn")(
            LayerNorm(dtype=self.dtype, name="ln_1")(x)
        )
        x = x + Mlp(int(width * self.mlp_ratio), dtype=self.dtype, name="mlp")(
            LayerNorm(dtype=self.dtype, name="ln_2")(x)
        )
        return logical.constrain(x, ("act_batch", "act_length", "act_embed"))


class Transformer(nn.Module):
    """A stack of residual attention blocks named block_0 .. block_{depth-1}."""

    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    remat: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        block_cls = nn.remat(ResidualAttentionBlock) if self.remat else ResidualAttentionBlock
        for i in range(self.depth):
            x = block_cls(self.num_heads, self.mlp_ratio, dtype=self.dtype, name=f"block_{i}")(x)
        return x
