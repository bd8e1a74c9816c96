"""Convert an official VAR transformer checkpoint (`var_d{16,20,24,30,36}.pth`,
FoundationVision/VAR) into `titok_var.models.var.VAR` params.

The weights are released at https://huggingface.co/FoundationVision/var (plain state dicts;
d16-d30 at 256 px, d36 at 512 px with shared AdaLN). Usage (the .pth is read with numpy alone, no torch):

    python -m titok_var.tools.convert_var_transformer --depth 16 --input var_d16.pth --output weights/
    python -m titok_var.tools.convert_var_transformer --depth 36 --shared-adaln --input var_d36.pth --output weights/

The output is a flat .npz keyed by "/"-joined parameter paths (the format of
`convert_var.save_params`), `DIR/var_d{depth}.npz` unless --output names an .npz file.

Name mapping (torch -> ours): `blocks.3` -> `blocks_3`; the Sequential(SiLU, Linear) modules
`ada_lin.1`, `head_nm.ada_lin.1`, `shared_ada_lin.1` -> `ada_lin`, `head_nm/ada_lin`,
`shared_ada_lin`; `weight` -> `kernel` (Linear) or `embedding` (Embedding); bare parameters
(pos_start, pos_1LC, scale_mul_1H11, q_bias, v_bias, ada_gss) keep name and shape. Layouts:
Linear (out, in) -> (in, out); `mat_qkv` (3C, C) -> (C, 3, heads, head_dim). The buffers
`lvl_1L`, `attn_bias_for_masking` and `blocks.*.attn.zero_k_bias` are rebuilt by the model, not
loaded (zero_k_bias must be zero).
"""

import argparse
import os
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from titok_var.models.var import VAR
from titok_var.quantizers.multiscale import VAR_PATCH_NUMS_256, VAR_PATCH_NUMS_512, token_count
from titok_var.tools.convert_var import load_torch_checkpoint, save_params
from titok_var.tools.state_dict_matching import abstract_param_shapes, describe, match_state_dict

CHECKPOINT_URL = "https://huggingface.co/FoundationVision/var/resolve/main/var_d{depth}.pth"
BUFFER_KEYS = ("lvl_1L", "attn_bias_for_masking")
_ZERO_K_BIAS = re.compile(r"blocks\.\d+\.attn\.zero_k_bias")
_BLOCK = re.compile(r"blocks_(\d+)")
_SEQUENTIAL_LINEARS = ("ada_lin", "shared_ada_lin")  # torch Sequential(SiLU, Linear): index 1
_LEAF_NAMES = {"kernel": "weight", "embedding": "weight", "bias": "bias"}
_BARE_PARAMS = ("pos_start", "pos_1LC", "scale_mul_1H11", "q_bias", "v_bias", "ada_gss")
KNOWN_SCHEDULES = {token_count(p): p for p in (VAR_PATCH_NUMS_256, VAR_PATCH_NUMS_512)}


def torch_key(path: tuple[str, ...]) -> str:
    """Our parameter path, e.g. ("blocks_3", "attn", "mat_qkv", "kernel"), -> torch key."""
    *modules, leaf = path
    parts = []
    for module in modules:
        if m := _BLOCK.fullmatch(module):
            parts.append(f"blocks.{m.group(1)}")
        elif module in _SEQUENTIAL_LINEARS:
            parts.append(f"{module}.1")
        else:
            parts.append(module)
    if leaf in _LEAF_NAMES:
        parts.append(_LEAF_NAMES[leaf])
    elif leaf in _BARE_PARAMS:
        parts.append(leaf)
    else:
        raise KeyError(f"no torch name for parameter {'/'.join(path)}")
    return ".".join(parts)


def _is_qkv(path) -> bool:
    return path[-2:] == ("mat_qkv", "kernel")


def torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the torch tensor holding our parameter of `shape`."""
    if _is_qkv(path):  # (C, 3, H, d) <- (3 H d, C)
        return (int(np.prod(shape[1:])), shape[0])
    if path[-1] == "kernel":  # Dense (in, out) <- Linear (out, in)
        return (shape[1], shape[0])
    return tuple(shape)


def from_torch_layout(path: tuple[str, ...], array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Torch tensor -> our layout for the parameter at `path` whose shape is `shape`."""
    array = np.asarray(array)
    if _is_qkv(path):
        return array.T.reshape(shape)
    if path[-1] == "kernel":
        return array.T
    return array


def param_shapes(model: VAR) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flat {path: shape} of the model's params (abstract: nothing is computed)."""
    labels = jnp.zeros((1,), jnp.int32)
    var_input = jnp.zeros((1, model.num_tokens - model.first_l, model.vae_channels), jnp.float32)
    return abstract_param_shapes(model, labels, var_input)


