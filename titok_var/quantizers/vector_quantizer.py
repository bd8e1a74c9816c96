"""Vector quantizer with an optional l2-normalised codebook (TiTok, VQGAN-style losses).

Runs in float32 whatever the compute dtype: distances between nearly equal codes need it.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp


def l2_normalize(x, axis=-1, eps=1e-12):
    # Same clamp as torch.nn.functional.normalize.
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, eps)


def nearest_code(z, codebook):
    """Index of the codebook row closest (squared euclidean) to each vector of z (..., C)."""
    distances = (
        jnp.sum(jnp.square(z), axis=-1, keepdims=True)
        + jnp.sum(jnp.square(codebook), axis=-1)
        - 2.0 * jnp.einsum("...c,kc->...k", z, codebook)
    )
    return jnp.argmin(distances, axis=-1).astype(jnp.int32)


def quantizer_losses(z, quantized, commitment_cost: float):
    """Commitment pulls z to its code, the codebook term pulls codes to z."""
    commitment = commitment_cost * jnp.mean(jnp.square(jax.lax.stop_gradient(quantized) - z))
    codebook = jnp.mean(jnp.square(quantized - jax.lax.stop_gradient(z)))
    return commitment, codebook


def straight_through(z, quantized):
    """Forward value of `quantized`, gradient of the identity with respect to `z`."""
    return z + jax.lax.stop_gradient(quantized - z)


class VectorQuantizer(nn.Module):
    """Maps (..., C) vectors to their nearest of `codebook_size` learned codes."""

    codebook_size: int
    code_dim: int
    commitment_cost: float = 0.25
    use_l2_norm: bool = True

    def setup(self):
        limit = 1.0 / self.codebook_size
        self.codebook = self.param(
            "codebook",
            nn.with_logical_partitioning(
                uniform_init(-limit, limit),
                ("codebook", "code_dim"),
            ),
            (self.codebook_size, self.code_dim),
            jnp.float32,
        )

    def normalized_codebook(self):
        return l2_normalize(self.codebook) if self.use_l2_norm else self.codebook

    def __call__(self, z):
        z = z.astype(jnp.float32)
        if self.use_l2_norm:
            z = l2_normalize(z)
        codebook = self.normalized_codebook()
        indices = nearest_code(z, codebook)
        quantized = codebook[indices]
        commitment, codebook_loss = quantizer_losses(z, quantized, self.commitment_cost)
        aux = {
            "indices": indices,
            "commitment_loss": commitment,
            "codebook_loss": codebook_loss,
            "quantizer_loss": commitment + codebook_loss,
        }
        return straight_through(z, quantized), aux

    def lookup(self, indices):
        """Codes of integer token ids (..., ) -> (..., C)."""
        return self.normalized_codebook()[indices]


def uniform_init(low, high):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, low, high)

    return init
