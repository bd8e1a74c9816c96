"""VAR sampling pieces: top-k/top-p filters, sampling, CFG ramp, Gumbel smoothing, edit masks.

References are NumPy transcriptions of the official torch code (`sample_with_top_k_top_p_`,
`gumbel_softmax_with_rng`, `F.interpolate(mode='bilinear')` on CPU), hand-worked examples and,
for the mask thresholds, exact rational arithmetic.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from titok_var.generation.edit_masks import (
    bilinear_matrix,
    bilinear_resize,
    blend_known_tokens,
    box_keep_mask,
    mask_from_image,
    per_scale_keep_masks,
)
from titok_var.generation.logit_filters import (
    guidance_at_scale,
    guided_logits,
    gumbel_soft_codes,
    gumbel_tau,
    sample_tokens_from_logits,
    top_k_top_p_filter,
)

PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)


# ---------------------------------------------------------------------------------------------
# NumPy references of the torch code


def np_torch_filter(logits, top_k, top_p):
    """`sample_with_top_k_top_p_`'s in-place masking, transcribed to float32 NumPy."""
    x = np.array(logits, np.float32)
    if top_k > 0:
        kth = np.sort(x, axis=-1)[..., -top_k][..., None]
        x[x < kth] = -np.inf
    if top_p > 0:
        order = np.argsort(x, axis=-1, kind="stable")
        ascending = np.take_along_axis(x, order, axis=-1)
        shifted = np.exp(ascending - ascending.max(axis=-1, keepdims=True))
        probs = shifted / shifted.sum(axis=-1, keepdims=True)
        remove_sorted = np.cumsum(probs, axis=-1, dtype=np.float32) <= np.float32(1 - top_p)
        remove_sorted[..., -1] = False
        remove = np.zeros_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, axis=-1)
        x[remove] = -np.inf
    return x


def np_softmax(x, axis=-1):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_torch_bilinear_taps(out_size, in_size, fused=True):
    """torch CPU `compute_indices_weights_linear` (align_corners=False), one index at a time.

    fused: the source index scale * (d + 0.5) - 0.5 rounded once (torch's vectorised kernel, a
    fused multiply-add: Python's float64 holds the product of two float32 numbers exactly);
    otherwise rounded after the product and again after the subtraction.
    """
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    taps = []
    for d in range(out_size):
        if fused:
            real = max(f32(float(scale) * (d + 0.5) - 0.5), f32(0))
        else:
            real = max(f32(scale * f32(f32(d) + f32(0.5))) - f32(0.5), f32(0))
        i0 = min(math.floor(real), in_size - 1)
        i1 = i0 + 1 if i0 < in_size - 1 else i0
        lam = min(max(f32(real - f32(i0)), f32(0)), f32(1))
        taps.append((i0, i1, f32(f32(1) - lam), lam))
    return taps


def np_torch_bilinear_2d(x, out_h, out_w, fused=True):
    """torch upsample_bilinear2d per output pixel: h0 (w0 x00 + w1 x01) + h1 (w0 x10 + w1 x11)."""
    x = np.asarray(x, np.float32)
    out = np.empty((out_h, out_w), np.float32)
    for oy, (y0, y1, hy0, hy1) in enumerate(np_torch_bilinear_taps(out_h, x.shape[0], fused)):
        for ox, (x0, x1, wx0, wx1) in enumerate(np_torch_bilinear_taps(out_w, x.shape[1], fused)):
            top = np.float32(x[y0, x0] * wx0) + np.float32(x[y0, x1] * wx1)
            bottom = np.float32(x[y1, x0] * wx0) + np.float32(x[y1, x1] * wx1)
            out[oy, ox] = np.float32(top * hy0) + np.float32(bottom * hy1)
    return out


def kept(x):
    return np.isfinite(np.asarray(x))


# ---------------------------------------------------------------------------------------------
# top-k / top-p


def test_top_k_keeps_every_tie_with_the_kth_value():
    logits = np.array([[1.0, 3.0, 3.0, 2.0, 3.0, 0.0, 2.0]], np.float32)
    np.testing.assert_array_equal(kept(top_k_top_p_filter(logits, 2)), [[0, 1, 1, 0, 1, 0, 0]])
    np.testing.assert_array_equal(kept(top_k_top_p_filter(logits, 4)), [[0, 1, 1, 1, 1, 0, 1]])
    # integer-valued logits: many ties at every rank
    ints = np.random.default_rng(0).integers(-3, 4, (40, 12)).astype(np.float32)
    for k in (1, 2, 5, 12):
        expected = ints >= np.sort(ints, axis=-1)[:, -k][:, None]
        out = np.asarray(top_k_top_p_filter(ints, k))
        np.testing.assert_array_equal(kept(out), expected)
        np.testing.assert_array_equal(out[expected], ints[expected])  # survivors are unchanged


