"""MaskGIT generators over TiTok tokens (bytedance/1d-tokenizer `modeling/maskgit.py`).

Both models read the sequence [class token, image token 1 .. image token N] and return logits over
the K codebook entries for the N image positions (the class position is dropped; there are no
logits for the mask or class ids). The shared vocabulary of the embedding table is

    0 .. K-1            image tokens (the TiTok codebook)
    K                   [MASK]                      -> `mask_token_id`
    K+1 .. K+C          class c is id c + K + 1     (C = num_classes, 1000 for ImageNet)
    K+C+1               the null class              -> label `null_label` = C, used for CFG and
                                                       for class-label dropout in training

so the table has K + C + 2 rows. Callers pass raw labels in [0, C] (C meaning "no class"); the
models shift them into the vocabulary themselves, exactly as the official forward does.

* `ImageBert` (TiTok-L-32 and B-64): HuggingFace `BertModel` without pooler: word + learned
  absolute position + token-type-0 embeddings, embedding LayerNorm, post-LN encoder layers, exact
  GELU, LayerNorm eps 1e-12, hidden and attention-probability dropout, then a plain Linear LM head.
  Submodule names follow the torch state dict (`embeddings/word_embeddings`,
  `encoder/layer_{i}/attention/self/query`, ..., `lm_head`) so `tools/convert_maskgit.py` is a
  rename plus transposes.
* `UViTBert` (TiTok-S-128): U-ViT with depth//2 input blocks, a middle block and depth//2 output
  blocks joined by LIFO long skips through `skip_linear(concat[x, skip])`; pre-LN, eps 1e-5, no
  qkv bias, no dropout, a final LayerNorm and the LM head.

Every parameter carries logical axis names from `configs/common.sharding_rules`; activations are
constrained to (act_batch, act_length, act_embed / act_mlp / act_heads, act_kv).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from titok_var.sharding import logical

Dtype = Any

BERT_LAYER_NORM_EPS = 1e-12
UVIT_LAYER_NORM_EPS = 1e-5

# Generator architectures of the released models (hidden, depth, heads, MLP width, dropout).
GENERATOR_VARIANTS = {
    "imagebert": {"hidden_size": 768, "depth": 24, "num_heads": 16, "mlp_dim": 3072,
                  "dropout_rate": 0.1, "attention_dropout_rate": 0.1},
    "uvit": {"hidden_size": 1024, "depth": 20, "num_heads": 16, "mlp_dim": 4096},
}
# Which generator each TiTok variant uses, and its token count N.
TOKENIZER_GENERATORS = {
    "L-32": ("imagebert", 32),
    "B-64": ("imagebert", 64),
    "S-128": ("uvit", 128),
}

_ACT = ("act_batch", "act_length", "act_embed")


def _normal(stddev: float = 0.02):
    return nn.initializers.normal(stddev)


def _dense(features, in_name, out_name, name, dtype, *, use_bias=True, init=None):
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        kernel_init=nn.with_logical_partitioning(init or _normal(), (in_name, out_name)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (out_name,)),
        name=name,
    )


def _layer_norm(epsilon, name, dtype):
    return nn.LayerNorm(
        epsilon=epsilon,
        dtype=dtype,
        use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name=name,
    )


def _embed(num, features, names, name, dtype, init=None):
    return nn.Embed(
        num,
        features,
        dtype=dtype,
        embedding_init=nn.with_logical_partitioning(init or _normal(), names),
        name=name,
    )


def input_ids(tokens, labels, codebook_size: int):
    """[class id, tokens]: (B, N) tokens in [0, K] and (B,) labels in [0, C] -> (B, N + 1) ids."""
    if tokens.ndim != 2 or labels.shape != tokens.shape[:1]:
        raise ValueError(f"expected tokens (B, N) and labels (B,), got {tokens.shape} and {labels.shape}")
    class_ids = labels.astype(jnp.int32) + codebook_size + 1
    return jnp.concatenate([class_ids[:, None], tokens.astype(jnp.int32)], axis=1)


class _VocabMixin:
    """Vocabulary layout shared by the generators (fields codebook_size and num_classes)."""

    @property
    def mask_token_id(self) -> int:
        return self.codebook_size

    @property
    def null_label(self) -> int:
        """The label meaning "no class" (vocabulary id codebook_size + num_classes + 1)."""
        return self.num_classes

    @property
    def vocab_size(self) -> int:
        return self.codebook_size + self.num_classes + 2


# --------------------------------------------------------------------------------------------
# ImageBert: HuggingFace BERT encoder (post-LN) + Linear LM head.


class BertEmbeddings(nn.Module):
    vocab_size: int
    max_positions: int
    hidden_size: int
    type_vocab_size: int = 2
    dropout_rate: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, ids, deterministic: bool):
        length = ids.shape[1]
        if length > self.max_positions:
            raise ValueError(f"sequence of {length} ids exceeds max_position_embeddings {self.max_positions}")
        words = _embed(self.vocab_size, self.hidden_size, ("vocab", "embed"), "word_embeddings", self.dtype)(ids)
        positions = _embed(self.max_positions, self.hidden_size, ("length", "embed"), "position_embeddings",
                           self.dtype)(jnp.arange(length))
        # token_type_ids default to 0 in the official forward: row 0 is added everywhere.
        token_type = _embed(self.type_vocab_size, self.hidden_size, (None, "embed"), "token_type_embeddings",
                            self.dtype)(jnp.zeros((), jnp.int32))
        h = words + positions[None] + token_type
        h = _layer_norm(BERT_LAYER_NORM_EPS, "LayerNorm", self.dtype)(h)
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        return logical.constrain(h, _ACT)


class BertSelfAttention(nn.Module):
    """Softmax(q k^T / sqrt(d)) v with dropout on the probabilities; q/k/v Linear with bias."""

    num_heads: int
    attention_dropout_rate: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool):
        batch, length, width = x.shape
        if width % self.num_heads:
            raise ValueError(f"hidden size {width} is not divisible by num_heads {self.num_heads}")
        head_dim = width // self.num_heads

        def project(name):
            out = _dense(width, "embed", "heads", name, self.dtype)(x)
            return out.reshape(batch, length, self.num_heads, head_dim)

        query, key, value = project("query"), project("key"), project("value")
        scores = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
        probs = jax.nn.softmax(scores / math.sqrt(head_dim), axis=-1)
        probs = nn.Dropout(self.attention_dropout_rate)(probs, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), value)
        out = logical.constrain(out, ("act_batch", "act_length", "act_heads", "act_kv"))
        return out.reshape(batch, length, width)


class BertResidualOutput(nn.Module):
    """LayerNorm(residual + dropout(dense(h))): BERT's post-LN "output" sub-block."""

    hidden_size: int
    in_name: str
    dropout_rate: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h, residual, deterministic: bool):
        h = _dense(self.hidden_size, self.in_name, "embed", "dense", self.dtype)(h)
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        return _layer_norm(BERT_LAYER_NORM_EPS, "LayerNorm", self.dtype)(h + residual)


