"""Convert the released TiTok tokenizers (bytedance/1d-tokenizer) into `titok_var.models.titok.TiTok`
params.

Released weights (torch state dicts, EMA weights, all 256 px, patch 16):
- `tokenizer_titok_{l32,b64,s128}.bin` at https://huggingface.co/fun-research/TiTok: the paper's
  models, stage 2. Legacy layout: proxy-code head (`decoder.ffn.0/2`), the encoder's memory
  reinterpretation before `conv_out`, and the fine-tuned MaskGIT-VQGAN decoder as `pixel_decoder.*` /
  `pixel_quantize.*` (our `pixel_vqgan/pixel_decoder`, `pixel_vqgan/pixel_quantize`).
- `model.safetensors` of https://huggingface.co/yucornetto/tokenizer_titok_{bl64,bl128,sl256}_vq8k_imagenet:
  single-stage VQ models with an 8192 x 64 codebook, no l2 norm, and a pixel head
  (`decoder.ffn.0` 1x1 conv + pixel shuffle + 3x3 `decoder.conv_out`).
The VAE variants (`*_vae_c16`) have no quantizer here and are not supported.

Usage (.bin/.pth, .safetensors and torch-keyed .npz are read with numpy alone, no torch):

    python -m titok_var.tools.convert_titok --variant titok_l32 --input tokenizer_titok_l32.bin --output DIR

writes DIR/titok_l32.npz, flat, keyed by "/"-joined parameter paths; build the model with
`released_model("titok_l32")`.

Name mapping (torch -> ours): `transformer.{i}` -> `transformer/block_{i}`; `ln_*.{weight,bias}` ->
`ln_*/norm/{scale,bias}`; `attn.in_proj_weight` (3D, D), rows [q; k; v], -> `attn/{query,key,value}`
kernels (D, D) each (the head split of torch's MHA is contiguous, as our reshape); `attn.out_proj`
-> `attn/out`; `mlp.c_fc` / `mlp.c_proj` -> `mlp/fc_in` / `mlp/fc_out`; `decoder.ffn.{0,2}` ->
`decoder/ffn_{0,2}`; `quantize.embedding.weight` -> `quantize/codebook`; bare parameters (embeddings,
`mask_token`, `latent_tokens`) keep name and shape. Layouts: Linear (O, I) -> (I, O); the 1x1 convs
`encoder.conv_out`, `decoder.ffn.*` (O, I, 1, 1) -> Dense (I, O); other convs (O, I, kh, kw) ->
(kh, kw, I, O). The `pixel_*` keys go through `convert_maskgit_vqgan`'s mapping.
"""

import argparse
import os
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from titok_var.models.titok import TiTok
from titok_var.tools import convert_maskgit_vqgan
from titok_var.tools.convert_var import save_params
from titok_var.weights import state_dicts
from titok_var.tools.state_dict_matching import abstract_param_shapes, match_state_dict