def test_top_p_hand_worked_examples():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    # ascending cumsum 0.05, 0.2, 0.5, 1.0; p = 0.75 drops entries with cumsum <= 0.25
    np.testing.assert_array_equal(kept(top_k_top_p_filter(np.log(probs), 0, 0.75)), [1, 1, 0, 0])
    # top-p runs on the top-k-masked logits: after k = 2 the renormalized probs are 5/8, 3/8,
    # (ascending cumsum 0.375, 1), so p = 0.6 keeps only the largest; on the raw logits p = 0.6
    # keeps two tokens.
    np.testing.assert_array_equal(kept(top_k_top_p_filter(np.log(probs), 2, 0.6)), [1, 0, 0, 0])
    np.testing.assert_array_equal(kept(top_k_top_p_filter(np.log(probs), 0, 0.6)), [1, 1, 0, 0])
    # an ascending cumsum equal to 1 - p is dropped too (<=): 0.05 + 0.15 + 0.3 = 0.5 for p = 0.5
    np.testing.assert_array_equal(kept(top_k_top_p_filter(np.log(probs), 0, 0.5)), [1, 0, 0, 0])
    np.testing.assert_array_equal(kept(np_torch_filter(np.log(probs), 0, 0.5)), [1, 0, 0, 0])
    # p >= 1 drops nothing of positive probability; k = 0, p = 0 is the identity
    np.testing.assert_array_equal(kept(top_k_top_p_filter(np.log(probs), 0, 1.0)), [1, 1, 1, 1])
    unfiltered = np.asarray(top_k_top_p_filter(np.log(probs), 0, 0.0))
    np.testing.assert_array_equal(unfiltered, np.log(probs).astype(np.float32))


@pytest.mark.parametrize("top_k", [0, 1, 3, 20, 64])
def test_filter_matches_numpy_transcription_of_torch(top_k):
    rng = np.random.default_rng(top_k)
    logits = (rng.normal(size=(3, 40, 64)) * rng.choice([0.3, 1.0, 4.0], size=(3, 40, 1))).astype(np.float32)
    for top_p in (0.0, 0.1, 0.5, 0.9, 0.96, 1.0):
        out = np.asarray(top_k_top_p_filter(logits, top_k, top_p))
        reference = np_torch_filter(logits, top_k, top_p)
        np.testing.assert_array_equal(kept(out), kept(reference), err_msg=f"k={top_k} p={top_p}")
        np.testing.assert_array_equal(out[kept(out)], logits[kept(out)])
        # the largest logit always survives
        assert np.all(np.take_along_axis(out, logits.argmax(-1)[..., None], -1) == logits.max(-1, keepdims=True))


@pytest.mark.parametrize("top_k, top_p", [(1, 0.583), (3, 0.317), (7, 0.6413), (10, 0.9137), (20, 0.9613), (50, 0.9931)])
def test_candidate_only_nucleus_cut_keeps_the_full_sorts_set_ties_included(top_k, top_p):
    # Logits on a coarse grid tie often, also at the k-th value and at the row maximum; the filter
    # sorts only the top-k candidates and must keep exactly what the full stable sort keeps.
    # Each 1 - p is > 4e-5 away from every j/n (n <= 50): n tied survivors have cumulative masses
    # j/n, and a boundary hit exactly would be decided by float32 summation order, not by logic.
    rng = np.random.default_rng(top_k)
    coarse = rng.integers(0, 6, (200, 50)).astype(np.float32) * 0.5
    fine = rng.standard_normal((200, 50)).astype(np.float32) * 2.0
    flat = np.zeros((3, 50), np.float32)  # every entry tied
    for logits in (coarse, fine, flat):
        got = np.asarray(jax.jit(top_k_top_p_filter, static_argnums=(1, 2))(logits, top_k, top_p))
        expected = np_torch_filter(logits, top_k, top_p)
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(expected))