class BertAttention(nn.Module):
    num_heads: int
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool):
        a = BertSelfAttention(self.num_heads, self.attention_dropout_rate, self.dtype, name="self")(x, deterministic)
        return BertResidualOutput(x.shape[-1], "heads", self.dropout_rate, self.dtype, name="output")(
            a, x, deterministic
        )


class BertIntermediate(nn.Module):
    mlp_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = _dense(self.mlp_dim, "embed", "mlp", "dense", self.dtype)(x)
        h = nn.gelu(h, approximate=False)
        return logical.constrain(h, ("act_batch", "act_length", "act_mlp"))


class BertLayer(nn.Module):
    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool):
        x = BertAttention(self.num_heads, self.dropout_rate, self.attention_dropout_rate, self.dtype,
                          name="attention")(x, deterministic)
        h = BertIntermediate(self.mlp_dim, self.dtype, name="intermediate")(x)
        x = BertResidualOutput(x.shape[-1], "mlp", self.dropout_rate, self.dtype, name="output")(h, x, deterministic)
        return logical.constrain(x, _ACT)


class BertEncoder(nn.Module):
    depth: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool):
        for i in range(self.depth):
            x = BertLayer(self.num_heads, self.mlp_dim, self.dropout_rate, self.attention_dropout_rate, self.dtype,
                          name=f"layer_{i}")(x, deterministic)
        return x


