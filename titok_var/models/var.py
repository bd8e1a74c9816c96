"""VAR transformer (FoundationVision/VAR `models/var.py`, `models/basic_var.py`): next-scale
prediction over the multi-scale token maps of `titok_var.models.var_vqvae.VQVAE`.

The sequence is [start token(s) | scale 1 | ... | scale K-1], L = sum p^2 tokens:
- start: class_emb(label) + pos_start (label num_classes is the null class);
- scale k >= 1: word_embed(area-resized cumulative f_hat after scales < k) (VQVAE
  `indices_to_var_input`);
- every token adds lvl_embed(its scale id) + pos_1LC[its position].
The condition is the raw class embedding. Each block is AdaLN-modulated:
    g1, g2, s1, s2, b1, b2 = ada_lin(silu(cond))        (or ada_gss + shared_ada_lin(silu(cond)))
    x += drop_path(attn(LN(x) (1 + s1) + b1) * g1)      (gate gamma, not 1 + gamma)
    x += drop_path(ffn(LN(x) (1 + s2) + b2) * g2)
with LayerNorm eps 1e-6 without affine. Attention: q/k/v from one bias-free projection plus
q_bias, v_bias (k has none); q and k L2-normalised, q scaled per head by
exp(min(scale_mul, ln 100)); softmax scale 1; block-causal mask (a token sees every token of its
own and coarser scales). Head: LN(x) (1 + scale) + shift from the raw condition, then Linear.

Training (`__call__`) runs all L tokens with the mask; sampling (`decode_scale`) runs one scale
at a time against a preallocated key/value cache (`init_kv_cache`), which gives the same logits.
Label dropout and classifier-free guidance belong to the caller.

Precision: parameters, embeddings, LayerNorms, AdaLN modulation and the residual stream are
float32; matmuls and attention run in `dtype` (the official model keeps the same parts in fp32
under fp16 autocast; the residual stays float32 here because bf16 has fewer mantissa bits than
fp16). Logits are float32.

Parameter names follow the torch state dict, so `tools/convert_var_transformer.py` is a rename:
`blocks_3/attn/mat_qkv/kernel` is `blocks.3.attn.mat_qkv.weight`, `blocks_3/ada_lin` is
`blocks.3.ada_lin.1`, `pos_1LC`, `scale_mul_1H11`, `ada_gss` keep their torch names and shapes.
"""

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from titok_var.quantizers.multiscale import VAR_PATCH_NUMS_256, token_count
from titok_var.sharding import logical

Dtype = Any

NORM_EPS = 1e-6           # LayerNorm epsilon of the official blocks and head
L2_NORM_EPS = 1e-12       # F.normalize's epsilon for q and k
MAX_SCALE_MUL = math.log(100.0)  # cap of the learned per-head log attention scale
INIT_SCALE_MUL = math.log(4.0)
ADALN_CHUNKS = 6          # [gamma1, gamma2, scale1, scale2, shift1, shift2]

_ACT = ("act_batch", "act_length", "act_embed")
_ACT_HEADS = ("act_batch", "act_length", "act_heads", "act_kv")


# ---------------------------------------------------------------------------------------------
# Token layout


def scale_ids(patch_nums: Sequence[int]) -> np.ndarray:
    """(L,) int32 scale index of every token (the official `lvl_1L` buffer)."""
    return np.concatenate([np.full(int(p) * int(p), si, np.int32) for si, p in enumerate(patch_nums)])


