"""Linear probing of a frozen tokenizer encoder, following the MAE protocol (He et al. 2022, A.2).

What TiTok probes. The paper (Sec. 4.1, Fig. 4b, Tab. 4c) puts "a batch normalization layer
followed by a linear layer on top of the frozen features from TiTok encoder", with every
hyper-parameter from MAE. Its encoder output is defined by Eq. 3: Z_1D = Enc(P + L), keeping only
the K latent tokens, which are then vector-quantized. So the features are the pre-quantization
latent tokens (B, K, C) - `TiTokEncoder`'s output, before the quantizer's l2 normalisation - which
`titok_encoder_latents` returns. The paper does not say how the K tokens become one vector.
`tokenizer_probe_features` flattens them by default (K * C features): the tokens are not
exchangeable positions but K learned slots with their own roles, and their mean would leave only
C = 12..16 numbers, too few for the 48-62% top-1 of Tab. 4c. `reduction="mean"` gives MAE's
global-pool variant for comparison.

The MAE protocol, as `main_linprobe.py` implements it:
* head: BatchNorm1d(affine=False, eps=1e-6, momentum 0.1) then Linear, weight
  trunc_normal(std=0.01) (truncated at +-2 absolute, i.e. a plain normal), zero bias;
* LARS (trust coefficient 0.001, momentum 0.9, weight decay 0); decay and trust ratio skip 1-d
  parameters (the bias; the BN has none);
* lr = base_lr (0.1) * batch / 256 with batch 16384, 90 epochs, linear warmup over 10 epochs then
  half-cosine to min_lr 0, set every step from the fractional epoch; the first step has lr 0;
* each epoch a fresh shuffle, the last incomplete batch dropped; cross-entropy loss;
* evaluation with the BN's running statistics; top-1 and top-5.

Deliberate differences, all documented where they occur:
* Features are computed once (`extract_features`) and probed many epochs, so the per-epoch
  RandomResizedCrop + flip augmentation of MAE is not redone each epoch. To include it, extract
  features of augmented training images (`data.pipeline.train_batches`) instead of centre crops.
* Flax's BatchNorm updates the running variance with the biased batch variance, torch with the
  unbiased one: a factor batch/(batch-1), 1.00006 at batch 16384.

Memory. Training streams minibatches from a host (N, F) array, which may be an `np.memmap`: only
one minibatch is on device. ImageNet-1k's 1,281,167 training images at float32 take N * F * 4
bytes: 2.0 GB for TiTok-L-32 flattened (32 x 12 = 384 features), 3.9 GB for B-64 (768), 7.9 GB
for S-128 (1536), 61 MB with `reduction="mean"`. Rows of each minibatch are read in sorted order
(a step does not depend on the order inside a batch), which keeps memmap reads mostly sequential.
"""

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

MAE_REFERENCE_BATCH = 256  # lr = base_lr * batch_size / 256 (MAE's linear scaling rule)
REDUCTIONS = ("flatten", "mean")
TOP_K = 5


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """MAE linear-probing hyper-parameters (ImageNet, ViT encoders)."""

    base_lr: float = 0.1
    batch_size: int = 16384
    epochs: int = 90
    warmup_epochs: float = 10
    min_lr: float = 0.0
    weight_decay: float = 0.0
    momentum: float = 0.9
    trust_coefficient: float = 0.001
    eval_batch_size: int = 1024
    seed: int = 0

    def __post_init__(self):
        for name in ("batch_size", "epochs", "eval_batch_size"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) <= 0:
                raise ValueError(f"ProbeConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(
                f"ProbeConfig.warmup_epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs}")
        if self.base_lr <= 0 or self.min_lr < 0 or self.weight_decay < 0:
            raise ValueError(f"ProbeConfig needs base_lr > 0, min_lr >= 0, weight_decay >= 0; got {self}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"ProbeConfig.momentum must be in [0, 1), got {self.momentum}")

    @property
    def learning_rate(self) -> float:
        """Peak (absolute) learning rate of the linear scaling rule."""
        return self.base_lr * self.batch_size / MAE_REFERENCE_BATCH

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> "ProbeConfig":
        """From an ml_collections ConfigDict or dict of overrides; unknown keys are an error."""
        overrides = dict(config.items()) if config is not None else {}
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise KeyError(f"unknown linear-probe config keys {unknown}; known: {sorted(known)}")
        return cls(**overrides)


def scaled_probe_config(config: ProbeConfig, *, batch_size: int | None = None, epochs: int | None = None,
                        **overrides) -> ProbeConfig:
    """The same protocol on a smaller budget (small datasets, smoke runs).

    The peak lr follows the batch through the linear scaling rule (base_lr is kept) and warmup
    keeps its fraction of the schedule (10/90 of the epochs by default). LARS changes a weight
    matrix by about trust_coefficient * lr / (1 - momentum) of its norm per step, so a set much
    smaller than ImageNet (few steps in all) also needs a larger base_lr or more epochs: pass
    them as overrides.
    """
    batch_size = config.batch_size if batch_size is None else batch_size
    epochs = config.epochs if epochs is None else epochs
    fields = {"batch_size": batch_size, "epochs": epochs,
              "warmup_epochs": config.warmup_epochs * epochs / config.epochs}
    fields.update(overrides)
    return dataclasses.replace(config, **fields)


def probe_learning_rate(config: ProbeConfig, steps_per_epoch: int) -> Callable[[Any], Any]:
    """MAE's per-step lr: linear warmup from 0, then half-cosine to min_lr, on fractional epochs."""
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    peak, floor = config.learning_rate, config.min_lr
    warmup, total = float(config.warmup_epochs), float(config.epochs)

    def schedule(step):
        epoch = jnp.asarray(step, jnp.float32) / steps_per_epoch
        warm = peak * epoch / max(warmup, 1e-12)
        progress = (epoch - warmup) / max(total - warmup, 1e-12)
        cosine = floor + (peak - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(progress, 1.0)))
        return jnp.where(epoch < warmup, warm, cosine)

    return schedule