class ImageBert(_VocabMixin, nn.Module):
    """Bidirectional BERT generator (TiTok-L-32 / B-64): (tokens, labels) -> (B, N, K) logits.

    tokens: (B, N) int in [0, K] (K = mask); labels: (B,) int in [0, num_classes] (num_classes =
    null class). Dropout runs only with `deterministic=False` and an rng named "dropout".
    """

    codebook_size: int = 4096
    num_classes: int = 1000
    seq_len: int = 32
    hidden_size: int = 768
    depth: int = 24
    num_heads: int = 16
    mlp_dim: int = 3072
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    type_vocab_size: int = 2
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens, labels, deterministic: bool = True):
        ids = input_ids(tokens, labels, self.codebook_size)
        h = BertEmbeddings(self.vocab_size, self.seq_len + 1, self.hidden_size, self.type_vocab_size,
                           self.dropout_rate, self.dtype, name="embeddings")(ids, deterministic)
        h = BertEncoder(self.depth, self.num_heads, self.mlp_dim, self.dropout_rate, self.attention_dropout_rate,
                        self.dtype, name="encoder")(h, deterministic)
        logits = _dense(self.codebook_size, "embed", "vocab", "lm_head", self.dtype)(h[:, 1:])
        return logits.astype(jnp.float32)


# --------------------------------------------------------------------------------------------
# UViTBert: U-ViT blocks with long skips.


class PackedQKV(nn.Module):
    """One projection to (3, heads, head_dim): kernel (D, 3, H, d), the torch (3D, D) weight transposed."""

    num_heads: int
    head_dim: int
    use_bias: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        # A plain param, not nn.DenseGeneral: DenseGeneral initialises a flattened kernel, which
        # cannot carry the 4-D logical names under a mesh.
        shape = (x.shape[-1], 3, self.num_heads, self.head_dim)
        kernel = self.param("kernel", nn.with_logical_partitioning(
            nn.initializers.truncated_normal(0.02), ("embed", None, "heads", "kv")), shape, jnp.float32)
        out = jnp.einsum("bld,dkhe->blkhe", x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (None, "heads", "kv")),
                              shape[1:], jnp.float32)
            out = out + bias.astype(self.dtype)
        return out


class UViTAttention(nn.Module):
    """Self-attention with one packed qkv projection (no bias; output laid out (3, heads, head_dim))."""

    num_heads: int
    qkv_bias: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        batch, length, width = x.shape
        if width % self.num_heads:
            raise ValueError(f"hidden size {width} is not divisible by num_heads {self.num_heads}")
        head_dim = width // self.num_heads
        qkv = PackedQKV(self.num_heads, head_dim, self.qkv_bias, self.dtype, name="qkv")(x)
        # The official "flash" path computes attention in float32.
        qkv = qkv.astype(jnp.float32)
        out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
        out = logical.constrain(out, ("act_batch", "act_length", "act_heads", "act_kv"))
        out = out.reshape(batch, length, width).astype(self.dtype)
        return _dense(width, "heads", "embed", "proj", self.dtype, init=nn.initializers.truncated_normal(0.02))(out)


class UViTMlp(nn.Module):
    mlp_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.truncated_normal(0.02)
        h = _dense(self.mlp_dim, "embed", "mlp", "fc1", self.dtype, init=init)(x)
        h = nn.gelu(h, approximate=False)
        h = logical.constrain(h, ("act_batch", "act_length", "act_mlp"))
        return _dense(x.shape[-1], "mlp", "embed", "fc2", self.dtype, init=init)(h)


