"""Convert the official MaskGIT-VQGAN weights into `titok_var.models.maskgit_vqgan` params.

Two sources:
- `maskgit-vqgan-imagenet-f16-256.bin` (HF `fun-research/TiTok`), keys `encoder.*`, `decoder.*`,
  `quantize.embedding.weight` -> `MaskGitVQGAN` params (`convert_maskgit_vqgan`).
- A stage-2 TiTok checkpoint (`tokenizer_titok_*.bin`): its fine-tuned `pixel_decoder.*` and
  `pixel_quantize.embedding.weight` -> `MaskGitVQGANDecoder` params (`convert_titok_pixel_decoder`);
  TiTok's own keys are left to the TiTok converter.

Usage (.bin/.pth, .safetensors and torch-keyed .npz are read with numpy alone, no torch):

    python -m titok_var.tools.convert_maskgit_vqgan --input maskgit-vqgan-imagenet-f16-256.bin --output DIR

writes DIR/maskgit_vqgan.npz, or DIR/pixel_decoder.npz when the input holds `pixel_*` keys. The
.npz is flat, keyed by "/"-joined parameter paths ("encoder/conv_in/kernel").

Name mapping (torch -> ours): `down.{i}.block.{j}` -> `down_{i}_block_{j}`, `up.{i}.block.{j}` ->
`up_{i}_block_{j}`, `up.{i}.upsample_conv` -> `up_{i}_upsample_conv`, `mid.{j}` -> `mid_{j}`;
`weight` -> `kernel` (conv, (O, I, kh, kw) -> (kh, kw, I, O)), `scale` (GroupNorm) or, for
`quantize.embedding.weight`, the codebook `quantize/embedding`.
"""

import argparse
import os
import re
from collections.abc import Mapping

import jax
import numpy as np

from titok_var.models.maskgit_vqgan import (
    MASKGIT_VQGAN_F16_256,
    MaskGitVQGAN,
    MaskGitVQGANDecoder,
    MaskGitVQGANEncoder,
    example_inputs,
)
from titok_var.tools.convert_var import load_torch_checkpoint, save_params
from titok_var.tools.state_dict_matching import abstract_param_shapes, describe, match_state_dict

CHECKPOINT_NAME = "maskgit-vqgan-imagenet-f16-256.bin"
CHECKPOINT_URL = "https://huggingface.co/fun-research/TiTok/resolve/main/maskgit-vqgan-imagenet-f16-256.bin"
FULL_PARAMS_FILE = "maskgit_vqgan.npz"
PIXEL_PARAMS_FILE = "pixel_decoder.npz"
TITOK_PIXEL_PREFIXES = ("pixel_decoder.", "pixel_quantize.")

# down_2_block_0 -> down.2.block.0; up_3_upsample_conv -> up.3.upsample_conv; mid_1 -> mid.1
_LEVEL_BLOCK = re.compile(r"(down|up)_(\d+)_block_(\d+)")
_UPSAMPLE_CONV = re.compile(r"up_(\d+)_upsample_conv")
_MID_BLOCK = re.compile(r"mid_(\d+)")


def torch_key(path: tuple[str, ...]) -> str:
    """Our parameter path, e.g. ("decoder", "up_1_block_0", "nin_shortcut", "kernel"), -> torch key."""
    *modules, leaf = path
    parts = []
    for module in modules:
        if m := _LEVEL_BLOCK.fullmatch(module):
            parts.append(f"{m.group(1)}.{m.group(2)}.block.{m.group(3)}")
        elif m := _UPSAMPLE_CONV.fullmatch(module):
            parts.append(f"up.{m.group(1)}.upsample_conv")
        elif m := _MID_BLOCK.fullmatch(module):
            parts.append(f"mid.{m.group(1)}")
        else:
            parts.append(module)
    if leaf not in ("kernel", "scale", "embedding", "bias"):
        raise KeyError(f"no torch name for parameter {'/'.join(path)}")
    if leaf == "embedding":  # the codebook is the quantizer's nn.Embedding `embedding`
        parts.append("embedding")
    parts.append("bias" if leaf == "bias" else "weight")
    return ".".join(parts)


def torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    if path[-1] == "kernel":  # (kh, kw, I, O) -> (O, I, kh, kw)
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(shape)


def from_torch_layout(path: tuple[str, ...], array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(array)
    return array.transpose(2, 3, 1, 0) if path[-1] == "kernel" else array


def param_shapes(model) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flat {path: shape} of any of the three modules' params (abstract: nothing is computed)."""
    return abstract_param_shapes(model, example_inputs(model))


def expected_torch_shapes(model=None) -> dict[str, tuple[int, ...]]:
    """Every key the official state dict of `model` holds, with its torch shape."""
    model = MaskGitVQGAN() if model is None else model
    return {torch_key(path): torch_shape(path, shape) for path, shape in param_shapes(model).items()}


def _describe_model(model) -> str:
    return (
        f"{type(model).__name__}(hidden_channels={model.hidden_channels}, "
        f"channel_mult={tuple(model.channel_mult)}, num_res_blocks={model.num_res_blocks}, "
        f"codebook {model.codebook_size}x{model.z_channels}, image_size={model.image_size})"
    )


def _match(state_dict: Mapping[str, np.ndarray], model, source: str) -> dict:
    match = match_state_dict(state_dict, param_shapes(model), torch_key, torch_shape, from_torch_layout)
    if match.ok:
        return match.nested_params()
    if match.nothing_matched:
        example = next(iter(expected_torch_shapes(model)))
        problems = f"none of its {len(match.missing)} parameter keys is present (expected e.g. {example})"
        if match.unexpected:
            problems += "; " + describe("unexpected keys", match.unexpected)
    else:
        problems = match.problems()
    raise ValueError(f"{source} does not match {_describe_model(model)}: {problems}")


def convert_maskgit_vqgan(state_dict: Mapping[str, np.ndarray], model: MaskGitVQGAN | None = None) -> dict:
    """The released MaskGIT-VQGAN state dict -> nested float32 params of `model` (default: the
    released configuration). Raises ValueError naming every missing, unused and mis-shaped key."""
    model = MaskGitVQGAN() if model is None else model
    if not isinstance(model, (MaskGitVQGAN, MaskGitVQGANEncoder)):
        raise TypeError(f"expected a MaskGitVQGAN or MaskGitVQGANEncoder, got {type(model).__name__}")
    if isinstance(model, MaskGitVQGANEncoder):  # the encoder alone: the decoder keys are not unused
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("decoder.")}
    return _match(state_dict, model, f"state dict (released checkpoint: {CHECKPOINT_NAME})")


