"""Our weights back in the official layouts: for every `convert --arch`, official -> ours -> official
and ours -> official -> ours are bit-identical (narrow models with the official key layout), the
rebuilt VAR buffers equal the official definitions, and files round-trip through the CLI."""

import numpy as np
import pytest
from flax import traverse_util

from titok_var.models.convnext import ConvNeXt
from titok_var.models.lpips import LPIPS
from titok_var.models.maskgit import ImageBert, UViTBert
from titok_var.models.maskgit_vqgan import MASKGIT_VQGAN_TINY, MaskGitVQGAN
from titok_var.models.titok import TiTok
from titok_var.models.var import VAR
from titok_var.models.var_vqvae import VQVAE
from titok_var.tools import convert, official_layout
from titok_var.weights import state_dicts

TITOK_STAGE2 = dict(image_size=32, patch_size=2, num_latent_tokens=8, encoder_size="tiny", decoder_size="tiny",
                    codebook_size=32, token_size=8, use_l2_norm=True, legacy_reshape=True, decoder_head="proxy_codes",
                    proxy_codebook_size=MASKGIT_VQGAN_TINY["codebook_size"], pixel_decoder="tiny")
TITOK_PIXELS = dict(image_size=32, patch_size=8, num_latent_tokens=6, encoder_size="tiny", decoder_size="tiny",
                    codebook_size=48, token_size=16, use_l2_norm=False, legacy_reshape=False, decoder_head="pixels")
BERT = dict(codebook_size=16, num_classes=4, seq_len=8, hidden_size=32, depth=2, num_heads=4, mlp_dim=64)
VAR_TINY = dict(depth=2, width=64, num_heads=2, vocab_size=32, vae_channels=8, patch_nums=(1, 2, 3), num_classes=5)

# One narrow model per arch, in the arch's official key layout.
NARROW = {
    "var_vqvae": lambda: VQVAE(codebook_size=64, code_dim=8, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                               patch_nums=(1, 3, 8)),
    **{f"var_d{d}": (lambda d=d: VAR(**VAR_TINY, shared_adaln=d == 36)) for d in (16, 20, 24, 30, 36)},
    "maskgit_vqgan": lambda: MaskGitVQGAN(**MASKGIT_VQGAN_TINY),
    **{v: (lambda: TiTok(**TITOK_STAGE2)) for v in ("titok_l32", "titok_b64", "titok_s128")},
    **{v: (lambda: TiTok(**TITOK_PIXELS)) for v in ("titok_bl64_vq8k", "titok_bl128_vq8k", "titok_sl256_vq8k")},
    "maskgit_l32": lambda: ImageBert(**BERT), "maskgit_b64": lambda: ImageBert(**BERT),
    "maskgit_s128": lambda: UViTBert(**{**BERT, "depth": 4}),
    "inception_fid": lambda: None,  # one fixed architecture (23.8 M parameters)
    "lpips": lambda: LPIPS(vgg_stages=((4, 4), (8, 8), (8, 8, 8), (16, 16, 16), (16, 16, 16))),
    "convnext_s": lambda: ConvNeXt(dims=(8, 16, 16, 24), depths=(2, 1, 2, 1)),
}


def test_every_convert_arch_has_a_narrow_model_here():
    assert set(NARROW) == set(convert.ARCHS)


def random_official(arch, model, seed=0):
    """Random float32 tensors under every official parameter key, plus the official buffers."""
    layout = official_layout.layout_for(arch)
    rng = np.random.default_rng(seed)
    out = {layout.torch_key(path, model): rng.standard_normal(layout.torch_shape(path, shape)).astype(np.float32)
           for path, shape in layout.param_shapes(model).items()}
    return {**out, **layout.buffers(model)}


def assert_state_dicts_equal(got, want):
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.parametrize("arch", sorted(NARROW))
def test_round_trips_are_bit_identical(arch):
    model = NARROW[arch]()
    official = random_official(arch, model)
    ours = official_layout.from_official(arch, official, model)
    back = official_layout.to_official(arch, model, ours)
    assert_state_dicts_equal(back, official)  # official -> ours -> official
    again = official_layout.from_official(arch, back, model)
    flat, flat_again = traverse_util.flatten_dict(ours), traverse_util.flatten_dict(again)
    assert flat.keys() == flat_again.keys()
    for path in flat:  # ours -> official -> ours
        np.testing.assert_array_equal(flat_again[path], flat[path], err_msg="/".join(path))


