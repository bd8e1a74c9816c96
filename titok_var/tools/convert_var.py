"""Convert the official VAR VQVAE (`vae_ch160v4096z32.pth`, FoundationVision/VAR) into
`titok_var.models.var_vqvae.VQVAE` params.

The weights are released at https://huggingface.co/FoundationVision/var (`vae_ch160v4096z32.pth`,
shared by every VAR model). Usage (the .pth is read with numpy alone, no torch):

    python -m titok_var.tools.convert_var --input vae_ch160v4096z32.pth --output var_vqvae.npz

The input may also be an .npz of the torch state dict (arrays keyed by the torch names). The
output is a flat .npz keyed by "/"-joined parameter paths ("encoder/conv_in/kernel").

Name mapping (torch -> ours): module indices become underscores (`encoder.down.2.block.0` ->
`encoder/down_2_block_0`, `decoder.mid.attn_1` -> `decoder/mid_attn_1`,
`quantize.quant_resi.qresi_ls.3` -> `quantize/phi_3`); `weight` -> `kernel` (convs), `scale`
(GroupNorm) or `embedding` (codebook). Layouts: conv (O, I, kh, kw) -> (kh, kw, I, O); the
attention `qkv` / `proj_out` 1x1 convs (O, I, 1, 1) -> Dense kernels (I, O). The training-only
buffer `quantize.ema_vocab_hit_SV` is dropped.
"""

import argparse
import os
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from titok_var.models.var_vqvae import VQVAE
from titok_var.weights import state_dicts
from titok_var.tools.state_dict_matching import abstract_param_shapes, describe, match_state_dict

CHECKPOINT_NAME = "vae_ch160v4096z32.pth"
CHECKPOINT_URL = "https://huggingface.co/FoundationVision/var/resolve/main/vae_ch160v4096z32.pth"
IGNORED_KEYS = ("quantize.ema_vocab_hit_SV",)

# down_2_block_0 -> down.2.block.0; up_4_attn_1 -> up.4.attn.1; down_0_downsample -> down.0.downsample
_LEVEL_MODULE = re.compile(r"(down|up)_(\d+)_(?:(block|attn)_(\d+)|(downsample|upsample))")
_MID_MODULE = re.compile(r"mid_(block_1|attn_1|block_2)")
_PHI_MODULE = re.compile(r"phi_(\d+)")


def _phi_prefix(share_quant_resi: int) -> str:
    """Torch container of the phi convs: PhiShared / PhiNonShared / PhiPartiallyShared."""
    if share_quant_resi == 1:
        return "quant_resi.qresi"
    if share_quant_resi == 0:
        return "quant_resi.{}"
    return "quant_resi.qresi_ls.{}"


def torch_key(path: tuple[str, ...], share_quant_resi: int = 4) -> str:
    """Our parameter path, e.g. ("encoder", "down_2_block_0", "conv1", "kernel"), -> torch key."""
    *modules, leaf = path
    parts = []
    for module in modules:
        if m := _LEVEL_MODULE.fullmatch(module):
            parts.append(".".join(g for g in m.groups() if g is not None))
        elif m := _MID_MODULE.fullmatch(module):
            parts.append(f"mid.{m.group(1)}")
        elif m := _PHI_MODULE.fullmatch(module):
            parts.append(_phi_prefix(share_quant_resi).format(m.group(1)))
        else:
            parts.append(module)
    if leaf not in ("kernel", "scale", "embedding", "bias"):
        raise KeyError(f"no torch name for parameter {'/'.join(path)}")
    if leaf == "embedding":  # the codebook is a parameter of the quantizer, an nn.Embedding in torch
        parts.append("embedding")
    parts.append("bias" if leaf == "bias" else "weight")
    return ".".join(parts)


def torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the torch tensor holding our parameter of `shape`."""
    if path[-1] == "kernel" and len(shape) == 4:  # (kh, kw, I, O) -> (O, I, kh, kw)
        return (shape[3], shape[2], shape[0], shape[1])
    if path[-1] == "kernel" and len(shape) == 2:  # Dense (I, O) <- 1x1 conv (O, I, 1, 1)
        return (shape[1], shape[0], 1, 1)
    return tuple(shape)


def from_torch_layout(path: tuple[str, ...], array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Torch tensor -> our layout for the parameter at `path` whose shape is `shape`."""
    array = np.asarray(array)
    if path[-1] == "kernel" and len(shape) == 4:
        return array.transpose(2, 3, 1, 0)
    if path[-1] == "kernel" and len(shape) == 2:
        return array[:, :, 0, 0].T
    return array


