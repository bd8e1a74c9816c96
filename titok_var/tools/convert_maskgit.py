"""Convert the official TiTok MaskGIT generators (bytedance/1d-tokenizer `modeling/maskgit.py`) into
`titok_var.models.maskgit` params.

Released weights: `generator_titok_{l32,b64,s128}.bin` (HF `fun-research/TiTok`), torch state dicts.
Usage (.bin/.pth, .safetensors and torch-keyed .npz are read with numpy alone, no torch):

    python -m titok_var.tools.convert_maskgit --variant L-32 --input generator_titok_l32.bin \
        --output maskgit_l32.npz

Name mapping (torch -> ours):

* ImageBert: drop the `model.` prefix, `encoder.layer.{i}` -> `encoder/layer_{i}`, other dots ->
  `/`; Linear `weight` (O, I) -> `kernel` (I, O); Embedding `weight` -> `embedding`; LayerNorm
  `weight` -> `scale`. The buffers `model.embeddings.position_ids` / `token_type_ids` that older
  transformers versions saved are ignored.
* UViTBert: `in_blocks.{i}` / `out_blocks.{i}` -> `in_blocks_{i}` / `out_blocks_{i}`; `embeddings.weight`
  -> `embeddings/embedding`; `pos_embed` stays (1, N+1, D); the packed `attn.qkv.weight` (3D, D),
  whose output is laid out (3, heads, head_dim), -> `attn/qkv/kernel` (D, 3, heads, head_dim).
"""

import argparse
import os
import re
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from titok_var.models.maskgit import ImageBert, UViTBert, build_generator
from titok_var.weights import state_dicts
from titok_var.tools.state_dict_matching import abstract_param_shapes, match_state_dict

IMAGEBERT_IGNORED_KEYS = ("model.embeddings.position_ids", "model.embeddings.token_type_ids")
RELEASE_URL = "https://huggingface.co/fun-research/TiTok/resolve/main/{}"
CHECKPOINTS = {
    "L-32": "generator_titok_l32.bin",
    "B-64": "generator_titok_b64.bin",
    "S-128": "generator_titok_s128.bin",
}

_INDEXED = re.compile(r"(layer|in_blocks|out_blocks)_(\d+)")


def param_shapes(model) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flat {path: shape} of a generator's params (abstract: nothing is computed)."""
    tokens = jnp.zeros((1, model.seq_len), jnp.int32)
    labels = jnp.zeros((1,), jnp.int32)
    return abstract_param_shapes(model, tokens, labels)


def torch_key(path: tuple[str, ...], model) -> str:
    """Our parameter path -> the official state-dict key."""
    *modules, leaf = path
    parts = [".".join(m.groups()) if (m := _INDEXED.fullmatch(module)) else module for module in modules]
    if leaf == "pos_embed":
        parts.append("pos_embed")
    elif leaf == "bias":
        parts.append("bias")
    elif leaf in ("kernel", "embedding", "scale"):
        parts.append("weight")
    else:
        raise KeyError(f"no torch name for parameter {'/'.join(path)}")
    key = ".".join(parts)
    return f"model.{key}" if isinstance(model, ImageBert) else key


def torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the torch tensor that holds our parameter of `shape`."""
    if path[-1] == "kernel" and len(shape) == 2:  # Linear (O, I)
        return (shape[1], shape[0])
    if path[-1] == "kernel" and len(shape) == 4:  # packed qkv (D, 3, H, d) <- (3 H d, D)
        return (int(np.prod(shape[1:])), shape[0])
    return tuple(shape)


def from_torch_layout(path: tuple[str, ...], array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(array)
    if path[-1] == "kernel":
        return array.T.reshape(shape)
    return array


def expected_torch_shapes(model) -> dict[str, tuple[int, ...]]:
    """Every key (bar ignored buffers) the official state dict of `model` must hold, with its shape."""
    return {torch_key(p, model): torch_shape(p, s) for p, s in param_shapes(model).items()}


def _convert(state_dict: Mapping[str, np.ndarray], model, ignored=()) -> dict:
    match = match_state_dict(
        state_dict, param_shapes(model), lambda path: torch_key(path, model), torch_shape, from_torch_layout,
        ignored=lambda key: key in ignored,
    )
    if not match.ok:
        fields = ", ".join(f"{f}={getattr(model, f)}" for f in
                           ("codebook_size", "num_classes", "seq_len", "hidden_size", "depth", "num_heads", "mlp_dim"))
        raise ValueError(f"state dict does not match {type(model).__name__}({fields}): " + match.problems(limit=40))
    return match.nested_params()


def convert_imagebert(state_dict: Mapping[str, np.ndarray], model: ImageBert | None = None) -> dict:
    """Official ImageBert state dict -> nested float32 numpy params of `model` (default: the
    released L-32 generator). Use as `model.apply({"params": params}, tokens, labels)`.

    Raises ValueError naming every missing, unexpected and mis-shaped key.
    """
    model = build_generator("L-32") if model is None else model
    if not isinstance(model, ImageBert):
        raise TypeError(f"convert_imagebert needs an ImageBert, got {type(model).__name__}")
    return _convert(state_dict, model, IMAGEBERT_IGNORED_KEYS)


def convert_uvitbert(state_dict: Mapping[str, np.ndarray], model: UViTBert | None = None) -> dict:
    """Official UViTBert state dict -> params of `model` (default: the released S-128 generator)."""
    model = build_generator("S-128") if model is None else model
    if not isinstance(model, UViTBert):
        raise TypeError(f"convert_uvitbert needs a UViTBert, got {type(model).__name__}")
    return _convert(state_dict, model)


def convert_generator(state_dict: Mapping[str, np.ndarray], model) -> dict:
    """Dispatches on the model type."""
    if isinstance(model, ImageBert):
        return convert_imagebert(state_dict, model)
    return convert_uvitbert(state_dict, model)


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """The generator's state dict (.bin / .pth read without torch, .safetensors, torch-keyed .npz)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"MaskGIT generator checkpoint {path!r} not found; the released generators are "
                                + ", ".join(RELEASE_URL.format(name) for name in CHECKPOINTS.values()))
    return state_dicts.read_state_dict(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", required=True, choices=sorted(CHECKPOINTS))
    parser.add_argument("--input", required=True, help="generator .bin/.pth or a torch-keyed .npz")
    parser.add_argument("--output", required=True, help="flat .npz with '/'-joined parameter paths")
    args = parser.parse_args(argv)
    model = build_generator(args.variant)
    params = convert_generator(load_torch_state_dict(args.input), model)
    flat = traverse_util.flatten_dict(params, sep="/")
    np.savez(args.output, **flat)
    print(f"wrote {args.output}: {sum(v.size for v in flat.values()):,} parameters")


if __name__ == "__main__":
    main()