_PAPER_MODEL = {
    "image_size": 256, "patch_size": 16, "codebook_size": 4096, "token_size": 12, "use_l2_norm": True,
    "commitment_cost": 0.25, "legacy_reshape": True, "decoder_head": "proxy_codes", "proxy_codebook_size": 1024,
    "symmetric_pixels": False, "pixel_decoder": "f16_256",
}
_VQ8K_MODEL = {
    "image_size": 256, "patch_size": 16, "codebook_size": 8192, "token_size": 64, "use_l2_norm": False,
    "commitment_cost": 0.25, "legacy_reshape": False, "decoder_head": "pixels", "symmetric_pixels": False,
    "pixel_decoder": "",
}
# TiTok constructor fields of each released tokenizer (configs/infer/ of the official repository).
RELEASED_VARIANTS = {
    "titok_l32": dict(_PAPER_MODEL, num_latent_tokens=32, encoder_size="large", decoder_size="large"),
    "titok_b64": dict(_PAPER_MODEL, num_latent_tokens=64, encoder_size="base", decoder_size="base"),
    "titok_s128": dict(_PAPER_MODEL, num_latent_tokens=128, encoder_size="small", decoder_size="small"),
    "titok_bl64_vq8k": dict(_VQ8K_MODEL, num_latent_tokens=64, encoder_size="base", decoder_size="large"),
    "titok_bl128_vq8k": dict(_VQ8K_MODEL, num_latent_tokens=128, encoder_size="base", decoder_size="large"),
    "titok_sl256_vq8k": dict(_VQ8K_MODEL, num_latent_tokens=256, encoder_size="small", decoder_size="large"),
}
_HF_BIN = "https://huggingface.co/fun-research/TiTok/resolve/main/{}"
_HF_MIXIN = "https://huggingface.co/yucornetto/tokenizer_{}_imagenet/resolve/main/model.safetensors"
# variant -> (file name, download URL)
CHECKPOINTS = {
    **{v: (f"tokenizer_{v}.bin", _HF_BIN.format(f"tokenizer_{v}.bin")) for v in ("titok_l32", "titok_b64", "titok_s128")},
    **{v: ("model.safetensors", _HF_MIXIN.format(v)) for v in ("titok_bl64_vq8k", "titok_bl128_vq8k", "titok_sl256_vq8k")},
}

PIXEL_SUBTREE = "pixel_vqgan"  # our name of the MaskGIT-VQGAN decoder inside TiTok
_QKV = ("query", "key", "value")
_PACKED_QKV = "in_proj"  # torch's nn.MultiheadAttention packs q, k, v into one projection
_CONV_1X1_DENSES = ("conv_out", "ffn_0", "ffn_2")  # torch 1x1 Conv2d, a Dense here
_MODULE_NAMES = {"out": "out_proj", "fc_in": "c_fc", "fc_out": "c_proj", "ffn_0": "ffn.0", "ffn_2": "ffn.2"}
_BLOCK = re.compile(r"block_(\d+)")
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def released_model(variant: str, **overrides) -> TiTok:
    """The TiTok of a released tokenizer (`overrides`: e.g. dtype, remat)."""
    if variant not in RELEASED_VARIANTS:
        raise ValueError(f"unknown TiTok variant {variant!r}; released: {sorted(RELEASED_VARIANTS)}")
    return TiTok(**{**RELEASED_VARIANTS[variant], **overrides})


def param_shapes(model: TiTok) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flat {path: shape} of the model's params (abstract: nothing is computed)."""
    images = jnp.zeros((1, model.image_size, model.image_size, 3), jnp.float32)
    return abstract_param_shapes(model, images)


def _is_qkv(path) -> bool:
    return len(path) >= 3 and path[-3] == "attn" and path[-2] in _QKV


def packed_shapes(shapes: Mapping[tuple, tuple]) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Our params at torch's granularity: each attention's query/key/value become one `in_proj`
    Dense (kernel (D, 3D), bias (3D,)), the packed projection of torch's MHA."""
    out = {}
    for path, shape in shapes.items():
        if not _is_qkv(path):
            out[path] = tuple(shape)
        elif path[-2] == "query":
            *lead, last = shape
            out[(*path[:-2], _PACKED_QKV, path[-1])] = (*lead, 3 * last)
    return out


def unpack_qkv(flat: Mapping[tuple, np.ndarray]) -> dict[tuple, np.ndarray]:
    """Inverse of `packed_shapes` on arrays: `in_proj` columns [q | k | v] -> query, key, value."""
    out = {}
    for path, value in flat.items():
        if len(path) >= 2 and path[-2] == _PACKED_QKV:
            for name, part in zip(_QKV, np.split(value, 3, axis=-1)):
                out[(*path[:-2], name, path[-1])] = np.ascontiguousarray(part)
        else:
            out[path] = value
    return out


