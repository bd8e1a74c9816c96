"""VAR next-scale prediction over VQVAE token maps: training, eval, sampling.

Batches are {"tokens": (B, L) int32 (all scales flattened coarse to fine), "label": (B,)} from
pre-tokenized shards (data.name="tokens"), or {"image", "label"} when the VQVAE tokenizes every
batch inside the step (`VarOnlineTokensTask`, as the official trainer: a fresh random crop of
each image per epoch). The frozen VQVAE is an export named by `config.tokenizer.export_dir`; its
quantizer (codebook + phi, ~0.2M parameters) builds the teacher-forcing input inside the train
step as host constants, and its decoder turns sampled f_hat into images on its own mesh.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from titok_var.generation.var_sampling import QuantizerOps, VarSamplingSettings, sample_scales
from titok_var.models.var import VAR, scale_spans
from titok_var.models.var_vqvae import VQVAE
from titok_var.quantizers.multiscale import MultiScaleResidualQuantizer, random_host_params
from titok_var.sharding import mesh as mesh_lib
from titok_var.tasks.titok import compute_dtype
from titok_var.tasks.var_vqvae import split_token_maps


def build_var(model_config) -> VAR:
    fields = dict(model_config)
    fields["dtype"] = compute_dtype(fields.get("dtype", "float32"))
    fields["patch_nums"] = tuple(int(p) for p in fields["patch_nums"])
    return VAR(**fields)


class VarTask:
    """Trains VAR with teacher forcing (uniform CE over all L tokens); samples with CFG + top-k/p."""

    def __init__(self, config):
        self.config = config
        self.model = build_var(config.model)
        self.patch_nums = tuple(int(p) for p in config.model.patch_nums)
        self.settings = VarSamplingSettings(**dict(config.sampling))

    @classmethod
    def for_config(cls, config) -> "VarTask":
        """Pre-tokenized shards (data.name="tokens") or images tokenized in the step (any image data)."""
        return cls(config) if config.data.name == "tokens" else VarOnlineTokensTask(config)

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    # -- the frozen VQVAE -------------------------------------------------------------------

    @functools.cached_property
    def _vqvae(self):
        """(task, host params, config) of the VQVAE export, checked against this model; loaded
        once, possibly while the train step is being traced (hence host arrays)."""
        from titok_var.tools.export import load_exported_to_host

        task, params, config = load_exported_to_host(self.config.tokenizer.export_dir)
        if config.model_name != "var_vqvae":
            raise ValueError(f"{self.config.tokenizer.export_dir} holds a {config.model_name!r} export, not a VAR VQVAE")
        vq = task.model
        mismatches = [
            f"{name}: tokenizer {theirs}, VAR {ours}"
            for name, theirs, ours in (
                ("patch_nums", tuple(vq.patch_nums), self.patch_nums),
                ("codebook_size/vocab_size", vq.codebook_size, self.model.vocab_size),
                ("code_dim/vae_channels", vq.code_dim, self.model.vae_channels),
            ) if theirs != ours
        ]
        if mismatches:
            raise ValueError(f"VQVAE export {self.config.tokenizer.export_dir} does not fit this VAR: "
                             + "; ".join(mismatches))
        return task, params, config

    def use_random_quantizer(self, seed: int) -> None:
        """Benchmarks and ahead-of-time compilation only: a random quantizer of this VAR's shapes
        stands in for the VQVAE export's (teacher input and sampling then cost the same, but their
        values mean nothing). Call before the first trace."""
        module = MultiScaleResidualQuantizer(codebook_size=self.model.vocab_size, code_dim=self.model.vae_channels,
                                             patch_nums=self.patch_nums)
        self.__dict__["_quantizer"] = (module, random_host_params(module, seed))  # fills the cached property

    @functools.cached_property
    def _quantizer(self):
        """(module, host-numpy params) of the VQVAE's quantizer: small enough to be jit constants."""
        task, params, _ = self._vqvae
        vq = task.model
        module = MultiScaleResidualQuantizer(
            codebook_size=vq.codebook_size, code_dim=vq.code_dim, patch_nums=tuple(vq.patch_nums),
            beta=vq.beta, quant_resi=vq.quant_resi, share_quant_resi=vq.share_quant_resi)
        return module, params["quantize"]

    def teacher_input(self, tokens):
        """(B, L) tokens -> (B, L - 1, C) teacher-forcing input (each scale's f_hat, area-resized)."""
        module, params = self._quantizer
        maps = split_token_maps(tokens, self.patch_nums)
        return module.apply({"params": params}, maps, method=MultiScaleResidualQuantizer.indices_to_var_input)

    def quantizer_ops(self) -> QuantizerOps:
        module, params = self._quantizer
        bound = module.bind({"params": params})
        return QuantizerOps(
            lookup=bound.lookup, codebook=lambda: jnp.asarray(params["embedding"]),
            next_input=bound.next_autoregressive_input, full_size=bound.full_size, code_dim=module.code_dim)

    # -- training ---------------------------------------------------------------------------

    def init_params(self, rng):
        length = self.model.num_tokens - self.model.first_l
        var_input = jnp.zeros((1, length, self.model.vae_channels), jnp.float32)
        return self.model.init(rng, jnp.zeros((1,), jnp.int32), var_input)["params"]

    def trainable_mask(self):
        return None

    def _check_tokens(self, tokens):
        if tokens.shape[1] != self.model.num_tokens:
            raise ValueError(
                f"token rows of length {tokens.shape[1]} do not fit VAR with patch_nums {self.patch_nums} "
                f"(L = {self.model.num_tokens}): the shards come from another tokenizer"
            )

    def _token_losses(self, params, batch, label_key, label_dropout, dropout_key=None):
        """Per-token CE and correctness (B, L) with `label_dropout` of labels set to the null class."""
        tokens, labels = batch["tokens"], batch["label"]
        self._check_tokens(tokens)
        drop = jax.random.uniform(label_key, labels.shape) < label_dropout
        labels = jnp.where(drop, self.num_classes, labels)
        rngs = {} if dropout_key is None else {"dropout": dropout_key}
        logits = self.model.apply({"params": params}, labels, self.teacher_input(tokens),
                                  deterministic=dropout_key is None, rngs=rngs)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens)
        correct = (jnp.argmax(logits, axis=-1) == tokens).astype(jnp.float32)
        return ce, correct

    def loss_fn(self, params, batch, rng, step):
        del step
        label_key, dropout_key = jax.random.split(rng)
        ce, correct = self._token_losses(params, batch, label_key, self.config.loss.label_dropout, dropout_key)
        last_begin = scale_spans(self.patch_nums)[-1][0]
        metrics = {
            "token_accuracy": jnp.mean(correct),
            "last_scale_loss": jnp.mean(ce[:, last_begin:]),
            "last_scale_accuracy": jnp.mean(correct[:, last_begin:]),
        }
        return jnp.mean(ce), metrics  # uniform 1/L weight per token, as the official trainer

    # -- eval -------------------------------------------------------------------------------

    def eval_step(self, params, batch):
        # The official validation keeps label dropout on; a fixed key scores the same labels every time.
        label_key = jax.random.key(self.config.eval.seed)
        ce, correct = self._token_losses(params, batch, label_key, self.config.loss.eval_label_dropout)
        weights = batch["mask"].astype(jnp.float32)
        spans = scale_spans(self.patch_nums)
        sums = {
            "count": jnp.sum(weights),
            "loss": jnp.sum(jnp.mean(ce, axis=1) * weights),
            "accuracy": jnp.sum(jnp.mean(correct, axis=1) * weights),
            "scale_loss": jnp.stack([jnp.sum(jnp.mean(ce[:, b:e], axis=1) * weights) for b, e in spans]),
            "scale_accuracy": jnp.stack([jnp.sum(jnp.mean(correct[:, b:e], axis=1) * weights) for b, e in spans]),
        }
        n = self.config.eval.grid_images
        labels = jnp.arange(n, dtype=jnp.int32) % self.num_classes
        preview = {"samples": self.sample(params, labels, jax.random.key(self.config.eval.seed))}
        return sums, preview

    def summarize_eval(self, sums):
        count = max(float(sums["count"]), 1.0)
        metrics = {"loss": float(sums["loss"]) / count, "token_accuracy": float(sums["accuracy"]) / count,
                   "num_examples": float(sums["count"])}
        for pn, loss, acc in zip(self.patch_nums, np.asarray(sums["scale_loss"]), np.asarray(sums["scale_accuracy"])):
            metrics[f"loss_scale_{pn}x{pn}"] = float(loss) / count
            metrics[f"accuracy_scale_{pn}x{pn}"] = float(acc) / count
        metrics["last_scale_loss"] = metrics[f"loss_scale_{self.patch_nums[-1]}x{self.patch_nums[-1]}"]
        return metrics

    # -- sampling ---------------------------------------------------------------------------

    def sample(self, params, labels, key, *, known_tokens=None, keep_masks=None):
        """(B,) labels -> f_hat (B, h, w, C) of the sampled images (decode with `decode_samples`).

        f_hat rather than token ids, because the `more_smooth` path mixes codes softly."""
        _, f_hat = sample_scales(self.model, params, self.quantizer_ops(), labels, key, self.settings,
                                 known_tokens=known_tokens, keep_masks=keep_masks)
        return f_hat

    def sample_tokens(self, params, labels, key):
        """(B,) labels -> (B, L) sampled token ids (hard codes; ignores `more_smooth`)."""
        tokens, _ = sample_scales(self.model, params, self.quantizer_ops(), labels, key, self.settings)
        return tokens

    @functools.cached_property
    def _decoder(self):
        task, host_params, _ = self._vqvae
        # Data-parallel over this host's devices with the standard axis names, whatever mesh VAR uses.
        mesh = mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.local_devices())
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        params = jax.device_put(host_params, replicated)
        jitted = jax.jit(lambda p, f: task.model.apply({"params": p}, f, method=VQVAE.fhat_to_images))

        def decode(f_hat):
            with jax.set_mesh(mesh):
                return jitted(params, jax.device_put(np.asarray(f_hat, np.float32), replicated))

        return decode

    def decode_samples(self, f_hat) -> np.ndarray:
        """f_hat (B, h, w, C) -> images (B, H, W, 3) in [0, 1] with the frozen VQVAE decoder."""
        return np.clip(np.asarray(self._decoder(f_hat)), 0.0, 1.0)

    def preview_rows(self, preview):
        return [self.decode_samples(np.asarray(preview["samples"]))]


