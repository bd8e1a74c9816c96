"""Our parameters back in the official PyTorch layouts (the inverse of every converter).

    python -m titok_var.tools.convert --to_official --arch var_d16 --export_dir E --output var_d16.pth
    python -m titok_var.tools.convert --to_official --arch lpips --input weights/lpips_vgg16.npz --output lpips.bin

Each converter maps an official tensor to one of our parameters with a pure rearrangement
(transpose, reshape, dropped unit axes); its inverse is computed here, for every parameter, by
sending an index array through the converter's own `from_torch_layout` and scattering our values
back, so a converter and its inverse cannot drift apart. On top of that:
- TiTok: each attention's query/key/value kernels and biases are packed back into `in_proj`;
- buffers the official modules hold and the converters skip are rebuilt where they are
  deterministic: VAR's `lvl_1L`, `attn_bias_for_masking` and the zero `zero_k_bias` of every block;
- entries that cannot be rebuilt are written as the official code initialises them: the VQVAE's
  `quantize.ema_vocab_hit_SV` codebook-usage statistics as zeros (they only steer codebook
  restarts in training). Entries a converter ignores and the official loaders do not need
  (torchvision VGG16's classifier for LPIPS, Inception's BatchNorm counters, ImageBert's
  `position_ids`) are left out.
Round trips are bit-identical on every converted tensor (tested for every arch).
"""

import dataclasses
from collections.abc import Callable

import numpy as np
from flax import traverse_util

from titok_var.tools import (convert_inception, convert_maskgit, convert_maskgit_vqgan, convert_perceptual,
                             convert_titok, convert_var, convert_var_transformer)


@dataclasses.dataclass(frozen=True)
class OfficialLayout:
    """How one architecture's parameters sit in its official state dict."""

    param_shapes: Callable  # model -> {path: shape} at the converter's granularity
    torch_key: Callable  # (path, model) -> official key
    torch_shape: Callable  # (path, shape) -> official shape
    from_torch: Callable  # (path, torch array, our shape) -> our array
    pack: Callable = lambda flat, model: flat  # our flat params -> the converter's granularity
    buffers: Callable = lambda model: {}  # model -> {official key: array} not held as parameters
    model_names: tuple[str, ...] = ()  # export model_name values this layout reads


def _var_buffers(model) -> dict[str, np.ndarray]:
    from titok_var.models.var import block_causal_mask, scale_ids

    patch_nums = tuple(int(p) for p in model.patch_nums)
    out = {
        "lvl_1L": scale_ids(patch_nums).astype(np.int64)[None],
        "attn_bias_for_masking": np.where(block_causal_mask(patch_nums), np.float32(0.0),
                                          np.float32(-np.inf))[None, None],
    }
    for i in range(model.depth):
        out[f"blocks.{i}.attn.zero_k_bias"] = np.zeros((model.embed_dim,), np.float32)
    return out


def _vqvae_buffers(model) -> dict[str, np.ndarray]:
    return {"quantize.ema_vocab_hit_SV": np.zeros((len(model.patch_nums), model.codebook_size), np.float32)}


def _pack_titok_qkv(flat: dict, model) -> dict:
    """query/key/value kernels (D, D) and biases (D,) -> one `in_proj` kernel (D, 3D) / bias (3D,)."""
    del model
    out = {}
    for path, value in flat.items():
        if len(path) >= 2 and path[-2] in ("key", "value") and path[:-2] + ("query", path[-1]) in flat:
            continue
        if len(path) >= 2 and path[-2] == "query":
            parts = [flat[path[:-2] + (name, path[-1])] for name in ("query", "key", "value")]
            out[path[:-2] + ("in_proj", path[-1])] = np.concatenate(parts, axis=-1)
        else:
            out[path] = value
    return out


_TITOK = OfficialLayout(
    param_shapes=lambda model: convert_titok.packed_shapes(convert_titok.param_shapes(model)),
    torch_key=lambda path, model: convert_titok.torch_key(path),
    torch_shape=convert_titok.torch_shape, from_torch=convert_titok.from_torch_layout,
    pack=_pack_titok_qkv, model_names=("titok", "titok_stage1", "titok_stage2"))
_MASKGIT = OfficialLayout(
    param_shapes=convert_maskgit.param_shapes, torch_key=convert_maskgit.torch_key,
    torch_shape=convert_maskgit.torch_shape, from_torch=convert_maskgit.from_torch_layout, model_names=("maskgit",))
_VAR = OfficialLayout(
    param_shapes=convert_var_transformer.param_shapes, torch_key=lambda path, model: convert_var_transformer.torch_key(path),
    torch_shape=convert_var_transformer.torch_shape, from_torch=convert_var_transformer.from_torch_layout,
    buffers=_var_buffers, model_names=("var",))
_PERCEPTUAL = {
    arch: OfficialLayout(
        param_shapes=lambda model, arch=arch: convert_perceptual.param_shapes(arch, model),
        torch_key=lambda path, model, arch=arch: convert_perceptual.torch_key(arch, path),
        torch_shape=convert_perceptual.torch_shape, from_torch=convert_perceptual.from_torch_layout)
    for arch in ("lpips", "convnext_s")
}

LAYOUTS: dict[str, OfficialLayout] = {
    "var_vqvae": OfficialLayout(
        param_shapes=convert_var.param_shapes,
        torch_key=lambda path, model: convert_var.torch_key(path, model.share_quant_resi),
        torch_shape=convert_var.torch_shape, from_torch=convert_var.from_torch_layout, buffers=_vqvae_buffers,
        model_names=("var_vqvae",)),
    "maskgit_vqgan": OfficialLayout(
        param_shapes=convert_maskgit_vqgan.param_shapes, torch_key=lambda path, model: convert_maskgit_vqgan.torch_key(path),
        torch_shape=convert_maskgit_vqgan.torch_shape, from_torch=convert_maskgit_vqgan.from_torch_layout),
    "inception_fid": OfficialLayout(
        param_shapes=lambda model: convert_inception._flat_param_shapes(),
        torch_key=lambda path, model: convert_inception.torch_name(path),
        torch_shape=lambda path, shape: convert_inception.to_torch_layout(np.empty(shape, np.uint8)).shape,
        from_torch=lambda path, array, shape: convert_inception.from_torch_layout(array)),
    **_PERCEPTUAL,
}


