"""Perceptual and adversarial terms shared by the pixel-space tokenizer recipes (TiTok stage 2,
VAR's VQVAE): the frozen perceptual network(s), the PatchGAN discriminator with its own AdamW and
LeCam EMAs, all kept in the train state's `task_state`.

Per step (official two-optimizer order): the generator loss sees the current discriminator
(no gradient into it); then the discriminator takes one step on the real images and the detached
reconstructions, only from `discriminator_start` on (before that its parameters, optimizer state
and EMAs stay untouched, as an untouched torch optimizer would).

Loss config fields (all optional; defaults switch a term off):
  perceptual_loss ("" | "lpips" | "convnext_s" | "lpips-convnext_s-W1-W2"), perceptual_weight,
  perceptual_weights (converted weights folder; required unless perceptual_random_init, tests only),
  discriminator_start (-1 = no GAN), discriminator_weight, adaptive_gan_weight (VQGAN ratio of
  last-layer gradient norms, times discriminator_weight), lecam_weight, lecam_decay,
  discriminator_learning_rate, discriminator_b1, discriminator_b2, discriminator_weight_decay,
  discriminator_schedule ("constant" | "cosine": TiTok stage 2's, see `discriminator_learning_rate_schedule`),
  discriminator_warmup_steps, discriminator_end_learning_rate, discriminator_grad_clip_norm (0 = none),
  discriminator_decay ("all" | "matrices": decay only parameters with ndim >= 2, as the official optimizer),
  discriminator_channels, discriminator_stages, discriminator_norm_groups, discriminator_pool.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from titok_var.losses import adversarial
from titok_var.losses.perceptual import make_perceptual_loss
from titok_var.models.discriminator import NLayerDiscriminator

DEFAULTS = dict(
    perceptual_loss="", perceptual_weight=0.0, perceptual_weights="", perceptual_random_init=False,
    discriminator_start=-1, discriminator_weight=0.0, adaptive_gan_weight=False,
    lecam_weight=0.0, lecam_decay=0.999,
    discriminator_learning_rate=1e-4, discriminator_b1=0.9, discriminator_b2=0.999,
    discriminator_weight_decay=1e-4, discriminator_schedule="constant", discriminator_warmup_steps=0,
    discriminator_end_learning_rate=0.0, discriminator_grad_clip_norm=0.0, discriminator_decay="all",
    discriminator_channels=128, discriminator_stages=3, discriminator_norm_groups=32, discriminator_pool=16,
)


def setting(loss_config, name):
    return loss_config.get(name, DEFAULTS[name])


def discriminator_learning_rate_schedule(loss_config, num_train_steps: int) -> optax.Schedule:
    """The discriminator's learning rate as a function of its own step count n (0 at its first step).

    "cosine" is the official TiTok stage-2 scheduler (1d-tokenizer utils/train_utils.py,
    create_lr_scheduler; utils/lr_schedulers.py): stepped only when the discriminator trains, linear
    warm-up n / W over W = discriminator_warmup_steps (0 at the first step), then a half cosine from
    discriminator_learning_rate to discriminator_end_learning_rate over the remaining
    num_train_steps - discriminator_start - W steps. (With P processes the official count is
    (T * P - start) / P; one process is written here.)
    """
    peak = float(setting(loss_config, "discriminator_learning_rate"))
    kind = setting(loss_config, "discriminator_schedule")
    if kind == "constant":
        return optax.constant_schedule(peak)
    if kind != "cosine":
        raise ValueError(f"unknown loss.discriminator_schedule {kind!r}; expected 'constant' or 'cosine'")
    warmup = int(setting(loss_config, "discriminator_warmup_steps"))
    end = float(setting(loss_config, "discriminator_end_learning_rate"))
    total = num_train_steps - int(setting(loss_config, "discriminator_start"))
    decay_steps = max(1, total - warmup)

    def schedule(count):
        n = jnp.asarray(count, jnp.float32)
        progress = (n - warmup) / decay_steps
        cosine = end + (peak - end) * jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))
        return jnp.where(n < warmup, peak * n / max(1, warmup), cosine)

    return schedule


def discriminator_optimizer(loss_config, num_train_steps: int) -> optax.GradientTransformation:
    """AdamW for the discriminator: optional global-norm clipping, the schedule above, and decoupled
    weight decay on every parameter ("all") or on the ndim >= 2 ones ("matrices", official TiTok)."""
    decay = setting(loss_config, "discriminator_decay")
    if decay not in ("all", "matrices"):
        raise ValueError(f"unknown loss.discriminator_decay {decay!r}; expected 'all' or 'matrices'")
    adamw = optax.adamw(
        discriminator_learning_rate_schedule(loss_config, num_train_steps),
        b1=setting(loss_config, "discriminator_b1"), b2=setting(loss_config, "discriminator_b2"),
        weight_decay=setting(loss_config, "discriminator_weight_decay"),
        mask=None if decay == "all" else (lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)))
    clip = float(setting(loss_config, "discriminator_grad_clip_norm"))
    return optax.chain(optax.clip_by_global_norm(clip), adamw) if clip > 0 else adamw


class PixelLossTerms:
    """The optional perceptual + GAN terms of a pixel-space tokenizer loss."""

    def __init__(self, loss_config, image_size: int, num_train_steps: int):
        self.config = loss_config
        self.image_size = image_size
        self.perceptual_kind = setting(loss_config, "perceptual_loss")
        self.perceptual_weight = float(setting(loss_config, "perceptual_weight"))
        self.gan_start = int(setting(loss_config, "discriminator_start"))
        self.use_gan = self.gan_start >= 0
        self.discriminator = NLayerDiscriminator(
            hidden_channels=setting(loss_config, "discriminator_channels"),
            num_stages=setting(loss_config, "discriminator_stages"),
            norm_groups=setting(loss_config, "discriminator_norm_groups"),
            pool_size=setting(loss_config, "discriminator_pool"),
        )
        self.discriminator_tx = discriminator_optimizer(loss_config, num_train_steps)
        self.perceptual = None  # the loss function, built with its params by init_state

    @property
    def active(self) -> bool:
        return bool(self.perceptual_kind) or self.use_gan

    def init_state(self, rng) -> dict:
        perceptual_key, disc_key = jax.random.split(rng)
        state = {}
        if self.perceptual_kind:
            # Random weights of the right shapes (traced, so never baked into the program as
            # constants); `initial_overrides` puts the converted weights in their place.
            self.perceptual, state["perceptual"] = make_perceptual_loss(
                self.perceptual_kind, random_init=True, rng=perceptual_key)
        if self.use_gan:
            images = jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32)
            params = self.discriminator.init(disc_key, images)["params"]
            state["discriminator"] = {
                "params": params, "opt_state": self.discriminator_tx.init(params),
                "ema_real": jnp.zeros((), jnp.float32), "ema_fake": jnp.zeros((), jnp.float32)}
        return state

    def initial_overrides(self) -> dict | None:
        """Host task-state values loaded before the first step: the converted perceptual weights
        (a missing file fails here, at start, naming the file to fetch and how to convert it)."""
        if not self.perceptual_kind or setting(self.config, "perceptual_random_init"):
            return None
        _, params = make_perceptual_loss(self.perceptual_kind, setting(self.config, "perceptual_weights") or None)
        return {"perceptual": jax.tree.map(np.asarray, params)}

    def generator_terms(self, state, images, reconstructions, step, *, last_layer=None, reconstruct_from_last=None):
        """(extra loss, metrics) for the generator, given reconstructions in [0, 1].

        The adaptive GAN weight needs `last_layer` (the decoder's output-layer params) and
        `reconstruct_from_last(last_layer) -> reconstructions` (the forward with that layer swapped
        in), to take both losses' gradient norms at that layer as VQGAN does.
        """
        loss = jnp.zeros((), jnp.float32)
        metrics = {}

        def perceptual_of(recon):
            return self.perceptual(state["perceptual"], images, recon)

        if self.perceptual_kind:
            perceptual = perceptual_of(reconstructions)
            loss = loss + self.perceptual_weight * perceptual
            metrics["perceptual_loss"] = perceptual
        if self.use_gan:
            disc_params = jax.lax.stop_gradient(state["discriminator"]["params"])

            def gan_of(recon):
                return adversarial.generator_adversarial_loss(self.discriminator.apply({"params": disc_params}, recon))

            gan = gan_of(reconstructions)
            factor = adversarial.discriminator_factor(step, self.gan_start)
            weight = jnp.float32(setting(self.config, "discriminator_weight"))
            if setting(self.config, "adaptive_gan_weight"):
                if reconstruct_from_last is None:
                    raise ValueError("adaptive_gan_weight needs the task to pass its decoder's last layer")

                def rec_of(recon):
                    value = jnp.mean(jnp.square(recon - images))
                    return value + self.perceptual_weight * perceptual_of(recon) if self.perceptual_kind else value

                rec_norm, gan_norm = adversarial.last_layer_grad_norms(
                    lambda last: rec_of(reconstruct_from_last(last)),
                    lambda last: gan_of(reconstruct_from_last(last)), last_layer)
                weight = weight * adversarial.adaptive_gan_weight(rec_norm, gan_norm)
            loss = loss + factor * weight * gan
            metrics.update(gan_loss=gan, gan_weight=weight * factor)
        return loss, metrics

    def update(self, state, images, reconstructions, step):
        """One discriminator step on detached reconstructions (from discriminator_start on)."""
        if not self.use_gan:
            return state, {}
        disc = state["discriminator"]
        fake = jax.lax.stop_gradient(reconstructions)
        lecam_weight = float(setting(self.config, "lecam_weight"))

        def objective(disc_params):
            real_logits = self.discriminator.apply({"params": disc_params}, images)
            fake_logits = self.discriminator.apply({"params": disc_params}, fake)
            loss, emas, metrics = adversarial.discriminator_objective(
                real_logits, fake_logits, disc["ema_real"], disc["ema_fake"], factor=1.0,
                lecam_weight=lecam_weight, ema_decay=setting(self.config, "lecam_decay"))
            return loss, (emas, metrics)

        (_, (emas, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(disc["params"])
        updates, opt_state = self.discriminator_tx.update(grads, disc["opt_state"], disc["params"])
        stepped = {"params": optax.apply_updates(disc["params"], updates), "opt_state": opt_state,
                   "ema_real": emas[0], "ema_fake": emas[1]}
        on = jnp.asarray(step) >= self.gan_start
        new_disc = jax.tree.map(lambda new, old: jnp.where(on, new, old), stepped, disc)
        metrics = {f"discriminator/{k}": v for k, v in metrics.items()}
        metrics["discriminator/active"] = on.astype(jnp.float32)
        return dict(state, discriminator=new_disc), metrics