def scale_spans(patch_nums: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """(begin, end) token offsets of every scale (the official `begin_ends`)."""
    spans, cursor = [], 0
    for p in patch_nums:
        spans.append((cursor, cursor + int(p) * int(p)))
        cursor += int(p) * int(p)
    return tuple(spans)


def block_causal_mask(patch_nums: Sequence[int]) -> np.ndarray:
    """(L, L) bool: query i may attend to key j iff scale(j) <= scale(i)."""
    ids = scale_ids(patch_nums)
    return ids[:, None] >= ids[None, :]


# ---------------------------------------------------------------------------------------------
# Functional pieces


def layer_norm(x, eps: float = NORM_EPS):
    """LayerNorm without affine parameters, in float32 (torch autocast runs it in fp32 too)."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def l2_normalize(x, eps: float = L2_NORM_EPS):
    """x / max(||x||, eps) along the last axis, as torch's F.normalize."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


def modulate(x, scale, shift):
    return x * (1.0 + scale) + shift


def drop_path(x, rate: float, rng):
    """Stochastic depth per sample: the whole residual branch of a sample is zeroed with
    probability `rate`, survivors are scaled by 1 / (1 - rate) (timm's DropPath)."""
    if rate <= 0.0:
        return x
    keep = 1.0 - rate
    kept = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(kept, x / keep, jnp.zeros_like(x))


def _normal(std: float):
    return nn.initializers.normal(std)


def _chunk_scaled_normal(std: float, chunk_scales: Sequence[float]):
    """Normal(std) kernel whose output axis holds len(chunk_scales) equal chunks, chunk i scaled
    by chunk_scales[i] (AdaLN: small gamma rows, larger scale/shift rows)."""

    def init(key, shape, dtype=jnp.float32):
        width = shape[-1] // len(chunk_scales)
        factors = jnp.repeat(jnp.asarray(chunk_scales, dtype), width, total_repeat_length=shape[-1])
        return jax.random.normal(key, shape, dtype) * std * factors

    return init


def _dense(features: int, names, *, std: float, dtype, name: str | None = None, kernel_init=None,
           use_bias: bool = True):
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        kernel_init=nn.with_logical_partitioning(kernel_init or _normal(std), names),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (names[-1],)),
        name=name,
    )


def _adaln_chunk_scales(init_adaln: float, init_adaln_gamma: float) -> tuple[float, ...]:
    return (init_adaln_gamma,) * 2 + (init_adaln,) * 4


# ---------------------------------------------------------------------------------------------
# Modules


class QKVProjection(nn.Module):
    """Bias-free projection to (B, L, 3, heads, head_dim): kernel (C, 3, H, d) is the torch
    `mat_qkv.weight` (3C, C) transposed, its output ordered [q | k | v], head-major."""

    num_heads: int
    head_dim: int
    init_std: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        shape = (x.shape[-1], 3, self.num_heads, self.head_dim)
        kernel = self.param("kernel", nn.with_logical_partitioning(
            _normal(self.init_std), ("embed", None, "heads", "kv")), shape, jnp.float32)
        return jnp.einsum("bld,dkhe->blkhe", x.astype(self.dtype), kernel.astype(self.dtype))


class SelfAttention(nn.Module):
    """L2-normalised multi-head attention with a learned per-head temperature.

    Either a boolean `mask` (full sequence) or a key/value `cache` with the static offset of the
    current tokens: their keys/values are written there and every cached position before the
    end of the current tokens is attended to.
    """

    num_heads: int
    init_std: float
    proj_std: float
    dtype: Dtype = jnp.float32
    attention_impl: str | None = "xla"

    @nn.compact
    def __call__(self, x, *, mask=None, cache=None, cache_offset: int = 0):
        batch, length, width = x.shape
        heads, head_dim = self.num_heads, width // self.num_heads
        qkv = QKVProjection(heads, head_dim, self.init_std, self.dtype, name="mat_qkv")(x)
        q_bias = self.param("q_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("heads",)),
                            (width,), jnp.float32)
        v_bias = self.param("v_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("heads",)),
                            (width,), jnp.float32)
        scale_mul = self.param(
            "scale_mul_1H11",
            nn.with_logical_partitioning(nn.initializers.constant(INIT_SCALE_MUL), (None, "heads", None, None)),
            (1, heads, 1, 1), jnp.float32,
        )
        qkv = qkv.astype(jnp.float32)
        query = qkv[:, :, 0] + q_bias.reshape(heads, head_dim)
        key = qkv[:, :, 1]
        value = qkv[:, :, 2] + v_bias.reshape(heads, head_dim)
        temperature = jnp.exp(jnp.minimum(scale_mul.reshape(heads, 1), MAX_SCALE_MUL))
        query = l2_normalize(query) * temperature
        key = l2_normalize(key)
        query, key, value = (logical.constrain(t.astype(self.dtype), _ACT_HEADS) for t in (query, key, value))

        new_cache = None
        if cache is not None:
            end = cache_offset + length
            keys = cache["key"].at[:, cache_offset:end].set(key.astype(cache["key"].dtype))
            values = cache["value"].at[:, cache_offset:end].set(value.astype(cache["value"].dtype))
            new_cache = {"key": logical.constrain(keys, _ACT_HEADS), "value": logical.constrain(values, _ACT_HEADS)}
            key, value = keys[:, :end].astype(self.dtype), values[:, :end].astype(self.dtype)

        # q and k are unit vectors times the temperature already: softmax scale 1.
        out = jax.nn.dot_product_attention(query, key, value, mask=mask, scale=1.0,
                                           implementation=self.attention_impl)
        out = logical.constrain(out, _ACT_HEADS).reshape(batch, length, width)
        out = _dense(width, ("heads", "embed"), std=self.proj_std, dtype=self.dtype, name="proj")(out)
        return out, new_cache