# Parts of the VQVAE that turn images into token maps (the decoder stays out of the train state).
_ENCODING_PARAMS = ("encoder", "quant_conv", "quantize")


class VarOnlineTokensTask(VarTask):
    """VAR over image batches: the frozen VQVAE encoder (in the train state's `task_state`, loaded
    from the export before the first step and replicated) tokenizes each batch inside the step, so
    every epoch sees the data pipeline's fresh random crops, as the official trainer does.
    Tokens equal pre-tokenization's for the same pixels (same function, same weights)."""

    eval_uses_task_state = True  # eval batches are images too

    def __init__(self, config):
        super().__init__(config)
        if config.data.name == "tokens":
            raise ValueError("VarOnlineTokensTask trains on images; data.name='tokens' is the pre-tokenized task")

    def _encoder_shapes(self):
        from titok_var.tools.export import abstract_export_params

        vq_task, config = self._vqvae_task_and_config
        if config.data.image_size != self.config.data.image_size:
            raise ValueError(f"data.image_size {self.config.data.image_size} differs from the VQVAE export's "
                             f"{config.data.image_size} ({self.config.tokenizer.export_dir})")
        shapes = abstract_export_params(vq_task, config)
        return {name: shapes[name] for name in _ENCODING_PARAMS}

    @functools.cached_property
    def _vqvae_task_and_config(self):
        from titok_var.tools.export import read_exported_task

        return read_exported_task(self.config.tokenizer.export_dir)

    def init_task_state(self, rng):
        """Zeros shaped like the VQVAE's encoding parameters (the export replaces them)."""
        del rng
        return {"vqvae": jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), self._encoder_shapes())}

    def initial_overrides(self):
        _, params, _ = self._vqvae
        return {"task_state": {"vqvae": {name: params[name] for name in _ENCODING_PARAMS}}}

    def tokenize(self, task_state, images):
        """Images in [0, 1] -> (B, L) token ids with the frozen VQVAE (no gradient)."""
        vq_task, _ = self._vqvae_task_and_config
        return jax.lax.stop_gradient(vq_task.encode_tokens(jax.lax.stop_gradient(task_state["vqvae"]), images))

    def _as_tokens(self, batch, task_state):
        tokens = self.tokenize(task_state, batch["image"])
        return {**{k: v for k, v in batch.items() if k != "image"}, "tokens": tokens}

    def loss_fn(self, params, batch, rng, step, task_state=None):
        loss, metrics = super().loss_fn(params, self._as_tokens(batch, task_state), rng, step)
        return loss, (metrics, {})

    def update_task_state(self, task_state, outputs, batch, rng, step):
        return task_state, {}

    def eval_step(self, params, batch, task_state):
        return super().eval_step(params, self._as_tokens(batch, task_state))