def convert_titok_pixel_decoder(
    state_dict: Mapping[str, np.ndarray], model: MaskGitVQGANDecoder | None = None
) -> dict:
    """The `pixel_decoder.*` / `pixel_quantize.*` keys of a stage-2 TiTok state dict ->
    `MaskGitVQGANDecoder` params (default: the released configuration).

    Only keys under those two prefixes are read (TiTok's own `decoder.*`, `quantize.*` are other
    modules); among them, missing, unused and mis-shaped keys raise ValueError.
    """
    model = MaskGitVQGANDecoder() if model is None else model
    if not isinstance(model, MaskGitVQGANDecoder):
        raise TypeError(f"expected a MaskGitVQGANDecoder, got {type(model).__name__}")
    pixel = {k: v for k, v in state_dict.items() if k.startswith(TITOK_PIXEL_PREFIXES)}
    if not pixel:
        raise ValueError(
            "TiTok state dict has no pixel_decoder.* / pixel_quantize.* keys: only stage-2 "
            "(finetune_decoder=True) checkpoints hold the fine-tuned MaskGIT-VQGAN decoder; for a "
            f"stage-1 model convert {CHECKPOINT_NAME} and use maskgit_vqgan.pixel_decoder_params"
        )
    return _match(pixel, model, "TiTok pixel decoder")


def has_pixel_decoder(state_dict: Mapping[str, np.ndarray]) -> bool:
    """Whether a state dict is TiTok's (pixel_* keys) rather than the MaskGIT-VQGAN release."""
    return any(k.startswith(TITOK_PIXEL_PREFIXES) for k in state_dict)


def _read_state_dict(path: str) -> dict[str, np.ndarray]:
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"MaskGIT-VQGAN / TiTok checkpoint not found at {path!r}; the released tokenizer is {CHECKPOINT_URL}"
        )
    return load_torch_checkpoint(path)


def load_params(path: str, model=None) -> dict:
    """Params of `model` (default: the released `MaskGitVQGAN`) from a converted flat .npz, or
    converted on the fly from a torch checkpoint / torch-keyed .npz. Mismatches raise ValueError."""
    model = MaskGitVQGAN() if model is None else model
    path = os.fspath(path)
    if path.endswith(".npz") and os.path.exists(path):
        with np.load(path) as data:
            flat = {k: np.asarray(data[k]) for k in data.files}
        if flat and all("/" in k for k in flat):
            match = match_state_dict(
                flat, param_shapes(model), "/".join, lambda p, s: tuple(s), lambda p, a, s: a
            )
            if not match.ok:
                raise ValueError(f"{path} does not match {_describe_model(model)}: {match.problems()}")
            return match.nested_params()
    state_dict = _read_state_dict(path)
    if isinstance(model, MaskGitVQGANDecoder):
        return convert_titok_pixel_decoder(state_dict, model)
    return convert_maskgit_vqgan(state_dict, model)


def convert_file(input_path: str, output_dir: str, config: Mapping | None = None) -> tuple[str, dict]:
    """Converts a checkpoint into `output_dir`; returns (written path, params).

    `config`: the model fields (default `MASKGIT_VQGAN_F16_256`, the release); a TiTok checkpoint
    gives `MaskGitVQGANDecoder` params with them, the MaskGIT-VQGAN one `MaskGitVQGAN` params.
    """
    config = dict(MASKGIT_VQGAN_F16_256 if config is None else config)
    state_dict = _read_state_dict(os.fspath(input_path))
    if has_pixel_decoder(state_dict):
        params, name = convert_titok_pixel_decoder(state_dict, MaskGitVQGANDecoder(**config)), PIXEL_PARAMS_FILE
    else:
        params, name = convert_maskgit_vqgan(state_dict, MaskGitVQGAN(**config)), FULL_PARAMS_FILE
    os.makedirs(output_dir, exist_ok=True)
    return save_params(params, os.path.join(output_dir, name)), params


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help=f"{CHECKPOINT_NAME}, a stage-2 TiTok .bin, or a torch-keyed .npz")
    parser.add_argument("--output", required=True, help=f"directory for {FULL_PARAMS_FILE} / {PIXEL_PARAMS_FILE}")
    args = parser.parse_args(argv)
    written, params = convert_file(args.input, args.output)
    count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
    print(f"wrote {written}: {count:,} parameters")
    return written


if __name__ == "__main__":
    main()