def test_tiny_top_p_keeps_only_the_argmax_and_jit_agrees():
    logits = np.random.default_rng(1).normal(size=(2, 5, 33)).astype(np.float32)
    only_max = kept(top_k_top_p_filter(logits, 0, 1e-6))
    np.testing.assert_array_equal(only_max, logits == logits.max(-1, keepdims=True))
    jitted = jax.jit(functools.partial(top_k_top_p_filter, top_k=7, top_p=0.8))(logits)
    np.testing.assert_array_equal(np.asarray(jitted), np_torch_filter(logits, 7, 0.8))


def test_filter_rejects_bad_settings():
    logits = jnp.zeros((2, 8))
    with pytest.raises(ValueError, match="exceeds the vocabulary size 8"):
        top_k_top_p_filter(logits, 9, 0.5)
    with pytest.raises(TypeError, match="static Python int"):
        top_k_top_p_filter(logits, 2.0, 0.5)
    with pytest.raises(TypeError, match="static Python int"):
        jax.jit(top_k_top_p_filter)(logits, 2, 0.5)


# ---------------------------------------------------------------------------------------------
# sampling and CFG


def test_top_k_one_samples_the_argmax():
    logits = np.random.default_rng(2).normal(size=(4, 9, 50)).astype(np.float32)
    for seed in range(3):
        ids = sample_tokens_from_logits(jax.random.key(seed), logits, 1, 0.9)
        assert ids.dtype == jnp.int32
        np.testing.assert_array_equal(np.asarray(ids), logits.argmax(-1))


def test_sample_frequencies_match_the_filtered_softmax():
    logits = np.array([2.0, 1.5, 1.0, 0.9, 0.2, -0.5, -1.0, 3.0], np.float32)
    top_k, top_p, draws = 6, 0.9, 20000
    expected = np_softmax(np_torch_filter(logits, top_k, top_p))
    assert 2 <= np.count_nonzero(expected) < 6  # both filters are active
    ids = sample_tokens_from_logits(jax.random.key(0), np.broadcast_to(logits, (draws, 8)), top_k, top_p)
    counts = np.bincount(np.asarray(ids), minlength=8)
    assert np.all(counts[expected == 0] == 0)
    support = expected > 0
    chi2 = np.sum((counts[support] - draws * expected[support]) ** 2 / (draws * expected[support]))
    assert chi2 < stats.chi2.ppf(1 - 1e-4, df=support.sum() - 1), (counts, draws * expected)


def test_fixed_key_gives_fixed_samples():
    logits = np.random.default_rng(3).normal(size=(256, 16)).astype(np.float32)
    a = sample_tokens_from_logits(jax.random.key(5), logits, 10, 0.95)
    b = sample_tokens_from_logits(jax.random.key(5), logits, 10, 0.95)
    c = sample_tokens_from_logits(jax.random.key(6), logits, 10, 0.95)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.any(np.asarray(a) != np.asarray(c))


def test_cfg_formula_and_linear_ramp():
    rng = np.random.default_rng(4)
    cond, uncond = rng.normal(size=(2, 3, 5, 11)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(guided_logits(cond, uncond, 0.0)), cond)
    np.testing.assert_allclose(np.asarray(guided_logits(cond, uncond, 1.5)), 2.5 * cond - 1.5 * uncond, rtol=1e-6)
    ramp = [guidance_at_scale(1.5, si, 10) for si in range(10)]
    assert ramp[0] == 0.0 and ramp[-1] == 1.5
    np.testing.assert_allclose(ramp, np.linspace(0.0, 1.5, 10), rtol=1e-12)
    with pytest.raises(ValueError, match="out of range"):
        guidance_at_scale(1.5, 10, 10)
    with pytest.raises(ValueError, match="at least 2 scales"):
        guidance_at_scale(1.5, 0, 1)


# ---------------------------------------------------------------------------------------------
# Gumbel smoothing (more_smooth)


def test_gumbel_tau_values():
    assert gumbel_tau(0.0) == pytest.approx(0.27, rel=1e-12)
    assert gumbel_tau(0.5) == pytest.approx(0.14175, rel=1e-12)
    assert gumbel_tau(1.0) == pytest.approx(0.0135, rel=1e-12)
    assert gumbel_tau(1.2) == 0.005  # the floor (never reached for ratios in [0, 1])