class FFN(nn.Module):
    """fc1 -> tanh-approximate GELU -> fc2."""

    hidden: int
    init_std: float
    fc2_std: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = _dense(self.hidden, ("embed", "mlp"), std=self.init_std, dtype=self.dtype, name="fc1")(x)
        h = logical.constrain(nn.gelu(h, approximate=True), ("act_batch", "act_length", "act_mlp"))
        return _dense(x.shape[-1], ("mlp", "embed"), std=self.fc2_std, dtype=self.dtype, name="fc2")(h)


class AdaLNSelfAttn(nn.Module):
    """One VAR block. `cond` is the raw condition (B, D), or with shared AdaLN the shared
    modulation (B, 1, 6, C) that this block offsets by its own `ada_gss`."""

    num_heads: int
    mlp_dim: int
    depth: int
    init_std: float
    drop_path_rate: float = 0.0
    shared_adaln: bool = False
    init_adaln: float = 0.5
    init_adaln_gamma: float = 1e-5
    dtype: Dtype = jnp.float32
    attention_impl: str | None = "xla"

    def _modulation(self, cond, width: int):
        chunk_scales = _adaln_chunk_scales(self.init_adaln, self.init_adaln_gamma)
        if self.shared_adaln:
            def init_gss(key, shape, dtype=jnp.float32):
                factors = jnp.asarray(chunk_scales, dtype)[:, None]
                return jax.random.normal(key, shape, dtype) / math.sqrt(width) * factors

            gss = self.param("ada_gss", nn.with_logical_partitioning(init_gss, (None, None, None, "embed")),
                             (1, 1, ADALN_CHUNKS, width), jnp.float32)
            return gss + cond.astype(jnp.float32)
        ada = _dense(ADALN_CHUNKS * width, ("embed", "mlp"), std=self.init_std, dtype=self.dtype, name="ada_lin",
                     kernel_init=_chunk_scaled_normal(self.init_std, chunk_scales))(nn.silu(cond))
        return ada.astype(jnp.float32).reshape(-1, 1, ADALN_CHUNKS, width)

    @nn.compact
    def __call__(self, x, cond, *, mask=None, cache=None, cache_offset: int = 0, deterministic: bool = True):
        width = x.shape[-1]
        gamma1, gamma2, scale1, scale2, shift1, shift2 = jnp.unstack(self._modulation(cond, width), axis=2)
        residual_std = self.init_std / math.sqrt(2 * self.depth)
        active = self.drop_path_rate > 0.0 and not deterministic

        def branch(h, gamma):
            h = h.astype(jnp.float32) * gamma
            return drop_path(h, self.drop_path_rate, self.make_rng("dropout")) if active else h

        h = modulate(layer_norm(x), scale1, shift1).astype(self.dtype)
        h, cache = SelfAttention(self.num_heads, self.init_std, residual_std, self.dtype, self.attention_impl,
                                 name="attn")(h, mask=mask, cache=cache, cache_offset=cache_offset)
        x = x + branch(h, gamma1)
        h = modulate(layer_norm(x), scale2, shift2).astype(self.dtype)
        h = FFN(self.mlp_dim, self.init_std, residual_std, self.dtype, name="ffn")(h)
        x = x + branch(h, gamma2)
        return logical.constrain(x, _ACT), cache


