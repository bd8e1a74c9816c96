"""AdamW with a warmup + decay schedule, global-norm clipping, and a weight-decay mask.

Schedules (`optimizer.schedule`): "cosine" (default; linear warmup from 0, cosine to
`end_learning_rate`) and "var_lin0" (the official VAR trainer: warmup from 0.5% of the peak,
hold the peak for 5% of the rest, then linear to `end_learning_rate`).
"""

import re

import jax
import jax.numpy as jnp
import optax

# Parameters whose path matches get no weight decay: norms, biases, embeddings, codebooks, tokens.
NO_DECAY_PATTERN = re.compile(
    r"(^|/)(bias|scale)$|norm|ln_|embed|embedding|codebook|latent_tokens|mask_token"
)


VAR_WARMUP_START = 0.005  # wp0: the first step's fraction of the peak
VAR_HOLD_FRACTION = 0.05  # 'lin0' keeps the peak for this share of the post-warmup steps


def var_lin0_schedule(peak: float, end: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """VAR's `lr_wd_annealing(sche='lin0')`, per step (the official `it` is our step count)."""
    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak * (VAR_WARMUP_START + (1.0 - VAR_WARMUP_START) * step / max(warmup_steps, 1))
        progress = (step - warmup_steps) / max(total_steps - 1 - warmup_steps, 1)
        end_ratio = end / peak
        decay = peak * (end_ratio + (1.0 - end_ratio) * (1.0 - progress) / (1.0 - VAR_HOLD_FRACTION))
        after = jnp.where(progress < VAR_HOLD_FRACTION, peak, decay)
        return jnp.where(step < warmup_steps, warm, after)

    return schedule


def learning_rate_schedule(config) -> optax.Schedule:
    """The configured schedule over `train.num_steps` (see the module docstring)."""
    warmup = int(config.optimizer.warmup_steps)
    total = max(int(config.train.num_steps), warmup + 1)
    kind = config.optimizer.get("schedule", "cosine")
    if kind == "var_lin0":
        return var_lin0_schedule(config.optimizer.learning_rate, config.optimizer.end_learning_rate, warmup, total)
    if kind != "cosine":
        raise ValueError(f"unknown optimizer.schedule {kind!r}; expected 'cosine' or 'var_lin0'")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.optimizer.learning_rate,
        warmup_steps=warmup,
        decay_steps=total,
        end_value=config.optimizer.end_learning_rate,
    )


def weight_decay_schedule(config):
    """AdamW's decoupled weight-decay coefficient: `optimizer.weight_decay`, or with
    `optimizer.weight_decay_end` the official VAR curve (utils/lr_control.py, lr_wd_annealing):
    wd(it) = end + (start - end) * (0.5 + 0.5 * cos(pi * it / (max_it - 1))) over the whole run
    (no warm-up), applied to the decayed parameters only."""
    start = float(config.optimizer.weight_decay)
    end = config.optimizer.get("weight_decay_end")
    if end is None or float(end) == start:
        return start  # a plain float keeps the optimizer state free of a schedule counter
    end = float(end)
    last = max(int(config.train.num_steps) - 1, 1)

    def schedule(count):
        progress = jnp.asarray(count, jnp.float32) / last
        return end + (start - end) * (0.5 + 0.5 * jnp.cos(jnp.pi * progress))

    return schedule


def parameter_path(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def weight_decay_mask(params, pattern: re.Pattern = NO_DECAY_PATTERN):
    """True where AdamW's decoupled weight decay applies (matrices whose path misses `pattern`)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: leaf.ndim >= 2 and not pattern.search(parameter_path(path)),
        params,
    )


def build_optimizer(config, trainable_mask=None) -> optax.GradientTransformation:
    """The optimizer of the config; `trainable_mask` (a bool tree) freezes the False leaves."""
    opt = config.optimizer
    # A model family may name its own no-decay parameters (VAR decays its class and word embeddings
    # but not its position/level embeddings, AdaLN gains or attention scales).
    pattern = re.compile(opt.no_decay_pattern) if opt.get("no_decay_pattern") else NO_DECAY_PATTERN
    tx = optax.chain(
        optax.clip_by_global_norm(opt.grad_clip_norm),
        optax.adamw(
            learning_rate=learning_rate_schedule(config),
            b1=opt.b1,
            b2=opt.b2,
            eps=opt.eps,
            weight_decay=weight_decay_schedule(config),
            mask=lambda params: weight_decay_mask(params, pattern),
        ),
    )
    if trainable_mask is None:
        return tx
    # Frozen parameters get zero gradients before clipping (so they do not count in the global
    # norm) and zero updates after AdamW (so weight decay leaves them alone). Their (zero) Adam
    # moments are kept, which keeps every optimizer-state leaf shaped like its parameter.
    frozen = lambda params: jax.tree.map(lambda trainable: not trainable, trainable_mask(params))  # noqa: E731
    return optax.chain(optax.masked(optax.set_to_zero(), frozen), tx, optax.masked(optax.set_to_zero(), frozen))
