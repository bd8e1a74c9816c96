"""MaskGIT training: per-sample token masking, class-label dropout and the masked-token loss.

Pure functions with explicit PRNG keys. The official recipe (bytedance/1d-tokenizer
`ImageBert.masking_input_tokens`, `MLMLoss`, generator YAML) is, per sample:

    t ~ U[0, 1);  ratio = clip(arccos(t) / (pi/2), 1e-6, 1);  n = max(1, round(N * ratio))
    a uniformly random subset of n of the N positions is replaced by the mask id K
    the label is replaced by the null class with probability 0.1 (classifier-free guidance)

`masked_token_loss` defaults to cross-entropy over masked positions only. The official generator
recipe instead uses label smoothing 0.1 and gives unmasked positions weight 0.1; pass
`**OFFICIAL_LOSS_SETTINGS` to get that.
"""

import jax
import jax.numpy as jnp

from titok_var.generation import mask_schedule

CLASS_LABEL_DROPOUT = 0.1
OFFICIAL_LOSS_SETTINGS = {"label_smoothing": 0.1, "unmasked_weight": 0.1}


def sample_mask(key, batch_size: int, seq_len: int, schedule: str = "arccos"):
    """bool (B, N): per sample, a random set of max(1, round(N * ratio(t))) positions, t ~ U[0, 1)."""
    ratio_fn = mask_schedule.get_schedule(schedule)
    time_key, order_key = jax.random.split(key)
    t = jax.random.uniform(time_key, (batch_size,))
    ratio = jnp.clip(ratio_fn(t), 1e-6, 1.0)
    num_masked = jnp.maximum(jnp.round(seq_len * ratio), 1.0).astype(jnp.int32)
    # argsort of iid uniforms is a uniformly random permutation; its first n entries pick the subset.
    ranks = jnp.argsort(jax.random.uniform(order_key, (batch_size, seq_len)), axis=-1)
    return ranks < num_masked[:, None]


def mask_tokens(key, tokens, mask_token_id: int, schedule: str = "arccos"):
    """(masked inputs, mask): `tokens` (B, N) with the `sample_mask` positions set to mask_token_id."""
    mask = sample_mask(key, tokens.shape[0], tokens.shape[1], schedule)
    return jnp.where(mask, mask_token_id, tokens), mask


def drop_labels(key, labels, null_label: int, prob: float = CLASS_LABEL_DROPOUT):
    """Replaces each label by `null_label` with probability `prob` (classifier-free guidance)."""
    drop = jax.random.uniform(key, labels.shape) < prob
    return jnp.where(drop, null_label, labels)


def prepare_inputs(key, tokens, labels, *, mask_token_id: int, null_label: int, schedule: str = "arccos",
                   label_dropout: float = CLASS_LABEL_DROPOUT):
    """One training example batch: (masked tokens, labels after dropout, mask)."""
    mask_key, label_key = jax.random.split(key)
    inputs, mask = mask_tokens(mask_key, tokens, mask_token_id, schedule)
    return inputs, drop_labels(label_key, labels, null_label, label_dropout), mask


def masked_token_loss(logits, targets, mask, *, label_smoothing: float = 0.0, unmasked_weight: float = 0.0):
    """Weighted token cross-entropy and masked-token accuracy.

    logits (B, N, K), targets (B, N) int, mask (B, N) bool (True = was masked). Each position's
    cross-entropy (with torch-style label smoothing: (1 - e) one-hot + e / K) gets weight 1 if
    masked and `unmasked_weight` otherwise; loss = sum(w * ce) / (sum(w) + 1e-8). With the default
    weight 0 the logits at unmasked positions do not affect the loss. Accuracy counts masked
    positions only.
    """
    logits = logits.astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    ce = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_probs, axis=-1)
    mask_f = mask.astype(jnp.float32)
    weights = mask_f + (1.0 - mask_f) * unmasked_weight
    # where(): a non-finite logit at a zero-weight position cannot leak into the loss.
    loss = jnp.sum(jnp.where(weights > 0, ce * weights, 0.0)) / (jnp.sum(weights) + 1e-8)
    correct = (jnp.argmax(logits, axis=-1) == targets) & mask
    num_masked = jnp.sum(mask_f)
    metrics = {
        "loss": loss,
        "masked_accuracy": jnp.sum(correct) / jnp.maximum(num_masked, 1.0),
        "masked_fraction": num_masked / mask_f.size,
    }
    return loss, metrics