class AdaLNBeforeHead(nn.Module):
    """LN(x) (1 + scale) + shift with [scale, shift] = ada_lin(silu(cond)) of the raw condition."""

    init_std: float
    init_adaln: float = 0.5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, cond):
        width = x.shape[-1]
        ada = _dense(2 * width, ("embed", "mlp"), std=self.init_std * self.init_adaln, dtype=self.dtype,
                     name="ada_lin")(nn.silu(cond))
        scale, shift = jnp.unstack(ada.astype(jnp.float32).reshape(-1, 1, 2, width), axis=2)
        return modulate(layer_norm(x), scale, shift)


def _concrete(x) -> np.ndarray | None:
    """Host values of x when they are known (not traced, all on this process), else None."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and x.is_fully_addressable:
        return np.asarray(x)
    return None


class VAR(nn.Module):
    """Class-conditional VAR transformer. Defaults: the released 256 px models (set `depth`).

    width defaults to 64 * depth, num_heads to depth, drop_path_rate to 0.1 * depth / 24 (rising
    linearly from 0 at block 0). `dtype` is the compute dtype; parameters are float32.
    `attention_impl` is jax.nn.dot_product_attention's implementation ("xla", "cudnn" or None).

    Methods (through `model.apply({"params": p}, ..., method=...)`):
    - `__call__(labels, var_input, deterministic=True)`: (B, L, vocab) training logits;
    - `decode_scale(labels, si, scale_input, cache)`: logits of scale si and the updated cache
      (start with `init_kv_cache(model, batch)`); si is a Python int.
    """

    depth: int
    num_classes: int = 1000
    vocab_size: int = 4096
    vae_channels: int = 32
    patch_nums: tuple = VAR_PATCH_NUMS_256
    width: int | None = None
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    drop_path_rate: float | None = None
    shared_adaln: bool = False
    init_adaln: float = 0.5
    init_adaln_gamma: float = 1e-5
    init_head: float = 0.02
    dtype: Dtype = jnp.float32
    attention_impl: str | None = "xla"

    # -- sizes ------------------------------------------------------------------------------

    @property
    def embed_dim(self) -> int:
        return int(self.width) if self.width is not None else 64 * self.depth

    @property
    def heads(self) -> int:
        return int(self.num_heads) if self.num_heads is not None else self.depth

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.heads

    @property
    def mlp_dim(self) -> int:
        return round(self.embed_dim * self.mlp_ratio)  # as the official FFN: Python round

    @property
    def num_tokens(self) -> int:
        return token_count(self.patch_nums)

    @property
    def first_l(self) -> int:
        """Tokens of the first scale, all predicted from the start token(s)."""
        return int(self.patch_nums[0]) ** 2

    @property
    def drop_path_rates(self) -> tuple[float, ...]:
        top = 0.1 * self.depth / 24 if self.drop_path_rate is None else float(self.drop_path_rate)
        return tuple(float(r) for r in np.linspace(0.0, top, self.depth))

    @property
    def init_std(self) -> float:
        return math.sqrt(1.0 / (3.0 * self.embed_dim))

    def _validate(self):
        if self.depth < 1:
            raise ValueError(f"VAR depth must be >= 1, got {self.depth}")
        if not self.patch_nums or any(int(p) < 1 for p in self.patch_nums):
            raise ValueError(f"patch_nums must be positive scale sides, got {self.patch_nums}")
        if self.embed_dim % self.heads:
            raise ValueError(f"width {self.embed_dim} is not divisible by num_heads {self.heads}")
        if self.attention_impl not in ("xla", "cudnn", None):
            raise ValueError(f"attention_impl must be 'xla', 'cudnn' or None, got {self.attention_impl!r}")

    # -- modules ----------------------------------------------------------------------------

    def setup(self):
        self._validate()
        width, std = self.embed_dim, self.init_std
        self.word_embed = _dense(width, (None, "embed"), std=std, dtype=jnp.float32)
        self.class_emb = nn.Embed(self.num_classes + 1, width, dtype=jnp.float32,
                                  embedding_init=nn.with_logical_partitioning(_normal(std), (None, "embed")))
        self.lvl_embed = nn.Embed(len(self.patch_nums), width, dtype=jnp.float32,
                                  embedding_init=nn.with_logical_partitioning(_normal(std), (None, "embed")))
        self.pos_start = self.param("pos_start", nn.with_logical_partitioning(_normal(std), (None, None, "embed")),
                                    (1, self.first_l, width), jnp.float32)
        self.pos_1LC = self.param("pos_1LC", nn.with_logical_partitioning(_normal(std), (None, "length", "embed")),
                                  (1, self.num_tokens, width), jnp.float32)
        if self.shared_adaln:
            self.shared_ada_lin = _dense(ADALN_CHUNKS * width, ("embed", "mlp"), std=std, dtype=self.dtype)
        self.blocks = [
            AdaLNSelfAttn(num_heads=self.heads, mlp_dim=self.mlp_dim, depth=self.depth, init_std=std,
                          drop_path_rate=rate, shared_adaln=self.shared_adaln, init_adaln=self.init_adaln,
                          init_adaln_gamma=self.init_adaln_gamma, dtype=self.dtype,
                          attention_impl=self.attention_impl)
            for rate in self.drop_path_rates
        ]
        self.head_nm = AdaLNBeforeHead(std, self.init_adaln, self.dtype)
        self.head = _dense(self.vocab_size, ("embed", "vocab"), std=std * self.init_head, dtype=self.dtype)

    # -- shared pieces ----------------------------------------------------------------------

    def _check_labels(self, labels):
        labels = jnp.asarray(labels)
        if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(f"labels must be a (batch,) integer array, got {labels.dtype} {tuple(labels.shape)}")
        values = _concrete(labels)
        if values is not None and values.size and (values.min() < 0 or values.max() > self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}] ({self.num_classes} = null class), "
                f"got values in [{values.min()}, {values.max()}]"
            )
        return labels.astype(jnp.int32)

    def _block_condition(self, cond):
        """What the blocks receive: the raw condition, or the shared AdaLN modulation."""
        if not self.shared_adaln:
            return cond
        shared = self.shared_ada_lin(nn.silu(cond)).astype(jnp.float32)
        return shared.reshape(-1, 1, ADALN_CHUNKS, self.embed_dim)

    def _level_position(self, begin: int, end: int):
        """lvl_embed(scale id) + pos_1LC for tokens [begin, end), (end - begin, C)."""
        ids = jnp.asarray(scale_ids(self.patch_nums)[begin:end])
        return self.lvl_embed(ids) + self.pos_1LC[0, begin:end]

    def _start_tokens(self, cond):
        return cond[:, None, :] + self.pos_start

    def _logits(self, x, cond):
        h = self.head_nm(x, cond)
        return self.head(h.astype(self.dtype)).astype(jnp.float32)

    # -- training ---------------------------------------------------------------------------

    def __call__(self, labels, var_input, *, deterministic: bool = True):
        """Teacher-forced logits (B, L, vocab_size), float32.

        labels: (B,) ints in [0, num_classes] (num_classes = null class; apply label dropout
        before). var_input: (B, L - first_l, vae_channels), the VQVAE `indices_to_var_input`.
        DropPath needs `deterministic=False` and an rng named "dropout".
        """
        labels = self._check_labels(labels)
        expected = (labels.shape[0], self.num_tokens - self.first_l, self.vae_channels)
        if tuple(var_input.shape) != expected:
            raise ValueError(
                f"var_input must have shape (batch, L - first_l, vae_channels) = {expected} for patch_nums "
                f"{tuple(self.patch_nums)}, got {tuple(var_input.shape)}"
            )
        cond = self.class_emb(labels)
        x = jnp.concatenate([self._start_tokens(cond), self.word_embed(jnp.asarray(var_input, jnp.float32))], axis=1)
        x = logical.constrain(x + self._level_position(0, self.num_tokens), _ACT)
        block_cond = self._block_condition(cond)
        mask = jnp.asarray(block_causal_mask(self.patch_nums))[None, None]
        for block in self.blocks:
            x, _ = block(x, block_cond, mask=mask, deterministic=deterministic)
        return self._logits(x, cond)

    # -- sampling ---------------------------------------------------------------------------

    def decode_scale(self, labels, si: int, scale_input, cache):
        """Logits (B, p_si^2, vocab_size) of scale si and the cache with its keys/values written.

        si = 0 reads the start token (scale_input None); si > 0 reads scale_input, the
        area-resized f_hat of scale si as (B, p^2, vae_channels) or (B, p, p, vae_channels)
        (VQVAE `next_autoregressive_input`). Scales must be decoded in order 0, 1, ...; the
        cache must come from `init_kv_cache`. No DropPath.
        """
        if not isinstance(si, int | np.integer) or not 0 <= si < len(self.patch_nums):
            raise ValueError(f"scale index must be a Python int in [0, {len(self.patch_nums)}), got {si!r}")
        si = int(si)
        labels = self._check_labels(labels)
        batch, side = labels.shape[0], int(self.patch_nums[si])
        _check_cache(cache, self, batch)
        begin, end = scale_spans(self.patch_nums)[si]
        cond = self.class_emb(labels)
        if si == 0:
            if scale_input is not None:
                raise ValueError("scale 0 starts from the class token: pass scale_input=None")
            x = self._start_tokens(cond)
        else:
            if scale_input is None:
                raise ValueError(f"scale {si} needs its input map (batch, {side * side}, {self.vae_channels})")
            scale_input = jnp.asarray(scale_input, jnp.float32)
            if scale_input.ndim == 4:
                scale_input = scale_input.reshape(scale_input.shape[0], -1, scale_input.shape[-1])
            if tuple(scale_input.shape) != (batch, side * side, self.vae_channels):
                raise ValueError(
                    f"scale {si} input must have shape {(batch, side * side, self.vae_channels)} or "
                    f"{(batch, side, side, self.vae_channels)}, got {tuple(scale_input.shape)}"
                )
            x = self.word_embed(scale_input)
        x = logical.constrain(x + self._level_position(begin, end), _ACT)
        block_cond = self._block_condition(cond)
        new_cache = []
        for block, layer_cache in zip(self.blocks, cache):
            x, layer_cache = block(x, block_cond, cache=layer_cache, cache_offset=begin)
            new_cache.append(layer_cache)
        return self._logits(x, cond), tuple(new_cache)


def init_kv_cache(model: VAR, batch_size: int, dtype: Dtype | None = None) -> tuple[dict, ...]:
    """Zeroed key/value cache of `model`: per block {"key", "value"} of shape
    (batch_size, L, heads, head_dim) in `dtype` (default the model's compute dtype)."""
    dtype = model.dtype if dtype is None else dtype
    shape = (int(batch_size), model.num_tokens, model.heads, model.head_dim)
    return tuple({"key": jnp.zeros(shape, dtype), "value": jnp.zeros(shape, dtype)} for _ in range(model.depth))


def _check_cache(cache, model: VAR, batch: int):
    expected = (batch, model.num_tokens, model.heads, model.head_dim)
    if not isinstance(cache, tuple | list) or len(cache) != model.depth:
        raise ValueError(f"cache must hold one entry per block ({model.depth}); build it with init_kv_cache")
    for layer in cache:
        for name in ("key", "value"):
            if name not in layer or tuple(layer[name].shape) != expected:
                got = tuple(layer[name].shape) if name in layer else "missing"
                raise ValueError(f"cache {name} must have shape {expected}, got {got}; build it with init_kv_cache")