def _is_matrix(params):
    return jax.tree.map(lambda leaf: leaf.ndim > 1, params)


def probe_optimizer(config: ProbeConfig, learning_rate: Callable[[Any], Any] | float) -> optax.GradientTransformation:
    """MAE's LARS: decay and trust ratio on matrices only, then momentum, then the lr.

    These are optax.lars's own transforms, but with the lr applied after the momentum buffer, as
    MAE (torch SGD-style, p -= lr * mu) does: optax.lars puts the lr inside the buffer, which
    differs whenever the lr changes between steps, i.e. on every step of warmup and cosine.
    """
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=_is_matrix),
        optax.masked(optax.scale_by_trust_ratio(trust_coefficient=config.trust_coefficient, eps=0.0),
                     _is_matrix),
        optax.trace(decay=config.momentum, nesterov=False),
        optax.scale_by_learning_rate(learning_rate),
    )


# ---------------------------------------------------------------------------------------------
# Model and features


def mae_head_init(key, shape, dtype=jnp.float32):
    """timm trunc_normal_(std=0.01) as MAE calls it: the bounds are +-2 absolute, so ~plain normal."""
    return jnp.clip(0.01 * jax.random.normal(key, shape, dtype), -2.0, 2.0)


class LinearProbe(nn.Module):
    """BatchNorm without affine (MAE, eps 1e-6, torch momentum 0.1) then a linear classifier."""

    num_classes: int

    @nn.compact
    def __call__(self, features, train: bool = False):
        x = nn.BatchNorm(
            use_running_average=not train,
            momentum=0.9,  # flax keeps 0.9 of the old statistic where torch mixes in 0.1 of the new
            epsilon=1e-6,
            use_bias=False,
            use_scale=False,
            use_fast_variance=False,  # E[x^2]-E[x]^2 loses precision on offset features
            name="norm",
        )(features.astype(jnp.float32))
        return nn.Dense(self.num_classes, kernel_init=mae_head_init, bias_init=nn.initializers.zeros,
                        name="head")(x)


def tokenizer_probe_features(latents, reduction: str = "flatten"):
    """Tokenizer latents (B, K, C) -> probe features: (B, K*C) flattened, or (B, C) token mean."""
    if latents.ndim != 3:
        raise ValueError(f"expected latent tokens of shape (batch, tokens, channels), got {latents.shape}")
    if reduction == "flatten":
        return latents.reshape(latents.shape[0], -1).astype(jnp.float32)
    if reduction == "mean":
        return jnp.mean(latents.astype(jnp.float32), axis=1)
    raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")


def titok_encoder_latents(model, images):
    """Pre-quantization latent tokens Z_1D (B, K, token_size): pass as `method=` to `TiTok.apply`.

    The input handling of `TiTok.encode` (shape check, optional centring) without the quantizer.
    """
    model.check_images(images)
    if model.symmetric_pixels:
        images = images * 2.0 - 1.0
    return model.encoder(images, model.latent_tokens)


