"""Convert pytorch-fid's FID Inception weights into `titok_var.evaluation.inception` params.

The weights are the TF `inception-2015-12-05` graph as ported by pytorch-fid, released as

    https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth

Usage (the .pth, a legacy-format torch file, is read with numpy alone, no torch):

    python -m titok_var.tools.convert_inception \\
        --input pt_inception-2015-12-05-6726825d.pth --output fid_inception.npz

The input may also be an .npz of the torch state dict (arrays keyed by the torch names, e.g.
written by `np.savez(out, **{k: v.numpy() for k, v in sd.items()})`), which needs no torch here.
The output is a flat .npz keyed by "/"-joined parameter paths ("Mixed_5b/branch1x1/conv/kernel").

Name mapping: `<module>.conv.weight` (O, I, kh, kw) -> `<module>/conv/kernel` (kh, kw, I, O);
`<module>.bn.{weight, bias, running_mean, running_var}` -> `<module>/bn/{scale, bias, mean, var}`;
`fc.weight` (1008, 2048) -> `fc/kernel` (2048, 1008); `fc.bias` -> `fc/bias`. BatchNorm
`num_batches_tracked` counters are ignored.
"""

import argparse
import functools
import hashlib
import os
import warnings
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from titok_var.evaluation import inception
from titok_var.weights import state_dicts
from titok_var.tools.state_dict_matching import describe, match_state_dict

FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth"
)
FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
# torch.hub names files `<name>-<first 8 hex digits of the sha256>.pth`.
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
IGNORED_SUFFIXES = ("num_batches_tracked",)

_LEAF_TO_TORCH = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}


def torch_name(path: tuple[str, ...]) -> str:
    """Our parameter path ("Mixed_5b", "branch1x1", "bn", "mean") -> its torch state-dict key."""
    *modules, leaf = path
    if leaf not in _LEAF_TO_TORCH:
        raise KeyError(f"no torch name for parameter {'/'.join(path)}")
    return ".".join([*modules, _LEAF_TO_TORCH[leaf]])


def to_torch_layout(array: np.ndarray) -> np.ndarray:
    """Our layout -> torch's: conv (kh, kw, I, O) -> (O, I, kh, kw); dense (I, O) -> (O, I)."""
    array = np.asarray(array)
    if array.ndim == 4:
        return array.transpose(3, 2, 0, 1)
    if array.ndim == 2:
        return array.T
    return array


def from_torch_layout(array: np.ndarray) -> np.ndarray:
    """Torch's layout -> ours (inverse of `to_torch_layout`)."""
    array = np.asarray(array)
    if array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if array.ndim == 2:
        return array.T
    return array


@functools.cache
def _flat_param_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
    shapes = traverse_util.flatten_dict(inception.param_shapes())
    return {path: tuple(leaf.shape) for path, leaf in shapes.items()}


def expected_torch_shapes() -> dict[str, tuple[int, ...]]:
    """Every key the official state dict must hold (bar ignored counters), with its torch shape."""
    expected = {}
    for path, shape in _flat_param_shapes().items():
        dummy = np.empty(shape, np.uint8)
        expected[torch_name(path)] = tuple(to_torch_layout(dummy).shape)
    return expected


def convert_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
    """Torch-named arrays of the FID Inception -> our nested float32 params (numpy).

    Raises ValueError naming every missing, unexpected and mis-shaped key.
    """
    match = match_state_dict(
        state_dict, _flat_param_shapes(), torch_name,
        lambda path, shape: to_torch_layout(np.empty(shape, np.uint8)).shape,
        lambda path, value, shape: from_torch_layout(value),
        ignored=lambda key: key.endswith(IGNORED_SUFFIXES),
    )
    if not match.ok:
        raise ValueError(
            f"state dict does not match the pytorch-fid FID Inception ({FID_WEIGHTS_FILENAME}): " + match.problems()
        )
    return match.nested_params()


