"""AdamW with linear warmup + cosine decay, global-norm clipping, and a weight-decay mask."""

import re

import jax
import optax

# Parameters whose path matches get no weight decay: norms, biases, embeddings, codebooks, tokens.
NO_DECAY_PATTERN = re.compile(
    r"(^|/)(bias|scale)$|norm|ln_|embed|embedding|codebook|latent_tokens|mask_token"
)


def learning_rate_schedule(config) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then cosine to `end_learning_rate` at `num_steps`."""
    warmup = int(config.optimizer.warmup_steps)
    total = max(int(config.train.num_steps), warmup + 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.optimizer.learning_rate,
        warmup_steps=warmup,
        decay_steps=total,
        end_value=config.optimizer.end_learning_rate,
    )


def parameter_path(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def weight_decay_mask(params):
    """True where AdamW's decoupled weight decay applies (matrices that are not embeddings)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: leaf.ndim >= 2 and not NO_DECAY_PATTERN.search(parameter_path(path)),
        params,
    )


def build_optimizer(config, trainable_mask=None) -> optax.GradientTransformation:
    """The optimizer of the config; `trainable_mask` (a bool tree) freezes the False leaves."""
    opt = config.optimizer
    tx = optax.chain(
        optax.clip_by_global_norm(opt.grad_clip_norm),
        optax.adamw(
            learning_rate=learning_rate_schedule(config),
            b1=opt.b1,
            b2=opt.b2,
            eps=opt.eps,
            weight_decay=opt.weight_decay,
            mask=weight_decay_mask,
        ),
    )
    if trainable_mask is None:
        return tx
    labels = lambda params: jax.tree.map(  # noqa: E731
        lambda trainable: "train" if trainable else "freeze", trainable_mask(params)
    )
    return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
