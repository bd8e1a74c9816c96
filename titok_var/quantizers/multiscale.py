"""VAR's multi-scale residual quantizer (VAR paper Sec. 3.2, Algorithms 1 and 2).

A feature map f (B, h, w, C) with h = w = patch_nums[-1] is tokenized coarse to fine. At scale k
the remaining residual is area-downsampled to (p_k, p_k), each position takes its nearest code
of a codebook shared by all scales, the code map is bicubic-upsampled back to (h, w), passed
through one of a few "phi" convolutions, added to the reconstruction f_hat and subtracted from
the residual. The last scale is used at full resolution, without any resizing.

Resizing reproduces torch's `F.interpolate` exactly (`jax.image.resize` does not): 'area' is
adaptive average pooling with overlapping integer bins, 'bicubic' is cubic convolution with
A = -0.75, half-pixel source coordinates (align_corners=False) and taps clamped at the border.
Both are separable linear maps, applied here as small (out, in) matrices along H and W.

Everything runs in float32 with full-precision matmuls, whatever the model's compute dtype.
Arrays are NHWC.
"""

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from titok_var.quantizers.vector_quantizer import straight_through, uniform_init

# Scale schedules of the released models (256 px and 512 px).
VAR_PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
VAR_PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)

BICUBIC_A = -0.75  # torch's cubic-convolution coefficient (jax.image.resize uses -0.5)
HIGHEST = jax.lax.Precision.HIGHEST


def token_count(patch_nums: Sequence[int]) -> int:
    """L = sum of p^2 over the scales (680 for the 256 px schedule)."""
    return sum(int(p) * int(p) for p in patch_nums)


# ---------------------------------------------------------------------------------------------
# torch-exact resizing


def _cubic_tap_weights(t: float, a: float) -> tuple[float, float, float, float]:
    """Weights of the taps at offsets -1, 0, 1, 2 for a fractional source position t in [0, 1)."""

    def inner(x):  # |x| <= 1
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0

    def outer(x):  # 1 < |x| < 2
        return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a

    return outer(t + 1.0), inner(t), inner(1.0 - t), outer(2.0 - t)


@functools.cache
def bicubic_matrix(out_size: int, in_size: int, a: float = BICUBIC_A) -> np.ndarray:
    """(out, in) float64 matrix of torch's bicubic resize along one axis (align_corners=False)."""
    matrix = np.zeros((out_size, in_size), np.float64)
    scale = in_size / out_size
    for i in range(out_size):
        source = (i + 0.5) * scale - 0.5  # not clamped at 0 for cubic, as in torch
        left = math.floor(source)
        for offset, weight in zip(range(-1, 3), _cubic_tap_weights(source - left, a)):
            matrix[i, min(max(left + offset, 0), in_size - 1)] += weight
    matrix.flags.writeable = False
    return matrix