def expected_torch_shapes(model: VAR) -> dict[str, tuple[int, ...]]:
    """Every parameter key the official state dict must hold (buffers excluded), with its shape."""
    return {torch_key(path): torch_shape(path, shape) for path, shape in param_shapes(model).items()}


def _is_buffer(key: str) -> bool:
    return key in BUFFER_KEYS or bool(_ZERO_K_BIAS.fullmatch(key))


def _describe_model(model: VAR) -> str:
    return (f"VAR depth={model.depth} width={model.embed_dim} heads={model.heads} "
            f"shared_adaln={model.shared_adaln} L={model.num_tokens} vocab={model.vocab_size} "
            f"classes={model.num_classes}")


def convert_var_transformer(state_dict: Mapping[str, np.ndarray], model: VAR) -> dict:
    """Official VAR state dict (numpy arrays keyed by torch names) -> nested float32 numpy params
    of `model`; use as `model.apply({"params": params}, ...)`.

    Raises ValueError naming every missing, unexpected and mis-shaped key, and any non-zero
    zero_k_bias buffer.
    """
    nonzero = sorted(k for k, v in state_dict.items() if _ZERO_K_BIAS.fullmatch(k) and np.any(np.asarray(v)))
    if nonzero:
        raise ValueError(f"{describe('zero_k_bias buffers that are not zero', nonzero)}: not an official VAR "
                         "checkpoint (the key bias is fixed at zero)")
    match = match_state_dict(state_dict, param_shapes(model), torch_key, torch_shape, from_torch_layout,
                             ignored=_is_buffer)
    if not match.ok:
        if match.nothing_matched:
            problems = (f"none of its {len(match.missing)} parameter keys is present (expected e.g. "
                        "pos_1LC, blocks.0.attn.mat_qkv.weight): not a VAR transformer state dict?")
            if match.unexpected:
                problems += "; " + describe("unexpected keys", match.unexpected)
        else:
            problems = match.problems()
        raise ValueError(f"state dict does not match the {_describe_model(model)}: {problems}")
    return match.nested_params()


def load_params(path: str, model: VAR) -> dict:
    """Params from a converted flat .npz (or, converted on the fly, a .pth / torch-keyed .npz),
    checked against `model`."""
    path = os.fspath(path)
    if path.endswith(".npz") and os.path.exists(path):
        with np.load(path) as data:
            keys = list(data.files)
            if keys and not any("." in k for k in keys):  # ours: "/"-joined; torch keys have dots
                flat = {tuple(k.split("/")): np.asarray(data[k], np.float32) for k in keys}
                expected = param_shapes(model)
                got = {p: tuple(v.shape) for p, v in flat.items()}
                if got != expected:
                    bad = sorted("/".join(p) for p in set(got) ^ set(expected))
                    bad += sorted(f"{'/'.join(p)} {got[p]} (expected {expected[p]})"
                                  for p in set(got) & set(expected) if got[p] != expected[p])
                    raise ValueError(f"{path} does not match the {_describe_model(model)}: {', '.join(bad[:12])}")
                return traverse_util.unflatten_dict(flat)
    return convert_var_transformer(load_torch_checkpoint(path), model)


def _schedule_for(state_dict: Mapping[str, np.ndarray], patch_nums: str | None) -> tuple[int, ...]:
    if patch_nums:
        return tuple(int(p) for p in patch_nums.split(","))
    if "pos_1LC" not in state_dict:
        raise ValueError("state dict has no pos_1LC: not a VAR transformer checkpoint")
    length = int(np.shape(state_dict["pos_1LC"])[1])
    if length not in KNOWN_SCHEDULES:
        raise ValueError(f"pos_1LC holds {length} tokens, which matches no released schedule "
                         f"({sorted(KNOWN_SCHEDULES)}); pass --patch-nums")
    return KNOWN_SCHEDULES[length]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, required=True, help="16, 20, 24, 30 or 36 for the released models")
    parser.add_argument("--input", required=True, help="var_d{depth}.pth or a torch-keyed .npz")
    parser.add_argument("--output", required=True, help="output directory (or an .npz file path)")
    parser.add_argument("--shared-adaln", action="store_true", help="shared AdaLN layout (var_d36)")
    parser.add_argument("--patch-nums", default=None,
                        help="comma-separated scale sides; default: the released schedule with pos_1LC's length")
    args = parser.parse_args(argv)
    state_dict = load_torch_checkpoint(args.input)
    model = VAR(depth=args.depth, shared_adaln=args.shared_adaln, patch_nums=_schedule_for(state_dict, args.patch_nums))
    params = convert_var_transformer(state_dict, model)
    output = args.output
    if not output.endswith(".npz"):
        os.makedirs(output, exist_ok=True)
        output = os.path.join(output, f"var_d{args.depth}.npz")
    written = save_params(params, output)
    count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
    print(f"wrote {written}: {count:,} parameters ({_describe_model(model)})")


if __name__ == "__main__":
    main()
