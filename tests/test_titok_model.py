"""TiTok encoder/decoder shapes, layout quirks, token round trip and parameter counts."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import titok_b64, titok_l32, titok_s128
from titok_var.models.titok import TiTok, pixel_shuffle
from titok_var.tools import summary


def tiny_model(**kw):
    fields = dict(image_size=16, patch_size=4, num_latent_tokens=8, encoder_size="tiny",
                  decoder_size="tiny", codebook_size=32, token_size=6)
    fields.update(kw)
    return TiTok(**fields)


@pytest.mark.parametrize("num_tokens", [1, 8, 32])
def test_encoder_decoder_shapes_for_several_token_counts(num_tokens):
    model = tiny_model(num_latent_tokens=num_tokens)
    images = jax.random.uniform(jax.random.key(0), (3, 16, 16, 3))
    variables = model.init(jax.random.key(1), images)
    quantized, aux = model.apply(variables, images, method=TiTok.encode)
    assert quantized.shape == (3, num_tokens, 6)
    assert aux["indices"].shape == (3, num_tokens)
    assert aux["indices"].dtype == jnp.int32
    recon = model.apply(variables, quantized, method=TiTok.decode)
    assert recon.shape == (3, 16, 16, 3)
    assert np.all(np.isfinite(recon))


def test_decode_tokens_equals_decode_of_quantized_encoding():
    model = tiny_model()
    images = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
    variables = model.init(jax.random.key(1), images)
    quantized, aux = model.apply(variables, images, method=TiTok.encode)
    from_tokens = model.apply(variables, aux["indices"], method=TiTok.decode_tokens)
    from_codes = model.apply(variables, quantized, method=TiTok.decode)
    np.testing.assert_allclose(from_tokens, from_codes, atol=1e-5)


def test_symmetric_pixels_centres_inputs_and_uncentres_outputs():
    images = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
    unit, symmetric = tiny_model(), tiny_model(symmetric_pixels=True)
    variables = unit.init(jax.random.key(1), images)
    expected, expected_aux = unit.apply(variables, images * 2.0 - 1.0)
    got, aux = symmetric.apply(variables, images)
    np.testing.assert_array_equal(aux["indices"], expected_aux["indices"])
    np.testing.assert_allclose(got, (expected + 1.0) * 0.5, rtol=1e-6, atol=1e-6)
    proxy = tiny_model(decoder_head="proxy_codes", proxy_codebook_size=16)
    proxy_variables = proxy.init(jax.random.key(1), images)
    logits = tiny_model(decoder_head="proxy_codes", proxy_codebook_size=16, symmetric_pixels=True).apply(
        proxy_variables, aux["indices"], method=TiTok.decode_tokens
    )
    np.testing.assert_allclose(logits, proxy.apply(proxy_variables, aux["indices"], method=TiTok.decode_tokens))


def test_proxy_code_head_gives_logits_per_patch():
    model = tiny_model(decoder_head="proxy_codes", proxy_codebook_size=40)
    images = jnp.zeros((2, 16, 16, 3))
    variables = model.init(jax.random.key(1), images)
    logits, _ = model.apply(variables, images)
    assert logits.shape == (2, 4, 4, 40)


def test_legacy_reshape_reinterprets_memory_like_the_released_models():
    """conv_out must see (B, N, D) memory read as (B, D, N), as torch's .reshape does."""
    legacy, proper = tiny_model(legacy_reshape=True), tiny_model(legacy_reshape=False)
    images = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
    variables = nn.unbox(proper.init(jax.random.key(1), images))
    _, state = proper.apply(variables, images, method=TiTok.encode, capture_intermediates=True,
                            mutable=["intermediates"])
    ln_post = state["intermediates"]["encoder"]["ln_post"]["__call__"][0]  # (B, N, D)
    kernel = variables["params"]["encoder"]["conv_out"]["kernel"]  # (D, C)
    bias = variables["params"]["encoder"]["conv_out"]["bias"]
    batch, tokens, width = ln_post.shape
    expected = np.einsum("bdn,dc->bnc", np.asarray(ln_post).reshape(batch, width, tokens), kernel) + bias
    z_legacy = legacy.apply(variables, images, method=lambda m, x: m.encoder(x, m.latent_tokens))
    z_proper = proper.apply(variables, images, method=lambda m, x: m.encoder(x, m.latent_tokens))
    np.testing.assert_allclose(z_legacy, expected, atol=1e-5)
    assert not np.allclose(z_legacy, z_proper, atol=1e-3)


def test_pixel_shuffle_channel_order_is_p1_p2_c():
    x = np.arange(1 * 1 * 1 * 2 * 2 * 3).reshape(1, 1, 1, 12).astype(np.float32)
    out = np.asarray(pixel_shuffle(jnp.asarray(x), 2))
    # channel index = (p1 * 2 + p2) * 3 + c
    assert out[0, 1, 0, 2] == (1 * 2 + 0) * 3 + 2
    assert out[0, 0, 1, 0] == (0 * 2 + 1) * 3 + 0


def test_wrong_image_size_is_a_clear_error():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"expects images of shape \(batch, 16, 16, 3\)"):
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize(
    "config_module, encoder_millions",
    # The released models' encoder sizes (paper: ~22M / 86M / 307M per ViT).
    [(titok_s128, 25.82), (titok_b64, 85.90), (titok_l32, 303.41)],
)
def test_summary_counts_match_the_released_models(config_module, encoder_millions):
    counts = summary.parameter_counts(config_module.get_config())
    assert abs(counts["encoder"] / 1e6 - encoder_millions) < 0.01
    # The pixel decoder differs from the released proxy-code head only in the head.
    assert abs(counts["decoder"] - counts["encoder"]) / counts["encoder"] < 0.01
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