def test_gumbel_soft_codes_match_numpy_and_ignore_removed_tokens():
    rng = np.random.default_rng(5)
    vocab, dim = 24, 4
    raw = rng.normal(size=(2, 6, vocab)).astype(np.float32)
    logits = np.asarray(top_k_top_p_filter(raw, 8, 0.9))
    codebook = rng.normal(size=(vocab, dim)).astype(np.float32)
    removed = ~kept(logits).any(axis=(0, 1))
    codebook[removed] = 1e6  # any weight on a removed token would show
    key = jax.random.key(7)
    for ratio in (0.0, 4 / 9, 1.0):
        out = np.asarray(gumbel_soft_codes(key, logits, codebook, ratio))
        noise = np.asarray(jax.random.gumbel(key, logits.shape, jnp.float32), np.float64)
        weights = np_softmax((logits.astype(np.float64) * (1 + ratio) + noise) / gumbel_tau(ratio))
        np.testing.assert_allclose(out, weights @ codebook, rtol=1e-4, atol=1e-5)
        assert np.abs(out).max() < 10


def test_gumbel_soft_codes_become_hard_codes_at_low_temperature():
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(400, 32)).astype(np.float32)
    codebook = rng.normal(size=(32, 3)).astype(np.float32)
    key = jax.random.key(8)
    noise = np.asarray(jax.random.gumbel(key, logits.shape, jnp.float32))

    def fraction_hard(ratio):
        hard = codebook[np.argmax(logits * (1 + ratio) + noise, axis=-1)]
        soft = np.asarray(gumbel_soft_codes(key, logits, codebook, ratio))
        return np.mean(np.abs(soft - hard).max(-1) < 1e-3)

    assert fraction_hard(1.0) > 0.9  # tau = 0.0135: nearly one-hot (Gumbel-max sample)
    assert fraction_hard(0.0) < fraction_hard(1.0)  # tau = 0.27 is visibly softer


# ---------------------------------------------------------------------------------------------
# bilinear resize


@pytest.mark.parametrize(
    "out_size,in_size", [(4, 2), (1, 16), (2, 16), (3, 16), (13, 16), (16, 16), (9, 32), (24, 32), (7, 5)]
)
def test_bilinear_matrix_matches_torch_formula(out_size, in_size):
    expected = np.zeros((out_size, in_size), np.float32)
    for d, (i0, i1, w0, w1) in enumerate(np_torch_bilinear_taps(out_size, in_size)):
        expected[d, i0] += w0
        expected[d, i1] += w1
    np.testing.assert_array_equal(bilinear_matrix(out_size, in_size), expected)
    np.testing.assert_allclose(bilinear_matrix(out_size, in_size).sum(axis=1), 1.0, rtol=1e-6)