def torch_key(path: tuple[str, ...]) -> str:
    """Our (packed) parameter path, e.g. ("encoder", "transformer", "block_0", "attn", "in_proj",
    "kernel"), -> the official key ("encoder.transformer.0.attn.in_proj_weight")."""
    if path[0] == PIXEL_SUBTREE:
        return convert_maskgit_vqgan.torch_key(path[1:])
    if path == ("quantize", "codebook"):
        return "quantize.embedding.weight"
    *modules, leaf = path
    parts = []
    for module in modules:
        if m := _BLOCK.fullmatch(module):
            parts.append(m.group(1))
        elif module != "norm":  # our LayerNorm wrapper's inner nn.LayerNorm
            parts.append(_MODULE_NAMES.get(module, module))
    if modules and modules[-1] == _PACKED_QKV:
        return ".".join(parts[:-1] + [f"in_proj_{'bias' if leaf == 'bias' else 'weight'}"])
    # Bare parameters (embeddings, mask_token, latent_tokens) keep their name.
    parts.append(_LEAF_NAMES.get(leaf, leaf))
    return ".".join(parts)


def _is_conv_1x1(path) -> bool:
    return len(path) >= 2 and path[-1] == "kernel" and path[-2] in _CONV_1X1_DENSES


def torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the torch tensor holding our (packed) parameter of `shape`."""
    if path[0] == PIXEL_SUBTREE:
        return convert_maskgit_vqgan.torch_shape(path[1:], shape)
    if path[-1] == "kernel" and len(shape) == 4:  # conv (kh, kw, I, O) <- (O, I, kh, kw)
        return (shape[3], shape[2], shape[0], shape[1])
    if path[-1] == "kernel" and _is_conv_1x1(path):  # Dense (I, O) <- conv (O, I, 1, 1)
        return (shape[1], shape[0], 1, 1)
    if path[-1] == "kernel":  # Dense (I, O) <- Linear (O, I)
        return (shape[1], shape[0])
    return tuple(shape)


def from_torch_layout(path: tuple[str, ...], array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Torch tensor -> our layout for the (packed) parameter at `path` whose shape is `shape`."""
    if path[0] == PIXEL_SUBTREE:
        return convert_maskgit_vqgan.from_torch_layout(path[1:], array, shape)
    array = np.asarray(array)
    if path[-1] == "kernel" and len(shape) == 4:
        return array.transpose(2, 3, 1, 0)
    if path[-1] == "kernel" and _is_conv_1x1(path):
        return array[:, :, 0, 0].T
    if path[-1] == "kernel":
        return array.T
    return array


def expected_torch_shapes(model: TiTok) -> dict[str, tuple[int, ...]]:
    """Every key the official state dict of `model` holds, with its torch shape."""
    return {torch_key(p): torch_shape(p, s) for p, s in packed_shapes(param_shapes(model)).items()}


def describe_model(model: TiTok) -> str:
    return (
        f"TiTok(image_size={model.image_size}, patch_size={model.patch_size}, "
        f"num_latent_tokens={model.num_latent_tokens}, encoder={model.encoder_size}, "
        f"decoder={model.decoder_size}, codebook {model.codebook_size}x{model.token_size}, "
        f"decoder_head={model.decoder_head}, pixel_decoder={model.pixel_decoder!r})"
    )


def _hints(match, state_dict) -> str:
    """Extra words for the two likely mix-ups: stage-1 vs stage-2 checkpoints, wrong file."""
    pixel_prefixes = convert_maskgit_vqgan.TITOK_PIXEL_PREFIXES
    has_pixel = any(k.startswith(pixel_prefixes) for k in state_dict)
    hints = []
    if match.missing and all(m.startswith(pixel_prefixes) for m in match.missing) and not has_pixel:
        hints.append("the state dict has no pixel_decoder.* / pixel_quantize.* keys (a stage-1 checkpoint?): "
                     "build the TiTok with pixel_decoder='' and take the decoder from "
                     f"{convert_maskgit_vqgan.CHECKPOINT_NAME} (convert_maskgit_vqgan.pixel_decoder_params)")
    if match.unexpected and all(u.startswith(pixel_prefixes) for u in match.unexpected):
        hints.append("the state dict holds a fine-tuned pixel decoder (stage 2): build the TiTok with "
                     "pixel_decoder='f16_256'")
    if match.nothing_matched:
        hints.append("none of the TiTok keys is present (expected e.g. latent_tokens, "
                     "encoder.transformer.0.attn.in_proj_weight): not a TiTok tokenizer state dict?")
    return "".join(f"; hint: {h}" for h in hints)