def layout_for(arch: str) -> OfficialLayout:
    """The layout of a `convert --arch` name (var_d16 -> the VAR transformer's, titok_l32 -> TiTok's ...)."""
    if arch in LAYOUTS:
        return LAYOUTS[arch]
    if arch.startswith("var_d"):
        return _VAR
    if arch.startswith("titok_"):
        return _TITOK
    if arch.startswith("maskgit_"):
        return _MASKGIT
    raise ValueError(f"no official layout for arch {arch!r}")


def _inverse_layout(layout: OfficialLayout, path, value: np.ndarray, torch_shape) -> np.ndarray:
    """Our `value` -> the official tensor, by running the converter's from_torch on indices."""
    size = int(np.prod(torch_shape, dtype=np.int64))
    indices = np.arange(size, dtype=np.int64).reshape(torch_shape)
    where = np.asarray(layout.from_torch(path, indices, tuple(value.shape)))
    if where.shape != value.shape or where.dtype != np.int64 or where.size != size:
        raise AssertionError(f"the converter's layout for {'/'.join(path)} is not a rearrangement")
    out = np.empty(size, value.dtype)
    out[where.reshape(-1)] = value.reshape(-1)
    covered = np.zeros(size, bool)
    covered[where.reshape(-1)] = True  # as many indices as elements: all covered = a permutation
    if not covered.all():
        raise AssertionError(f"the converter's layout for {'/'.join(path)} does not cover the torch tensor")
    return out.reshape(torch_shape)


def to_official(arch: str, model, params) -> dict[str, np.ndarray]:
    """Nested params of `model` -> {official key: numpy array} (float32 parameters, buffers in
    their official dtypes). Every parameter must be present with its shape."""
    layout = layout_for(arch)
    flat = {path: np.asarray(value) for path, value in traverse_util.flatten_dict(params).items()}
    flat = layout.pack(flat, model)
    expected = layout.param_shapes(model)
    missing = sorted("/".join(p) for p in set(expected) - set(flat))
    unused = sorted("/".join(p) for p in set(flat) - set(expected))
    wrong = sorted("/".join(p) for p in set(expected) & set(flat) if tuple(flat[p].shape) != tuple(expected[p]))
    if missing or unused or wrong:
        problems = "; ".join(f"{name}: {items[:6]}" for name, items in
                             (("missing", missing), ("not in the model", unused), ("wrong shape", wrong)) if items)
        raise ValueError(f"the parameters do not fit arch {arch!r}: {problems}")
    state_dict = {}
    for path, shape in expected.items():
        key = layout.torch_key(path, model)
        value = np.asarray(flat[path], np.float32)
        state_dict[key] = _inverse_layout(layout, path, value, tuple(layout.torch_shape(path, shape)))
    for key, value in layout.buffers(model).items():
        if key in state_dict:
            raise AssertionError(f"buffer {key} is also a parameter")
        state_dict[key] = value
    return state_dict


def released_model(arch: str):
    """The model of a released checkpoint of `arch` (for converted .npz inputs without a config)."""
    if arch == "var_vqvae":
        from titok_var.models.var_vqvae import VQVAE
        return VQVAE()
    if arch.startswith("var_d"):
        from titok_var.models.var import VAR
        from titok_var.quantizers.multiscale import VAR_PATCH_NUMS_256, VAR_PATCH_NUMS_512
        depth = int(arch[len("var_d"):])
        return VAR(depth=depth, shared_adaln=depth == 36,
                   patch_nums=VAR_PATCH_NUMS_512 if depth == 36 else VAR_PATCH_NUMS_256)
    if arch == "maskgit_vqgan":
        from titok_var.models.maskgit_vqgan import MaskGitVQGAN
        return MaskGitVQGAN()
    if arch.startswith("titok_"):
        return convert_titok.released_model(arch)
    if arch.startswith("maskgit_"):
        variant = {"maskgit_l32": "L-32", "maskgit_b64": "B-64", "maskgit_s128": "S-128"}[arch]
        from titok_var.models.maskgit import build_generator
        return build_generator(variant)
    if arch in ("lpips", "convnext_s"):
        return convert_perceptual.default_model(arch)
    if arch == "inception_fid":
        return None
    raise ValueError(f"no released model for arch {arch!r}")


def from_official(arch: str, state_dict, model) -> dict:
    """The converter of `arch` on an official state dict, for `model` (a released or narrower one)."""
    layout_for(arch)
    if arch == "var_vqvae":
        return convert_var.convert_vqvae(state_dict, model)
    if arch.startswith("var_d"):
        return convert_var_transformer.convert_var_transformer(state_dict, model)
    if arch == "maskgit_vqgan":
        return convert_maskgit_vqgan.convert_maskgit_vqgan(state_dict, model)
    if arch.startswith("titok_"):
        return convert_titok.convert_titok(state_dict, model)
    if arch.startswith("maskgit_"):
        return convert_maskgit.convert_generator(state_dict, model)
    if arch == "inception_fid":
        return convert_inception.convert_state_dict(state_dict)
    if arch == "lpips":
        return convert_perceptual.convert_lpips(state_dict, None, model)
    return convert_perceptual.convert_convnext(state_dict, model)