def titok_feature_fn(model, variables, reduction: str = "flatten") -> Callable[[Any], Any]:
    """images (B, H, W, 3) in [0, 1] -> probe features of a frozen TiTok, for `extract_features`."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")

    def features(images):
        latents = model.apply(variables, images, method=titok_encoder_latents)
        return tokenizer_probe_features(latents, reduction)

    return features


def _valid_rows(batch: Mapping[str, np.ndarray], size: int) -> np.ndarray | None:
    """Rows that are real examples: the pipeline's "mask" and/or a "valid" field, else all."""
    keep = None
    for field in ("mask", "valid"):
        if field in batch:
            flags = np.asarray(batch[field], dtype=bool)
            if flags.shape != (size,):
                raise ValueError(f"batch field {field!r} has shape {flags.shape}, expected ({size},)")
            keep = flags if keep is None else keep & flags
    return keep


def extract_features(
    feature_fn: Callable[[Any], Any],
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Runs jit(feature_fn) over {"image", "label"[, "mask"/"valid"]} batches -> (features, labels).

    Padded rows (mask False) are dropped. Batch i+1 is dispatched before batch i is fetched, so
    the device is not idle while the host copies. `out` (e.g. an np.memmap of N x F) receives the
    rows in order instead of a list that is concatenated at the end (which needs twice the memory).
    Host-local: under several processes each one extracts its own share of the data.
    """
    compute = jax.jit(feature_fn)
    chunks, label_chunks = [], []
    written = 0

    def store(pending):
        nonlocal written
        features, labels, keep = pending
        features = np.asarray(jax.device_get(features), dtype=np.float32)
        if features.ndim != 2 or features.shape[0] != labels.shape[0]:
            raise ValueError(f"feature_fn must return (batch, features) = ({labels.shape[0]}, F), "
                             f"got {features.shape}")
        if keep is not None:
            features, labels = features[keep], labels[keep]
        if out is None:
            chunks.append(features)
        else:
            if written + len(features) > out.shape[0] or out.shape[1:] != features.shape[1:]:
                raise ValueError(f"out of shape {out.shape} cannot take rows {written}..{written + len(features)} "
                                 f"of {features.shape[1]} features")
            out[written:written + len(features)] = features
        written += len(features)
        label_chunks.append(labels)

    pending = None
    for batch in batches:
        missing = [field for field in ("image", "label") if field not in batch]
        if missing:
            raise KeyError(f"batch lacks field(s) {missing}; got {sorted(batch)}")
        labels = np.asarray(batch["label"], dtype=np.int32).reshape(-1)
        images = batch["image"]
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"batch has {images.shape[0]} images but {labels.shape[0]} labels")
        current = (compute(images), labels, _valid_rows(batch, labels.shape[0]))
        if pending is not None:
            store(pending)
        pending = current
    if pending is not None:
        store(pending)
    if written == 0:
        raise ValueError("extract_features got no examples (empty iterator or every row masked)")
    labels = np.concatenate(label_chunks)
    features = np.concatenate(chunks) if out is None else out[:written]
    return features, labels


# ---------------------------------------------------------------------------------------------
# Training and evaluation


def _check_dataset(features, labels, num_classes: int, what: str) -> tuple[Any, np.ndarray]:
    if features.ndim != 2:
        raise ValueError(f"{what} features must be (N, F), got shape {features.shape}")
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != features.shape[0]:
        raise ValueError(f"{what}: {features.shape[0]} feature rows but {labels.shape[0]} labels")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what} labels must be integers, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{what} labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    return features, labels.astype(np.int32)


def epoch_batch_indices(shuffle_key, epoch: int, num_examples: int, batch_size: int) -> np.ndarray:
    """(steps, batch) example indices of one epoch: a fresh permutation, last partial batch dropped.

    Rows inside a batch are sorted (a step is invariant to their order; reads become sequential).
    """
    steps = num_examples // batch_size
    if steps == 0:
        raise ValueError(f"{num_examples} training examples are fewer than one batch of {batch_size}")
    order = np.asarray(jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), num_examples))
    return np.sort(order[: steps * batch_size].reshape(steps, batch_size), axis=1)


def _train_step(model, tx, params, batch_stats, opt_state, features, labels):
    def loss_fn(params):
        logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, features, train=True,
                                      mutable=["batch_stats"])
        loss = optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss


def train_linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    num_classes: int,
    config: ProbeConfig,
    *,
    eval_features: np.ndarray | None = None,
    eval_labels: np.ndarray | None = None,
    log_fn: Callable[[int, dict], None] | None = None,
) -> tuple[dict, list[dict]]:
    """Trains LinearProbe on frozen features (N, F) -> ({"params", "batch_stats"}, per-epoch history).

    Each history entry has epoch, step, train_loss (mean over the epoch), learning_rate (of the
    epoch's last step) and, with eval data, eval_top1 / eval_top5 after the epoch; log_fn(epoch,
    entry) sees each entry as it is made.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    train_features, train_labels = _check_dataset(train_features, train_labels, num_classes, "train")
    if (eval_features is None) != (eval_labels is None):
        raise ValueError("pass both eval_features and eval_labels, or neither")
    if eval_features is not None:
        eval_features, eval_labels = _check_dataset(eval_features, eval_labels, num_classes, "eval")
        if eval_features.shape[1] != train_features.shape[1]:
            raise ValueError(f"eval features have {eval_features.shape[1]} dims, train {train_features.shape[1]}")

    num_examples, dim = train_features.shape
    steps_per_epoch = num_examples // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{num_examples} training examples are fewer than one batch of {config.batch_size}")
    model = LinearProbe(num_classes)
    schedule = probe_learning_rate(config, steps_per_epoch)
    tx = probe_optimizer(config, schedule)
    init_key, shuffle_key = jax.random.split(jax.random.key(config.seed))
    variables = model.init(init_key, jnp.zeros((1, dim), jnp.float32))
    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)
    step_fn = jax.jit(lambda *state: _train_step(model, tx, *state), donate_argnums=(0, 1, 2))

    history = []
    step = 0
    for epoch in range(config.epochs):
        losses = []
        for rows in epoch_batch_indices(shuffle_key, epoch, num_examples, config.batch_size):
            features = np.asarray(train_features[rows], dtype=np.float32)
            params, batch_stats, opt_state, loss = step_fn(params, batch_stats, opt_state, features,
                                                           train_labels[rows])
            losses.append(loss)
            step += 1
        train_loss = float(np.mean(jax.device_get(losses)))
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"linear probe loss became {train_loss} in epoch {epoch + 1}")
        entry = {"epoch": epoch + 1, "step": step, "train_loss": train_loss,
                 "learning_rate": float(schedule(step - 1))}
        if eval_features is not None:
            metrics = evaluate_linear_probe({"params": params, "batch_stats": batch_stats}, eval_features,
                                            eval_labels, config.eval_batch_size)
            entry.update(eval_top1=metrics["top1"], eval_top5=metrics["top5"])
        history.append(entry)
        if log_fn is not None:
            log_fn(epoch + 1, entry)
    return {"params": params, "batch_stats": batch_stats}, history