def test_var_buffers_are_the_official_definitions():
    """models/var.py of FoundationVision/VAR: lvl_1L = scale index per token (1, L) int64;
    attn_bias_for_masking = 0 where lvl[i] >= lvl[j] else -inf, (1, 1, L, L); zero_k_bias zeros."""
    model = VAR(**VAR_TINY)
    buffers = official_layout.layout_for("var_d16").buffers(model)
    lvl = np.array([0] + [1] * 4 + [2] * 9, np.int64)
    np.testing.assert_array_equal(buffers["lvl_1L"], lvl[None])
    assert buffers["lvl_1L"].dtype == np.int64
    bias = np.array([[0.0 if lvl[i] >= lvl[j] else -np.inf for j in range(14)] for i in range(14)], np.float32)
    np.testing.assert_array_equal(buffers["attn_bias_for_masking"], bias[None, None])
    assert sorted(k for k in buffers if "zero_k_bias" in k) == ["blocks.0.attn.zero_k_bias", "blocks.1.attn.zero_k_bias"]


def test_layouts_refuse_parameters_of_another_model():
    model = NARROW["var_d16"]()
    ours = official_layout.from_official("var_d16", random_official("var_d16", model), model)
    with pytest.raises(ValueError, match="do not fit arch 'var_d16': missing"):
        official_layout.to_official("var_d16", VAR(**{**VAR_TINY, "depth": 3}), ours)
    with pytest.raises(ValueError, match="wrong shape"):
        official_layout.to_official("var_d16", VAR(**{**VAR_TINY, "width": 32, "num_heads": 1}), ours)


def test_cli_writes_the_official_file_from_a_converted_npz(tmp_path):
    """convert --to_official on a converter's .npz (the released LPIPS layout), in each format."""
    model = official_layout.released_model("lpips")
    official = random_official("lpips", model, seed=3)
    source = tmp_path / "vgg_and_lin.npz"
    np.savez(source, **official)
    record = convert.main(["--arch", "lpips", "--input", str(source), "--output", str(tmp_path / "converted")])
    converted = str(tmp_path / "converted" / record["output"])
    for suffix, dtype in ((".safetensors", "float32"), (".bin", "float32"), (".pth", "bfloat16")):
        out = tmp_path / f"lpips{suffix}"
        written = convert.main(["--to_official", "--arch", "lpips", "--input", converted, "--output", str(out),
                                "--dtype", dtype])
        assert written["tensors"] == len(official)
        back = state_dicts.read_state_dict(str(out))
        if dtype == "float32":
            assert_state_dicts_equal(back, official)
        else:  # bfloat16 on disk: each value is the float32 rounded to 8 mantissa bits
            for key, value in official.items():
                np.testing.assert_allclose(back[key], value, rtol=2 ** -8, err_msg=key)
    with pytest.raises(ValueError, match="exactly one of --export_dir"):
        convert.main(["--to_official", "--arch", "lpips", "--output", str(tmp_path / "x.bin")])


def test_cli_writes_the_official_file_from_an_export(tmp_path):
    """An export of a trained (here: imported) model back to the official layout, checked against
    the file it came from; an export of another family is refused by name."""
    from tests.helpers import tiny_var_vqvae_config
    from titok_var.tools import export

    config = tiny_var_vqvae_config()
    from titok_var import registry
    model = registry.get_task(config).model
    official = random_official("var_vqvae", model, seed=4)
    params = official_layout.from_official("var_vqvae", official, model)
    from titok_var.tools.convert_var import save_params
    converted = save_params(params, str(tmp_path / "converted.npz"))
    export_dir = export.import_converted(config, converted, str(tmp_path / "export"))
    out = tmp_path / "vae.safetensors"
    convert.main(["--to_official", "--arch", "var_vqvae", "--export_dir", export_dir, "--output", str(out)])
    assert_state_dicts_equal(state_dicts.read_state_dict(str(out)), official)
    with pytest.raises(ValueError, match="holds a 'var_vqvae' model; --arch titok_l32 writes titok"):
        convert.main(["--to_official", "--arch", "titok_l32", "--export_dir", export_dir, "--output", str(out)])