def _dummy_images(model: VQVAE):
    size = model.image_size
    return jnp.zeros((1, size, size, 3), jnp.float32)


def param_shapes(model: VQVAE | None = None) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flat {path: shape} of the model's params (abstract: nothing is computed)."""
    model = VQVAE() if model is None else model
    return abstract_param_shapes(model, _dummy_images(model))


def expected_torch_shapes(model: VQVAE | None = None) -> dict[str, tuple[int, ...]]:
    """Every key the official state dict must hold (bar ignored buffers), with its torch shape."""
    model = VQVAE() if model is None else model
    return {
        torch_key(path, model.share_quant_resi): torch_shape(path, shape)
        for path, shape in param_shapes(model).items()
    }


def convert_vqvae(state_dict: Mapping[str, np.ndarray], model: VQVAE | None = None) -> dict:
    """Official torch state dict -> nested float32 numpy params of `model` (default: the released
    `vae_ch160v4096z32` configuration). Use as `model.apply({"params": params}, ...)`.

    Raises ValueError naming every missing, unexpected and mis-shaped key.
    """
    model = VQVAE() if model is None else model
    match = match_state_dict(
        state_dict, param_shapes(model), lambda path: torch_key(path, model.share_quant_resi), torch_shape,
        from_torch_layout, ignored=lambda key: key in IGNORED_KEYS,
    )
    if not match.ok:
        if match.nothing_matched:
            problems = (
                f"none of its {len(match.missing)} parameter keys is present (expected e.g. "
                "encoder.conv_in.weight, quantize.embedding.weight): not a VQVAE state dict?"
            )
            if match.unexpected:
                problems += "; " + describe("unexpected keys", match.unexpected)
        else:
            problems = match.problems()
        raise ValueError(
            f"state dict does not match the VAR VQVAE (image_size={model.image_size}, ch={model.ch}, "
            f"ch_mult={tuple(model.ch_mult)}, codebook {model.codebook_size}x{model.code_dim}; "
            f"released checkpoint: {CHECKPOINT_NAME}): " + problems
        )
    return match.nested_params()


def load_torch_checkpoint(path: str) -> dict[str, np.ndarray]:
    """State dict of a VQVAE checkpoint as numpy arrays, read without torch: the released .pth, a
    VAR training checkpoint (`trainer.vae_local`), a dict with "state_dict" / "model", a
    .safetensors or a torch-keyed .npz."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"VQVAE checkpoint not found at {path!r}; the released weights are {CHECKPOINT_URL}"
        )
    return state_dicts.read_state_dict(path)


def save_params(params, path: str) -> str:
    """Writes params as a flat .npz with "/"-joined keys, atomically; returns the path."""
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    flat = traverse_util.flatten_dict(params, sep="/")
    tmp = path[: -len(".npz")] + ".tmp.npz"
    np.savez(tmp, **{k: np.asarray(v, np.float32) for k, v in flat.items()})
    os.replace(tmp, path)
    return path


def load_params(path: str, model: VQVAE | None = None) -> dict:
    """Params from a converted flat .npz (or, converted on the fly, a .pth / torch-keyed .npz),
    checked against `model` (default: the released configuration)."""
    path = os.fspath(path)
    if path.endswith(".npz"):
        with np.load(path) as data:
            keys = list(data.files)
            if keys and all("/" in k for k in keys):
                flat = {tuple(k.split("/")): np.asarray(data[k], np.float32) for k in keys}
                expected = param_shapes(model)
                got = {p: tuple(v.shape) for p, v in flat.items()}
                if got != expected:
                    bad = sorted("/".join(p) for p in set(got) ^ set(expected))
                    bad += sorted("/".join(p) for p in set(got) & set(expected) if got[p] != expected[p])
                    raise ValueError(f"{path} does not match the VQVAE params: {', '.join(bad[:12])}")
                return traverse_util.unflatten_dict(flat)
    return convert_vqvae(load_torch_checkpoint(path), model)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help=f"{CHECKPOINT_NAME} or a torch-keyed .npz")
    parser.add_argument("--output", required=True, help="flat .npz to write")
    args = parser.parse_args(argv)
    params = convert_vqvae(load_torch_checkpoint(args.input))
    written = save_params(params, args.output)
    count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
    print(f"wrote {written}: {count:,} parameters")


if __name__ == "__main__":
    main()