def _sha256_prefix(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[: len(FID_WEIGHTS_SHA256_PREFIX)]


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Torch state dict of the .pth (read without torch), a .safetensors or a torch-keyed .npz."""
    if os.path.basename(path) == FID_WEIGHTS_FILENAME and os.path.isfile(path):
        prefix = _sha256_prefix(path)
        if prefix != FID_WEIGHTS_SHA256_PREFIX:
            warnings.warn(
                f"{path}: sha256 starts with {prefix}, not {FID_WEIGHTS_SHA256_PREFIX}; "
                "the download may be corrupt",
                stacklevel=2,
            )
    return state_dicts.read_state_dict(path)


def flatten_params(params) -> dict[str, np.ndarray]:
    """Nested params -> {"Mixed_5b/branch1x1/conv/kernel": array, ...} (numpy float32)."""
    flat = traverse_util.flatten_dict(params, sep="/")
    return {k: np.asarray(v, np.float32) for k, v in flat.items()}


def save_params(params, path: str) -> str:
    """Writes params as a flat .npz ("/"-joined keys), atomically; returns the path written
    (".npz" is appended when missing, as numpy does)."""
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    tmp = path[: -len(".npz")] + ".tmp.npz"
    np.savez(tmp, **flatten_params(params))
    os.replace(tmp, path)
    return path


def check_params(params) -> None:
    """Raises ValueError naming missing, unexpected or mis-shaped entries of `params`."""
    expected = {"/".join(p): s for p, s in _flat_param_shapes().items()}
    got = {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    mismatched = [
        f"{k} {got[k]} (expected {expected[k]})"
        for k in sorted(set(got) & set(expected))
        if got[k] != expected[k]
    ]
    if missing or unexpected or mismatched:
        problems = [
            describe(kind, items)
            for kind, items in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("mis-shaped", mismatched),
            )
            if items
        ]
        raise ValueError("FID Inception params do not match the model: " + "; ".join(problems))


def _missing_weights_message(path: str) -> str:
    return (
        f"FID Inception weights not found at {path!r}. Download the pytorch-fid weights\n"
        f"  {FID_WEIGHTS_URL}\n"
        "and convert them once (no torch needed):\n"
        "  python -m titok_var.tools.convert_inception "
        f"--input {FID_WEIGHTS_FILENAME} --output {path}\n"
        "(the converter also accepts a .safetensors or an .npz of the torch state dict)."
    )


def load_inception_params(path: str) -> dict:
    """Params for `InceptionV3` from a converted .npz (or a .pth / torch-keyed .npz, converted
    on the fly), as uncommitted jax arrays. A missing file raises FileNotFoundError saying
    which file to fetch and how to convert it."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(_missing_weights_message(path))
    params = None
    if path.endswith(".npz"):
        with np.load(path) as data:
            keys = list(data.files)
            if keys and all("/" in k for k in keys):
                params = traverse_util.unflatten_dict(
                    {tuple(k.split("/")): np.asarray(data[k], np.float32) for k in keys}
                )
    if params is None:
        params = convert_state_dict(read_state_dict(path))
    check_params(params)
    return jax.tree.map(jnp.asarray, params)


def convert_file(input_path: str, output_path: str) -> tuple[dict, str]:
    """Reads `input_path` (.pth or torch-keyed .npz), converts, validates and saves a flat .npz;
    returns (params, path written)."""
    if not os.path.exists(input_path):
        raise FileNotFoundError(
            f"{input_path} not found; download it from {FID_WEIGHTS_URL}"
        )
    params = convert_state_dict(read_state_dict(input_path))
    check_params(params)
    return params, save_params(params, output_path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Convert pytorch-fid's FID Inception weights to a titok_var .npz."
    )
    parser.add_argument(
        "--input", required=True, help=f"{FID_WEIGHTS_FILENAME} or a torch-keyed .npz"
    )
    parser.add_argument("--output", required=True, help="where to write the flat params .npz")
    args = parser.parse_args(argv)
    params, written = convert_file(args.input, args.output)
    count = sum(int(np.size(v)) for v in jax.tree.leaves(params))
    print(f"wrote {written}: {count:,} parameters")


if __name__ == "__main__":
    main()
