"""MaskGIT over TiTok tokens: masked-token training on pre-tokenized data, sampling, eval.

Batches are {"tokens": (B, K) int32, "label": (B,) int32}. The frozen tokenizer (an export named by
`config.tokenizer.export_dir`) is only used host-side to turn sampled tokens into images.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from titok_var.generation.maskgit_sampling import SamplingSettings, sample_tokens
from titok_var.losses import masked_tokens
from titok_var.models.maskgit import ImageBert, UViTBert
from titok_var.sharding import mesh as mesh_lib
from titok_var.tasks.titok import compute_dtype

ARCHITECTURES = {"imagebert": ImageBert, "uvit": UViTBert}


def build_generator(model_config):
    fields = dict(model_config)
    arch = fields.pop("arch")
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown generator arch {arch!r}; expected one of {sorted(ARCHITECTURES)}")
    fields["dtype"] = compute_dtype(fields.get("dtype", "float32"))
    if arch == "uvit":  # the U-ViT generator has no dropout
        fields.pop("dropout_rate", None)
        fields.pop("attention_dropout_rate", None)
    return ARCHITECTURES[arch](**fields)


def sampling_settings(config) -> SamplingSettings:
    return SamplingSettings(**dict(config.sampling))


class MaskGitTask:
    """Trains the bidirectional generator; evaluates masked-token loss/accuracy and samples a grid."""

    def __init__(self, config):
        self.config = config
        self.model = build_generator(config.model)
        self.settings = sampling_settings(config)
        if config.data.name != "tokens":
            raise ValueError(f"the generator trains on pre-tokenized data (data.name='tokens'), got {config.data.name!r}")

    @property
    def num_classes(self) -> int:
        return self.config.model.num_classes

    def init_params(self, rng):
        tokens = jnp.zeros((1, self.config.model.seq_len), jnp.int32)
        return self.model.init(rng, tokens, jnp.zeros((1,), jnp.int32), deterministic=True)["params"]

    def trainable_mask(self):
        return None

    def _check_tokens(self, tokens):
        if tokens.shape[1] != self.config.model.seq_len:
            raise ValueError(
                f"token sequences of length {tokens.shape[1]} do not fit a generator of seq_len "
                f"{self.config.model.seq_len}: the shards come from another tokenizer"
            )

    def _masked_loss(self, params, batch, key, *, dropout_key=None):
        tokens, labels = batch["tokens"], batch["label"]
        self._check_tokens(tokens)
        loss_config = self.config.loss
        inputs, labels, mask = masked_tokens.prepare_inputs(
            key, tokens, labels, mask_token_id=self.model.mask_token_id, null_label=self.model.null_label,
            schedule=loss_config.mask_schedule, label_dropout=loss_config.label_dropout if dropout_key is not None else 0.0,
        )
        rngs = {} if dropout_key is None else {"dropout": dropout_key}
        logits = self.model.apply({"params": params}, inputs, labels, deterministic=dropout_key is None, rngs=rngs)
        return masked_tokens.masked_token_loss(
            logits, tokens, mask, label_smoothing=loss_config.label_smoothing,
            unmasked_weight=loss_config.unmasked_weight,
        )

    def loss_fn(self, params, batch, rng, step):
        del step
        mask_key, dropout_key = jax.random.split(rng)
        return self._masked_loss(params, batch, mask_key, dropout_key=dropout_key)

    def sample(self, params, labels, key):
        """(B,) class ids -> (B, K) tokens, one jitted MaskGIT decode."""
        def logits_fn(tokens, cond):
            return self.model.apply({"params": params}, tokens, cond, deterministic=True)

        return sample_tokens(logits_fn, labels, key, seq_len=self.config.model.seq_len,
                             mask_token_id=self.model.mask_token_id, null_label=self.model.null_label,
                             settings=self.settings)

    def eval_step(self, params, batch):
        # A fixed masking key: every evaluation of a checkpoint scores the same masks.
        key = jax.random.key(self.config.eval.seed)
        _, metrics = self._masked_loss(params, batch, key)
        weights = batch["mask"].astype(jnp.float32)
        count = jnp.sum(weights)
        sums = {"count": count, "loss": metrics["loss"] * count,
                "masked_accuracy": metrics["masked_accuracy"] * count}
        n = self.config.eval.grid_images
        labels = jnp.arange(n, dtype=jnp.int32) % self.num_classes
        preview = {"tokens": self.sample(params, labels, jax.random.key(self.config.eval.seed))}
        return sums, preview

    def summarize_eval(self, sums):
        count = max(float(sums["count"]), 1.0)
        return {"masked_token_loss": float(sums["loss"]) / count,
                "masked_token_accuracy": float(sums["masked_accuracy"]) / count,
                "num_examples": float(sums["count"])}

    @functools.cached_property
    def tokenizer(self):
        """(jitted decode(params, tokens), params) of the tokenizer export, loaded on first use."""
        from titok_var.tools.export import load_exported

        # Data-parallel over this host's devices, with the standard axis names so the active
        # sharding rules resolve inside the tokenizer too.
        mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.local_devices())
        task, params, config = load_exported(self.config.tokenizer.export_dir, mesh=mesh)
        if config.model.num_latent_tokens != self.config.model.seq_len:
            raise ValueError(
                f"tokenizer {self.config.tokenizer.export_dir} makes {config.model.num_latent_tokens} tokens, "
                f"the generator expects {self.config.model.seq_len}"
            )
        if config.model.codebook_size != self.config.model.codebook_size:
            raise ValueError(
                f"tokenizer codebook has {config.model.codebook_size} codes, the generator "
                f"{self.config.model.codebook_size}"
            )
        if not hasattr(task, "decode_tokens"):
            raise ValueError(f"{self.config.tokenizer.export_dir} holds a {config.model_name!r} export, not a tokenizer")
        jitted = jax.jit(task.decode_tokens)

        def decode(p, tokens):
            # Runs on the tokenizer's own mesh, whatever mesh the generator is trained on.
            with jax.set_mesh(mesh):
                return jitted(p, jax.device_put(tokens, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())))

        return decode, params

    def decode_samples(self, tokens) -> np.ndarray:
        """(B, K) tokens -> (B, H, W, 3) images in [0, 1] with the frozen tokenizer."""
        decode, params = self.tokenizer
        images = np.asarray(decode(params, np.asarray(tokens)))
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"the tokenizer decoded tokens {np.shape(tokens)} to {images.shape}, not images")
        return images

    def preview_rows(self, preview):
        return [self.decode_samples(np.asarray(preview["tokens"]))]