def convert_titok(state_dict: Mapping[str, np.ndarray], model: TiTok) -> dict:
    """Official TiTok state dict (numpy arrays keyed by torch names) -> nested float32 numpy params
    of `model` (e.g. `released_model("titok_l32")`); use as `model.apply({"params": params}, ...)`.

    Raises ValueError naming every missing, unused and mis-shaped key.
    """
    if not isinstance(model, TiTok):
        raise TypeError(f"convert_titok needs a TiTok, got {type(model).__name__}")
    shapes = param_shapes(model)
    match = match_state_dict(state_dict, packed_shapes(shapes), torch_key, torch_shape, from_torch_layout)
    if not match.ok:
        raise ValueError(
            f"state dict does not match {describe_model(model)}: {match.problems()}{_hints(match, state_dict)}"
        )
    flat = unpack_qkv(match.params)
    assert {p: v.shape for p, v in flat.items()} == shapes  # the packing round-trips every parameter
    return traverse_util.unflatten_dict(flat)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """State dict of a TiTok checkpoint: .bin/.pth (read without torch), .safetensors or torch-keyed .npz."""
    path = os.fspath(path)
    if not os.path.exists(path):
        sources = "; ".join(f"{v}: {url}" for v, (_, url) in CHECKPOINTS.items())
        raise FileNotFoundError(f"TiTok checkpoint not found at {path!r}; the released tokenizers are {sources}")
    return state_dicts.read_state_dict(path)


def load_params(path: str, model: TiTok) -> dict:
    """Params of `model` from a converted flat .npz, or converted on the fly from a checkpoint
    (.bin/.pth, .safetensors, torch-keyed .npz). Mismatches raise ValueError."""
    path = os.fspath(path)
    if path.endswith(".npz") and os.path.exists(path):
        with np.load(path) as data:
            flat = {k: np.asarray(data[k]) for k in data.files}
        if flat and not any("." in k for k in flat):  # ours: "/"-joined; torch keys have dots
            match = match_state_dict(flat, param_shapes(model), "/".join, lambda p, s: tuple(s), lambda p, a, s: a)
            if not match.ok:
                raise ValueError(f"{path} does not match {describe_model(model)}: {match.problems()}")
            return match.nested_params()
    return convert_titok(read_state_dict(path), model)


def convert_file(input_path: str, output: str, variant: str) -> tuple[str, dict]:
    """Converts a released checkpoint of `variant`; writes `output` (an .npz path, or a directory
    that receives <variant>.npz). Returns (written path, params)."""
    model = released_model(variant)
    params = convert_titok(read_state_dict(input_path), model)
    output = os.fspath(output)
    if not output.endswith(".npz"):
        os.makedirs(output, exist_ok=True)
        output = os.path.join(output, f"{variant}.npz")
    return save_params(params, output), params


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", required=True, choices=sorted(RELEASED_VARIANTS))
    parser.add_argument("--input", required=True, help="tokenizer .bin/.pth/.safetensors or a torch-keyed .npz")
    parser.add_argument("--output", required=True, help="output directory (or an .npz file path)")
    args = parser.parse_args(argv)
    written, params = convert_file(args.input, args.output, args.variant)
    count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
    print(f"wrote {written}: {count:,} parameters ({describe_model(released_model(args.variant))})")
    return written


if __name__ == "__main__":
    main()
