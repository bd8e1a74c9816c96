"""Vector quantizer: nearest code, straight-through gradient, losses on a hand-made case."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from titok_var.quantizers.vector_quantizer import (
    VectorQuantizer, l2_normalize, nearest_code, quantizer_losses, straight_through)


def test_nearest_code_on_hand_made_codebook():
    codebook = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    z = jnp.array([[0.9, 0.1], [0.1, 1.5], [-0.2, 0.1]])
    np.testing.assert_array_equal(nearest_code(z, codebook), [1, 2, 0])


def test_straight_through_gradient_is_identity():
    z = jnp.array([0.3, -0.7, 1.2])
    q = jnp.array([0.0, -1.0, 1.0])
    value = straight_through(z, q)
    np.testing.assert_allclose(value, q, atol=1e-7)
    weights = jnp.array([1.0, 2.0, 3.0])
    grad = jax.grad(lambda z_: jnp.sum(straight_through(z_, q) * weights))(z)
    np.testing.assert_allclose(grad, weights)


def test_losses_on_hand_made_case():
    z = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    q = jnp.array([[0.5, 0.0], [0.0, 0.0]])
    # mean((q - z)^2) = (0.25 + 1) / 4
    commitment, codebook = quantizer_losses(z, q, commitment_cost=0.25)
    np.testing.assert_allclose(codebook, 1.25 / 4)
    np.testing.assert_allclose(commitment, 0.25 * 1.25 / 4)
    # Commitment moves only z, the codebook term only q.
    g_z = jax.grad(lambda z_: quantizer_losses(z_, q, 0.25)[1])(z)
    g_q = jax.grad(lambda q_: quantizer_losses(z, q_, 0.25)[0])(q)
    np.testing.assert_allclose(g_z, 0.0)
    np.testing.assert_allclose(g_q, 0.0)


def test_module_with_l2_norm_returns_unit_codes_and_matching_indices():
    vq = VectorQuantizer(codebook_size=16, code_dim=4, use_l2_norm=True)
    z = jax.random.normal(jax.random.key(0), (2, 5, 4))
    variables = nn.unbox(vq.init(jax.random.key(1), z))
    quantized, aux = vq.apply(variables, z)
    np.testing.assert_allclose(jnp.linalg.norm(quantized, axis=-1), 1.0, atol=1e-5)
    codebook = l2_normalize(variables["params"]["codebook"])
    expected = np.argmax(np.asarray(l2_normalize(z)) @ np.asarray(codebook).T, axis=-1)
    np.testing.assert_array_equal(aux["indices"], expected)
    np.testing.assert_allclose(quantized, codebook[aux["indices"]], atol=1e-6)
    looked_up = vq.apply(variables, aux["indices"], method=VectorQuantizer.lookup)
    np.testing.assert_allclose(looked_up, quantized, atol=1e-6)
    np.testing.assert_allclose(aux["quantizer_loss"], 1.25 * jnp.mean(jnp.square(quantized - l2_normalize(z))),
                               rtol=1e-5)


def test_codebook_initialisation_range():
    vq = VectorQuantizer(codebook_size=100, code_dim=3, use_l2_norm=False)
    codebook = nn.unbox(vq.init(jax.random.key(0), jnp.zeros((1, 3))))["params"]["codebook"]
    assert float(jnp.max(jnp.abs(codebook))) <= 1.0 / 100