def test_bilinear_resize_matches_torch_per_pixel_and_matrix_form():
    # torch: F.interpolate(tensor([[[[0., 1.]]]]), size=(1, 4), mode='bilinear') = [0, .25, .75, 1]
    np.testing.assert_array_equal(bilinear_resize(np.array([[0.0, 1.0]]), (1, 4)), [[0.0, 0.25, 0.75, 1.0]])
    x = np.random.default_rng(9).normal(size=(2, 13, 16)).astype(np.float32)
    for out_hw in [(5, 7), (16, 16), (26, 3)]:
        out = bilinear_resize(x, out_hw)
        for b in range(2):
            np.testing.assert_array_equal(out[b], np_torch_bilinear_2d(x[b], *out_hw))
        matrix_form = bilinear_matrix(out_hw[0], 13).astype(np.float64) @ x @ bilinear_matrix(out_hw[1], 16).T
        np.testing.assert_allclose(out, matrix_form, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# edit masks


def test_demo_box_on_the_32x32_grid():
    outpaint = box_keep_mask(PATCH_NUMS_512, (0.1, 0.1, 0.8, 0.8), inpainting=False)
    assert outpaint.shape == (32, 32) and outpaint.dtype == bool
    inside = np.zeros((32, 32), bool)
    inside[3:26, 3:26] = True  # rows and columns 3..25
    np.testing.assert_array_equal(outpaint, inside)
    np.testing.assert_array_equal(box_keep_mask(PATCH_NUMS_512, (0.1, 0.1, 0.8, 0.8), inpainting=True), ~inside)
    with pytest.raises(ValueError, match=r"fractions in \[0, 1\]"):
        box_keep_mask(PATCH_NUMS_512, (0.1, 0.1, 1.2, 0.8), inpainting=True)
    with pytest.raises(ValueError, match="y0 <= y1"):
        box_keep_mask(PATCH_NUMS_512, (0.8, 0.1, 0.1, 0.8), inpainting=True)


@pytest.mark.parametrize("inpainting", [True, False])
def test_per_scale_masks_for_the_256px_schedule(inpainting):
    finest = box_keep_mask(PATCH_NUMS_256, (0.1, 0.1, 0.8, 0.8), inpainting)  # rows/cols 2..12
    masks = per_scale_keep_masks(finest, PATCH_NUMS_256)
    assert [m.shape for m in masks] == [(p, p) for p in PATCH_NUMS_256]
    assert masks[0].all()  # 1x1 scale: always the ground-truth token
    np.testing.assert_array_equal(masks[-1], finest)
    for pn, mask in zip(PATCH_NUMS_256[1:], masks[1:]):
        np.testing.assert_array_equal(mask, np_torch_bilinear_2d(finest, pn, pn) > 0.5, err_msg=f"pn={pn}")
    # 16 -> 8 samples 2x2 blocks with weights 1/4; 16 -> 4 the central 2x2 of each 4x4 block
    blocks = finest.reshape(8, 2, 8, 2).mean(axis=(1, 3))
    np.testing.assert_array_equal(masks[PATCH_NUMS_256.index(8)], blocks > 0.5)
    centres = finest.reshape(4, 4, 4, 4)[:, 1:3, :, 1:3].mean(axis=(1, 3))
    np.testing.assert_array_equal(masks[PATCH_NUMS_256.index(4)], centres > 0.5)


def test_per_scale_masks_512_demo_and_batches():
    finest = box_keep_mask(PATCH_NUMS_512, (0.1, 0.1, 0.8, 0.8), inpainting=True)
    masks = per_scale_keep_masks(finest, PATCH_NUMS_512)
    for pn, mask in zip(PATCH_NUMS_512[1:], masks[1:]):
        np.testing.assert_array_equal(mask, np_torch_bilinear_2d(finest, pn, pn) > 0.5, err_msg=f"pn={pn}")
    batched = per_scale_keep_masks(np.stack([finest, ~finest]), PATCH_NUMS_512)
    for single, pair in zip(masks[1:], batched[1:]):
        np.testing.assert_array_equal(pair[0], single)
    with pytest.raises(ValueError, match=r"\(\.\.\., 32, 32\)"):
        per_scale_keep_masks(np.ones((16, 16)), PATCH_NUMS_512)


def test_source_index_is_rounded_once_as_a_fused_multiply_add():
    # 16 -> 13, output index 6: scale * 6.5 - 0.5 = 7.5 in exact arithmetic; rounding the product
    # first gives exactly 7.5, one rounding gives 7.5000005 and weights 0.49999952 / 0.5000005.
    matrix = bilinear_matrix(13, 16)
    assert matrix[6, 7] == np.float32(0.49999952) and matrix[6, 8] == np.float32(0.5000005)
    twice = {i0: (w0, w1) for i0, _, w0, w1 in np_torch_bilinear_taps(13, 16, fused=False)}
    assert twice[7] == (np.float32(0.5), np.float32(0.5))


def random_boxes(rng, count):
    corners = np.sort(rng.random((count, 2, 2)), axis=1)  # (box, [low, high], [y, x])
    return [(y0, x0, y1, x1) for (y0, x0), (y1, x1) in corners]


@pytest.mark.parametrize("patch_nums", [PATCH_NUMS_256, PATCH_NUMS_512], ids=["256px", "512px"])
def test_keep_masks_over_a_sweep_of_boxes_match_the_per_pixel_torch_reference(patch_nums):
    boxes = random_boxes(np.random.default_rng(len(patch_nums) + patch_nums[-1]), 30) + [(0.0, 0.0, 0.5, 1.0)]
    differs_from_two_roundings = set()
    for box in boxes:
        for inpainting in (True, False):
            finest = box_keep_mask(patch_nums, box, inpainting)
            masks = per_scale_keep_masks(finest, patch_nums)
            for pn, mask in zip(patch_nums, masks):
                if pn * pn <= 3:
                    assert mask.all()
                    continue
                expected = np_torch_bilinear_2d(finest, pn, pn) > 0.5
                np.testing.assert_array_equal(mask, expected, err_msg=f"box={box} inpainting={inpainting} pn={pn}")
                if not np.array_equal(mask, np_torch_bilinear_2d(finest, pn, pn, fused=False) > 0.5):
                    differs_from_two_roundings.add(pn)
    # Only resizes to 13 (from 16 and from 32) have source indices that a second rounding moves.
    assert differs_from_two_roundings == {13}


def test_official_demo_inpainting_box_keeps_91_tokens_at_13x13():
    # demo_zero_shot_edit.ipynb, box (0, 0, 0.5, 1) in-painted on the 256 px schedule: torch keeps
    # 91 of the 13x13 tokens; rounding the source index twice would keep 78.
    finest = box_keep_mask(PATCH_NUMS_256, (0.0, 0.0, 0.5, 1.0), inpainting=True)
    masks = per_scale_keep_masks(finest, PATCH_NUMS_256)
    assert int(masks[PATCH_NUMS_256.index(13)].sum()) == 91
    assert int((np_torch_bilinear_2d(finest, 13, 13, fused=False) > 0.5).sum()) == 78


def test_keep_masks_equal_torch_interpolate_where_torch_is_installed():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    for patch_nums in (PATCH_NUMS_256, PATCH_NUMS_512):
        for box in random_boxes(rng, 40) + [(0.0, 0.0, 0.5, 1.0)]:
            for inpainting in (True, False):
                finest = box_keep_mask(patch_nums, box, inpainting)
                masks = per_scale_keep_masks(finest, patch_nums)
                source = torch.from_numpy(finest.astype(np.float32))[None, None]
                for pn, mask in zip(patch_nums, masks):
                    if pn * pn <= 3:
                        continue
                    resized = torch.nn.functional.interpolate(source, size=(pn, pn), mode="bilinear", align_corners=False)
                    np.testing.assert_array_equal(mask, resized[0, 0].numpy() > 0.5, err_msg=f"box={box} pn={pn}")


def test_mask_from_image():
    keep16 = box_keep_mask(PATCH_NUMS_256, (0.2, 0.3, 0.7, 0.9), inpainting=True)
    image = np.kron(keep16, np.ones((16, 16))).astype(np.uint8) * 255  # 256 x 256, 0/255
    np.testing.assert_array_equal(mask_from_image(image, 16), keep16)
    np.testing.assert_array_equal(mask_from_image(image[..., None] // 255, 16), keep16)  # (H, W, 1) of 0/1
    np.testing.assert_array_equal(mask_from_image(image, 16, invert=True), ~keep16)
    np.testing.assert_array_equal(mask_from_image(keep16, 16), keep16)  # already on the token grid
    majority = np.zeros((32, 32), np.uint8)
    majority[:2, :2] = [[1, 1], [1, 0]]  # 3 of 4 pixels kept
    majority[:2, 2:4] = [[1, 0], [1, 0]]  # exactly half: not kept
    assert mask_from_image(majority, 16)[0, :2].tolist() == [True, False]
    with pytest.raises(ValueError, match="single-channel"):
        mask_from_image(np.zeros((256, 256, 3)), 16)
    with pytest.raises(ValueError, match="multiple of the finest token grid 16"):
        mask_from_image(np.zeros((250, 250)), 16)
    with pytest.raises(ValueError, match="square"):
        mask_from_image(np.zeros((256, 128)), 16)
    with pytest.raises(ValueError, match="0/1 or 0/255"):
        mask_from_image(np.full((32, 32), 128), 16)


def test_blend_known_tokens():
    rng = np.random.default_rng(10)
    sampled, known = rng.normal(size=(2, 2, 3, 3, 4)).astype(np.float32)
    keep = rng.random((3, 3)) > 0.5
    expected = np.where(keep[None, :, :, None], known, sampled)
    np.testing.assert_array_equal(np.asarray(blend_known_tokens(sampled, known, keep)), expected)
    flat = jax.jit(blend_known_tokens)(sampled.reshape(2, 9, 4), known.reshape(2, 9, 4), keep)
    np.testing.assert_array_equal(np.asarray(flat), expected.reshape(2, 9, 4))
    per_example = np.stack([keep, ~keep])
    out = np.asarray(blend_known_tokens(sampled, known, per_example))
    np.testing.assert_array_equal(out[1], np.where(~keep[:, :, None], known[1], sampled[1]))
    with pytest.raises(ValueError, match="same shape"):
        blend_known_tokens(sampled, known[:, :2], keep)
    with pytest.raises(ValueError, match="keep mask of shape"):
        blend_known_tokens(sampled, known, np.ones((4, 4), bool))
