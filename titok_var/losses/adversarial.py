"""GAN losses for tokenizer training: hinge + LeCam (TiTok stage 2), the VQGAN adaptive weight,
the discriminator_start switch, and one-backward-pass training of generator and discriminator.

Official formulas (bytedance/1d-tokenizer `modeling/modules/losses.py`, CompVis/taming-transformers
`taming/modules/losses/vqperceptual.py`), all reduced in float32:

    generator:      gan = -mean(D(x_hat)),  weighted by d_weight * discriminator_factor(step)
    discriminator:  factor * 0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(sg(x_hat)))))
                    + lecam_weight * [relu(mean D(x) - ema_fake)^2 + relu(ema_real - mean D(x_hat))^2]
                    with the EMAs (initially 0) updated *after* use: ema = decay*ema + (1-decay)*mean
    VQGAN weight:   d_weight = clip(|grad_last rec| / (|grad_last gan| + 1e-4), 0, 1e4), no gradient

TiTok uses no adaptive weight (d_weight is the constant discriminator_weight 0.01); VQGAN-style
recipes multiply `adaptive_gan_weight(...)` by their discriminator_weight.

Training both networks from one backward pass: `joint_gan_objective` sums the generator loss,
evaluated with stop_gradient(discriminator params), and the discriminator loss, evaluated on
stop_gradient(fake images). The gradient of the sum w.r.t. {"generator", "discriminator"} is then
exactly the official pair of gradients: the G step sees the current D, and the D step (run after
the G step but before any D update, on the same detached reconstructions) sees the current D and
the reconstructions of the current G. Apply the two halves with separate optimizers (the official
also clips each half's global norm separately). Before discriminator_start the official skips the
D step entirely: keep D params, D optimizer state and the LeCam EMAs unchanged there (a zero
gradient still moves AdamW through weight decay and momentum).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


def _mean(x):
    return jnp.mean(jnp.asarray(x, jnp.float32))


def hinge_discriminator_loss(real_logits, fake_logits):
    """0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))."""
    real = jnp.asarray(real_logits, jnp.float32)
    fake = jnp.asarray(fake_logits, jnp.float32)
    return 0.5 * (jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake)))


def generator_adversarial_loss(fake_logits):
    """-mean(D(x_hat)): the generator pushes its logits up."""
    return -_mean(fake_logits)


def lecam_regularizer(real_logits, fake_logits, ema_real, ema_fake):
    """LeCam term relu(mean real - ema_fake)^2 + relu(ema_real - mean fake)^2 (unweighted).

    The EMAs are constants here (the official keeps them as buffers); gradients reach the
    discriminator through the two logit means only.
    """
    ema_real = jax.lax.stop_gradient(jnp.asarray(ema_real, jnp.float32))
    ema_fake = jax.lax.stop_gradient(jnp.asarray(ema_fake, jnp.float32))
    return (jnp.mean(jnp.square(jax.nn.relu(_mean(real_logits) - ema_fake)))
            + jnp.mean(jnp.square(jax.nn.relu(ema_real - _mean(fake_logits)))))


def update_lecam_emas(ema_real, ema_fake, real_logits, fake_logits, decay: float = 0.999):
    """(ema_real, ema_fake) after one step: decay * ema + (1 - decay) * mean(logits), no gradient."""
    real_mean = jax.lax.stop_gradient(_mean(real_logits))
    fake_mean = jax.lax.stop_gradient(_mean(fake_logits))
    ema_real = jnp.asarray(ema_real, jnp.float32)
    ema_fake = jnp.asarray(ema_fake, jnp.float32)
    return ema_real * decay + real_mean * (1.0 - decay), ema_fake * decay + fake_mean * (1.0 - decay)


def discriminator_objective(real_logits, fake_logits, ema_real, ema_fake, *, factor,
                            lecam_weight: float = 0.001, ema_decay: float = 0.999):
    """The official discriminator step: (loss, (new ema_real, new ema_fake), metrics).

    loss = factor * hinge + lecam_weight * LeCam(old EMAs); the LeCam term is not scaled by
    `factor`, as in the official. With lecam_weight 0 the EMAs are returned unchanged (the
    official then has no EMA buffers). `fake_logits` must come from detached fake images.
    """
    hinge = hinge_discriminator_loss(real_logits, fake_logits)
    metrics = {"hinge_loss": hinge, "logits_real": _mean(real_logits), "logits_fake": _mean(fake_logits)}
    if lecam_weight <= 0.0:
        lecam = jnp.zeros((), jnp.float32)
        emas = (jnp.asarray(ema_real, jnp.float32), jnp.asarray(ema_fake, jnp.float32))
    else:
        lecam = lecam_weight * lecam_regularizer(real_logits, fake_logits, ema_real, ema_fake)
        emas = update_lecam_emas(ema_real, ema_fake, real_logits, fake_logits, ema_decay)
    loss = jnp.asarray(factor, jnp.float32) * hinge + lecam
    metrics.update(discriminator_loss=loss, lecam_loss=lecam)
    return loss, emas, metrics


def discriminator_factor(step, start, factor: float = 1.0):
    """`factor` from step `start` on, 0 before (float32; `step` may be traced under jit)."""
    return jnp.where(jnp.asarray(step) >= start, jnp.float32(factor), jnp.float32(0.0))


def adaptive_gan_weight(rec_grad_norm, gan_grad_norm, max_weight: float = 1e4, eps: float = 1e-4):
    """VQGAN's d_weight = clip(rec_norm / (gan_norm + eps), 0, max_weight), a constant for autodiff."""
    weight = jnp.asarray(rec_grad_norm, jnp.float32) / (jnp.asarray(gan_grad_norm, jnp.float32) + eps)
    return jax.lax.stop_gradient(jnp.clip(weight, 0.0, max_weight))