@jax.jit
def _correct_counts(variables, features, labels, valid):
    """(top-1, top-k) correct among valid rows; k = min(5, classes) as top-5 needs 5 classes."""
    num_classes = variables["params"]["head"]["kernel"].shape[1]
    logits = LinearProbe(num_classes).apply(variables, features, train=False)
    _, top = jax.lax.top_k(logits, min(TOP_K, num_classes))
    hits = top == labels[:, None]
    top1 = jnp.sum(hits[:, 0] & valid, dtype=jnp.int32)
    topk = jnp.sum(jnp.any(hits, axis=1) & valid, dtype=jnp.int32)
    return top1, topk


def evaluate_linear_probe(variables: dict, features: np.ndarray, labels: np.ndarray, batch_size: int) -> dict:
    """Top-1 / top-5 accuracy (fractions) over every row exactly once, with BN running statistics.

    The last partial batch is zero-padded to `batch_size` and its padding masked out, so one
    compiled shape serves the whole pass. With fewer than 5 classes, top5 is top-`num_classes`.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    num_classes = variables["params"]["head"]["kernel"].shape[1]
    features, labels = _check_dataset(features, labels, num_classes, "eval")
    num_examples = features.shape[0]
    if num_examples == 0:
        raise ValueError("cannot evaluate on an empty set")
    counts = []
    for start in range(0, num_examples, batch_size):
        chunk = np.asarray(features[start:start + batch_size], dtype=np.float32)
        chunk_labels = labels[start:start + batch_size]
        size = chunk.shape[0]
        pad = batch_size - size
        valid = np.arange(batch_size) < size
        chunk = np.pad(chunk, ((0, pad), (0, 0)))
        chunk_labels = np.pad(chunk_labels, (0, pad))
        counts.append(_correct_counts(variables, chunk, chunk_labels, valid))
    top1, top5 = np.sum(np.asarray(jax.device_get(counts), dtype=np.int64), axis=0)
    return {"top1": float(top1) / num_examples, "top5": float(top5) / num_examples, "num_examples": num_examples}