@functools.cache
def area_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out, in) float64 matrix of torch's 'area' resize (adaptive average pooling) along one axis.

    Output i averages inputs [floor(i*in/out), ceil((i+1)*in/out)): bins overlap and differ in
    size when in/out is not an integer.
    """
    matrix = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        matrix[i, start:end] = 1.0 / (end - start)
    matrix.flags.writeable = False
    return matrix


def _pair(size) -> tuple[int, int]:
    if isinstance(size, int | np.integer):
        return int(size), int(size)
    height, width = size
    return int(height), int(width)


def _separable_resize(x, size, matrix_fn):
    """Applies matrix_fn(out, in) along H then W of an NHWC array; identity for equal sizes."""
    out_h, out_w = _pair(size)
    _, in_h, in_w, _ = x.shape
    if out_h != in_h:
        m_h = jnp.asarray(matrix_fn(out_h, in_h), x.dtype)
        x = jnp.einsum("oh,bhwc->bowc", m_h, x, precision=HIGHEST)
    if out_w != in_w:
        m_w = jnp.asarray(matrix_fn(out_w, in_w), x.dtype)
        x = jnp.einsum("ow,bhwc->bhoc", m_w, x, precision=HIGHEST)
    return x


def bicubic_resize(x, size):
    """torch `F.interpolate(x, size, mode='bicubic', align_corners=False)` on NHWC arrays."""
    return _separable_resize(x, size, bicubic_matrix)


def area_resize(x, size):
    """torch `F.interpolate(x, size, mode='area')` (adaptive average pooling) on NHWC arrays."""
    return _separable_resize(x, size, area_matrix)


# ---------------------------------------------------------------------------------------------
# Quantizer pieces


def nearest_code(z, codebook):
    """Index of the codebook row nearest to each vector of z (..., C), as the official code does:
    argmin of ||z||^2 + ||e||^2 - 2 z.e (squared L2, full-precision matmul)."""
    z_sq = jnp.sum(jnp.square(z), axis=-1, keepdims=True)
    e_sq = jnp.sum(jnp.square(codebook), axis=-1)
    distances = (z_sq + e_sq) - 2.0 * jnp.einsum("...c,vc->...v", z, codebook, precision=HIGHEST)
    return jnp.argmin(distances, axis=-1).astype(jnp.int32)


def phi_indices(num_scales: int, share_quant_resi: int) -> tuple[int, ...]:
    """Which phi convolution each scale uses.

    share_quant_resi = 1: one phi for every scale. Otherwise K phis (K = num_scales when 0) with
    "ticks" spread over [0, 1]; scale si takes the tick nearest to si / (num_scales - 1). The
    ticks and the comparison are float64 numpy exactly as in the official code, whose rounding
    breaks the exact ties (si = 2 and 7 of the 10-scale schedules) toward phi 1 and phi 3:
    the result for 10 scales and K = 4 is (0, 0, 1, 1, 1, 2, 2, 3, 3, 3).
    """
    if num_scales < 2:
        raise ValueError(f"the multi-scale quantizer needs at least 2 scales, got {num_scales}")
    if share_quant_resi == 1:
        return (0,) * num_scales
    count = num_scales if share_quant_resi == 0 else share_quant_resi
    if count == 4:
        ticks = np.linspace(1 / 3 / count, 1 - 1 / 3 / count, count)
    else:
        ticks = np.linspace(1 / 2 / count, 1 - 1 / 2 / count, count)
    return tuple(int(np.argmin(np.abs(ticks - si / (num_scales - 1)))) for si in range(num_scales))


def num_phis(num_scales: int, share_quant_resi: int) -> int:
    if share_quant_resi < 0:
        raise ValueError(f"share_quant_resi must be >= 0, got {share_quant_resi}")
    if share_quant_resi == 1:
        return 1
    return num_scales if share_quant_resi == 0 else share_quant_resi


def torch_default_conv_init():
    """torch's Conv2d default kernel init (kaiming-uniform with a=sqrt(5)): U(+-1/sqrt(fan_in))."""
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class MultiScaleResidualQuantizer(nn.Module):
    """VAR's `VectorQuantizer2`: residual quantization of (B, h, w, C) features over `patch_nums`.

    Parameters: `embedding` (codebook_size, code_dim), shared by all scales, and the phi convs
    `phi_0 .. phi_{K-1}` (3x3, code_dim -> code_dim), phi(h) = (1 - r) h + r conv(h) with
    r = |quant_resi| (no phi params when |quant_resi| <= 1e-6). `share_quant_resi`: 0 = one phi
    per scale, 1 = one shared phi, K >= 2 = K partially shared phis (the release uses 4).

    Token maps are lists with one (B, p, p) int32 array per scale (row-major, as the official
    (B, p*p) ids reshaped); methods also accept (B, p*p) arrays. Call `init` through `__call__`,
    which creates every phi even if the schedule never selects one of them.
    """

    codebook_size: int = 4096
    code_dim: int = 32
    patch_nums: Sequence[int] = VAR_PATCH_NUMS_256
    beta: float = 0.25
    quant_resi: float = 0.5
    share_quant_resi: int = 4

    def setup(self):
        patch_nums = self.scales
        if any(p < 1 for p in patch_nums):
            raise ValueError(f"patch_nums must be positive, got {patch_nums}")
        if max(patch_nums) != patch_nums[-1]:
            raise ValueError(f"the last of patch_nums must be the largest (full resolution), got {patch_nums}")
        self.phi_index = phi_indices(len(patch_nums), self.share_quant_resi)
        limit = 1.0 / self.codebook_size
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(uniform_init(-limit, limit), ("codebook", "code_dim")),
            (self.codebook_size, self.code_dim),
            jnp.float32,
        )
        if abs(self.quant_resi) > 1e-6:
            self.phi = [
                nn.Conv(
                    self.code_dim,
                    (3, 3),
                    padding=((1, 1), (1, 1)),
                    dtype=jnp.float32,
                    precision=HIGHEST,
                    kernel_init=nn.with_logical_partitioning(torch_default_conv_init(), (None, None, None, None)),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
                )
                for _ in range(num_phis(len(patch_nums), self.share_quant_resi))
            ]
        else:
            self.phi = []

    # -- helpers ------------------------------------------------------------------------------

    @property
    def scales(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.patch_nums)

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def full_size(self) -> int:
        return int(self.patch_nums[-1])

    def _check_features(self, f):
        size = self.full_size
        if f.ndim != 4 or f.shape[1:] != (size, size, self.code_dim):
            raise ValueError(
                f"the multi-scale quantizer expects features of shape (batch, {size}, {size}, "
                f"{self.code_dim}) (patch_nums[-1] = {size}), got {tuple(f.shape)}"
            )

    def _token_map(self, si: int, indices):
        """(B, p, p) or (B, p*p) ids of scale si -> (B, p, p) int32, with a clear shape error."""
        pn = self.scales[si]
        indices = jnp.asarray(indices)
        if indices.ndim == 2 and indices.shape[1] == pn * pn:
            indices = indices.reshape(indices.shape[0], pn, pn)
        if indices.ndim != 3 or indices.shape[1:] != (pn, pn):
            raise ValueError(
                f"token map of scale {si} must have shape (batch, {pn}, {pn}) or (batch, {pn * pn}), "
                f"got {tuple(indices.shape)}"
            )
        return indices.astype(jnp.int32)

    def _code_map(self, si: int, h):
        """(B, p, p, C) or (B, p*p, C) code vectors of scale si -> (B, p, p, C) float32."""
        pn = self.scales[si]
        h = jnp.asarray(h, jnp.float32)
        if h.ndim == 3 and h.shape[1:] == (pn * pn, self.code_dim):
            h = h.reshape(h.shape[0], pn, pn, self.code_dim)
        if h.ndim != 4 or h.shape[1:] != (pn, pn, self.code_dim):
            raise ValueError(
                f"code map of scale {si} must have shape (batch, {pn}, {pn}, {self.code_dim}) or "
                f"(batch, {pn * pn}, {self.code_dim}), got {tuple(h.shape)}"
            )
        return h

    def lookup(self, indices):
        """Token ids (...) -> code vectors (..., C)."""
        return jnp.take(self.embedding, indices, axis=0)

    def apply_phi(self, si: int, h):
        """phi of scale si on a full-resolution map: (1 - r) h + r conv(h)."""
        if not self.phi:
            return h
        ratio = abs(self.quant_resi)
        return h * (1.0 - ratio) + self.phi[self.phi_index[si]](h) * ratio

    def scale_contribution(self, si: int, h):
        """phi(upsample(h)): what the (B, p, p, C) code map h of scale si adds to f_hat.

        The single place where a scale's codes become a full-resolution map: tokenizing, decoding
        token maps, the teacher-forcing input and the sampling step all go through it (and add it
        to f_hat the same way), so they agree exactly.
        """
        if si != self.num_scales - 1:
            h = bicubic_resize(h, self.full_size)
        return self.apply_phi(si, h)

    def _quantize_scales(self, f):
        """Algorithm 1: per-scale token maps and the cumulative f_hat after each scale."""
        last = self.num_scales - 1
        codebook = jax.lax.stop_gradient(self.embedding)
        f_rest = jax.lax.stop_gradient(f)
        f_hat = jnp.zeros_like(f)
        indices, f_hats = [], []
        for si, pn in enumerate(self.scales):
            z = area_resize(f_rest, pn) if si != last else f_rest
            idx = nearest_code(z, codebook)
            h = self.scale_contribution(si, self.lookup(idx))
            f_hat = f_hat + h
            f_rest = f_rest - jax.lax.stop_gradient(h)
            indices.append(idx)
            f_hats.append(f_hat)
        return indices, f_hats

    # -- public API ---------------------------------------------------------------------------

    def __call__(self, f):
        """Training forward: (B, h, w, C) features -> (straight-through f_hat, aux).

        aux: "indices" (list of (B, p, p)), "commitment_loss" = beta * mean_k mse(sg(f_hat_k), f),
        "codebook_loss" = mean_k mse(f_hat_k, sg(f)) (f_hat_k: cumulative f_hat after scale k),
        "quantizer_loss" = their sum (the official `mean_vq_loss`).
        """
        self._check_features(f)
        f = f.astype(jnp.float32)
        if self.is_initializing():
            for layer in self.phi:  # create every phi, selected by the schedule or not
                layer(jnp.zeros((1, 3, 3, self.code_dim), jnp.float32))
        indices, f_hats = self._quantize_scales(f)
        f_no_grad = jax.lax.stop_gradient(f)
        commitment = sum(jnp.mean(jnp.square(jax.lax.stop_gradient(fh) - f)) for fh in f_hats)
        codebook = sum(jnp.mean(jnp.square(fh - f_no_grad)) for fh in f_hats)
        commitment = self.beta * commitment / self.num_scales
        codebook = codebook / self.num_scales
        aux = {
            "indices": indices,
            "commitment_loss": commitment,
            "codebook_loss": codebook,
            "quantizer_loss": commitment + codebook,
        }
        return straight_through(f, f_hats[-1]), aux

    def f_to_indices(self, f):
        """Features (B, h, w, C) -> token maps, one (B, p, p) int32 array per scale (no gradient)."""
        self._check_features(f)
        return self._quantize_scales(jax.lax.stop_gradient(f.astype(jnp.float32)))[0]

    def f_to_fhats(self, f):
        """Features -> the cumulative f_hat (B, h, w, C) after each scale (no gradient)."""
        self._check_features(f)
        return self._quantize_scales(jax.lax.stop_gradient(f.astype(jnp.float32)))[1]

    def indices_to_fhat(self, indices, all_scales: bool = False):
        """Token maps of every scale -> f_hat (B, h, w, C); the list after each scale if all_scales."""
        if len(indices) != self.num_scales:
            raise ValueError(f"expected {self.num_scales} token maps (one per scale), got {len(indices)}")
        maps = [self._token_map(si, idx) for si, idx in enumerate(indices)]
        size = self.full_size
        f_hat = jnp.zeros((maps[0].shape[0], size, size, self.code_dim), jnp.float32)
        f_hats = []
        for si, idx in enumerate(maps):
            f_hat = f_hat + self.scale_contribution(si, self.lookup(idx))
            f_hats.append(f_hat)
        return f_hats if all_scales else f_hat

    def indices_to_var_input(self, indices):
        """Teacher-forcing input of the VAR transformer: (B, L - 1, C), L = sum p^2.

        Rows for scale k+1 are the area-downsampled (to p_{k+1}) cumulative f_hat after scales
        0..k, flattened row-major. Only the first num_scales - 1 token maps are used.
        """
        if len(indices) < self.num_scales - 1:
            raise ValueError(
                f"expected at least {self.num_scales - 1} token maps for the teacher-forcing input, "
                f"got {len(indices)}"
            )
        maps = [self._token_map(si, indices[si]) for si in range(self.num_scales - 1)]
        batch, size = maps[0].shape[0], self.full_size
        f_hat = jnp.zeros((batch, size, size, self.code_dim), jnp.float32)
        inputs = []
        for si, idx in enumerate(maps):
            f_hat = f_hat + self.scale_contribution(si, self.lookup(idx))
            nxt = area_resize(f_hat, self.scales[si + 1])
            inputs.append(nxt.reshape(batch, -1, self.code_dim))
        return jnp.concatenate(inputs, axis=1)

    def next_autoregressive_input(self, si: int, f_hat, h):
        """One sampling step (Algorithm 2): add the (B, p, p, C) or (B, p*p, C) code map h of scale
        si to f_hat; return (f_hat, next input map (B, p_{si+1}, p_{si+1}, C)), or (f_hat, f_hat)
        at the last scale."""
        if not 0 <= si < self.num_scales:
            raise ValueError(f"scale index {si} out of range for {self.num_scales} scales")
        f_hat = jnp.asarray(f_hat, jnp.float32) + self.scale_contribution(si, self._code_map(si, h))
        if si == self.num_scales - 1:
            return f_hat, f_hat
        return f_hat, area_resize(f_hat, self.scales[si + 1])


def random_host_params(quantizer: MultiScaleResidualQuantizer, seed: int) -> dict:
    """Quantizer-shaped random parameters as host numpy arrays (codebook and phi convolutions drawn
    with std 1/sqrt(fan-in)): a stand-in for a trained VQVAE's quantizer in benchmarks and
    ahead-of-time compilation, where only shapes and cost matter. Drawn from shapes alone, because
    compiling the quantizer's `init` (which quantizes a dummy map) costs more than a small benchmark."""
    size = quantizer.full_size
    features = jax.ShapeDtypeStruct((1, size, size, quantizer.code_dim), jnp.float32)
    abstract = jax.eval_shape(lambda k, f: nn.unbox(quantizer.init(k, f))["params"], jax.random.key(0), features)
    rng = np.random.default_rng(seed)

    def draw(leaf):
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else leaf.shape[0]
        return rng.normal(0.0, 1.0 / np.sqrt(fan_in), leaf.shape).astype(leaf.dtype)

    return jax.tree.map(draw, abstract)