def last_layer_grad_norms(rec_loss_fn: Callable, gan_loss_fn: Callable, last_layer_params):
    """L2 norms of d rec / d last_layer and d gan / d last_layer (global norm over the subtree).

    Each loss function maps the last layer's parameters (e.g. the decoder's output conv kernel,
    which is what taming passes) to a scalar, with everything else closed over. To re-run only
    the last layer and the loss heads, close over that layer's *input* activations rather than
    the whole model; under jit XLA also shares the forward work with the main loss.
    """
    rec_grads = jax.grad(rec_loss_fn)(last_layer_params)
    gan_grads = jax.grad(gan_loss_fn)(last_layer_params)
    return optax.tree.norm(rec_grads), optax.tree.norm(gan_grads)


def joint_gan_objective(params, generator_loss_fn: Callable, discriminator_loss_fn: Callable):
    """g_loss + d_loss whose gradient is the official (generator, discriminator) gradient pair.

    params: {"generator": ..., "discriminator": ...}.
    generator_loss_fn(generator_params, frozen_discriminator_params) -> (g_loss, (fake_images, g_aux))
    discriminator_loss_fn(discriminator_params, detached_fake_images) -> (d_loss, d_aux)
    Returns (g_loss + d_loss, {"generator_loss", "discriminator_loss", "generator_aux",
    "discriminator_aux"}), for `jax.value_and_grad(..., has_aux=True)`.
    """
    missing = {"generator", "discriminator"} - set(params)
    if missing:
        raise KeyError(f"joint_gan_objective needs params with keys 'generator' and 'discriminator'; missing {sorted(missing)}")
    g_loss, (fake_images, g_aux) = generator_loss_fn(
        params["generator"], jax.lax.stop_gradient(params["discriminator"])
    )
    d_loss, d_aux = discriminator_loss_fn(params["discriminator"], jax.lax.stop_gradient(fake_images))
    aux = {"generator_loss": g_loss, "discriminator_loss": d_loss, "generator_aux": g_aux, "discriminator_aux": d_aux}
    return g_loss + d_loss, aux