class UViTBlock(nn.Module):
    """[skip_linear(concat[x, skip])]; x + attn(norm1(x)); x + mlp(norm2(x))."""

    num_heads: int
    mlp_dim: int
    skip: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, skip=None):
        width = x.shape[-1]
        if self.skip:
            if skip is None:
                raise ValueError("this block has a skip_linear and needs the skip input")
            x = _dense(width, None, "embed", "skip_linear", self.dtype, init=nn.initializers.truncated_normal(0.02))(
                jnp.concatenate([x, skip], axis=-1)
            )
        x = x + UViTAttention(self.num_heads, dtype=self.dtype, name="attn")(
            _layer_norm(UVIT_LAYER_NORM_EPS, "norm1", self.dtype)(x)
        )
        x = x + UViTMlp(self.mlp_dim, self.dtype, name="mlp")(_layer_norm(UVIT_LAYER_NORM_EPS, "norm2", self.dtype)(x))
        return logical.constrain(x, _ACT)


class UViTBert(_VocabMixin, nn.Module):
    """U-ViT generator (TiTok-S-128): (tokens, labels) -> (B, N, K) logits.

    `depth` is the official `num_hidden_layers`: depth // 2 input blocks, one middle block and
    depth // 2 output blocks (21 blocks for depth 20). The official block ignores the configured
    dropout, so this model has none; `deterministic` is accepted for a uniform interface.
    """

    codebook_size: int = 4096
    num_classes: int = 1000
    seq_len: int = 128
    hidden_size: int = 1024
    depth: int = 20
    num_heads: int = 16
    mlp_dim: int = 4096
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens, labels, deterministic: bool = True):
        del deterministic  # no dropout in the official UViT blocks
        ids = input_ids(tokens, labels, self.codebook_size)
        length = ids.shape[1]
        if length > self.seq_len + 1:
            raise ValueError(f"sequence of {length} ids exceeds seq_len + 1 = {self.seq_len + 1}")
        init = nn.initializers.truncated_normal(0.02)
        h = _embed(self.vocab_size, self.hidden_size, ("vocab", "embed"), "embeddings", self.dtype, init)(ids)
        pos_embed = self.param(
            "pos_embed", nn.with_logical_partitioning(init, (None, "length", "embed")),
            (1, self.seq_len + 1, self.hidden_size), jnp.float32,
        )
        h = logical.constrain(h + pos_embed[:, :length].astype(self.dtype), _ACT)
        half = self.depth // 2
        skips = []
        for i in range(half):
            h = UViTBlock(self.num_heads, self.mlp_dim, dtype=self.dtype, name=f"in_blocks_{i}")(h)
            skips.append(h)
        h = UViTBlock(self.num_heads, self.mlp_dim, dtype=self.dtype, name="mid_block")(h)
        for i in range(half):
            h = UViTBlock(self.num_heads, self.mlp_dim, skip=True, dtype=self.dtype, name=f"out_blocks_{i}")(
                h, skips.pop()
            )
        h = _layer_norm(UVIT_LAYER_NORM_EPS, "norm", self.dtype)(h)
        logits = _dense(self.codebook_size, "embed", "vocab", "lm_head", self.dtype, init=init)(h[:, 1:])
        return logits.astype(jnp.float32)


def build_generator(tokenizer_variant: str, **overrides) -> nn.Module:
    """The released generator for a TiTok variant ("L-32", "B-64", "S-128"); kwargs override fields."""
    if tokenizer_variant not in TOKENIZER_GENERATORS:
        raise ValueError(f"unknown TiTok variant {tokenizer_variant!r}; known: {sorted(TOKENIZER_GENERATORS)}")
    kind, seq_len = TOKENIZER_GENERATORS[tokenizer_variant]
    fields = dict(GENERATOR_VARIANTS[kind], seq_len=seq_len)
    fields.update(overrides)
    return (ImageBert if kind == "imagebert" else UViTBert)(**fields)
