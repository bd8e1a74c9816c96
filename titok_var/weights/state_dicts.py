"""State dicts ({torch key: numpy array}) in and out of every file format the converters meet.

Read: `torch.save` files (.pth / .bin / .pt, zip or legacy; see `torch_format`, no torch needed and
no pickled code run), `.safetensors`, and torch-keyed `.npz`. A training checkpoint that wraps
the weights (`{"model": ...}`, `{"state_dict": ...}`, VAR's `{"trainer": {"vae_local": ...}}`) is
unwrapped. Write: the same formats, chosen by the file's extension.
"""

import os
import zipfile
from collections.abc import Mapping

import numpy as np

from titok_var.weights import safetensors_format, torch_format

TORCH_EXTENSIONS = (".pth", ".bin", ".pt", ".ckpt")
# Where training checkpoints keep the weights, tried in order.
WRAPPER_PATHS = (("state_dict",), ("model",), ("module",), ("trainer", "vae_local"), ("trainer", "var_wo_ddp"))


class NotAStateDictError(ValueError):
    """The file was read but holds no state dict."""


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())


def _unwrap(obj, path: str) -> dict[str, np.ndarray]:
    if _is_state_dict(obj):
        return dict(obj)
    for keys in WRAPPER_PATHS:
        inner = obj
        for key in keys:
            inner = inner.get(key) if isinstance(inner, Mapping) else None
        if _is_state_dict(inner):
            return dict(inner)
    found = sorted(map(str, obj))[:12] if isinstance(obj, Mapping) else type(obj).__name__
    raise NotAStateDictError(f"{path} holds no state dict of tensors (found {found})")


def _read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise torch_format.CorruptCheckpointError(f"{path}: not a readable .npz ({e})") from e


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """{torch key: array} of a checkpoint file in any supported format (see the module doc)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} not found")
    if os.path.getsize(path) == 0:
        raise torch_format.CorruptCheckpointError(f"{path} is empty")
    if path.endswith(".safetensors"):
        return safetensors_format.load(path)
    if path.endswith(".npz"):
        return _read_npz(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return _unwrap(torch_format.load(path), path)
    if len(head) == 8 and head[0] != 0 and int.from_bytes(head, "little") < os.path.getsize(path):
        try:  # a safetensors file under another name
            return safetensors_format.load(path)
        except safetensors_format.CorruptSafetensorsError:
            pass
    raise torch_format.CorruptCheckpointError(
        f"{path} is not a checkpoint: expected a torch file (.pth/.bin), .safetensors or .npz")


def write_state_dict(arrays: Mapping[str, np.ndarray], path: str, dtype: str | None = None) -> str:
    """Writes {torch key: array} in the format named by `path`'s extension, atomically; `dtype`
    casts the floating-point tensors."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        return safetensors_format.save(arrays, path, dtype)
    if path.endswith(TORCH_EXTENSIONS):
        return torch_format.save(arrays, path, dtype)
    if path.endswith(".npz"):
        if dtype == "bfloat16":
            raise ValueError(".npz cannot hold bfloat16; write .safetensors or .bin")
        tmp = path[: -len(".npz")] + ".tmp.npz"
        np.savez(tmp, **{k: np.asarray(v) if dtype is None or not np.issubdtype(np.asarray(v).dtype, np.floating)
                         else np.asarray(v, dtype) for k, v in arrays.items()})
        os.replace(tmp, path)
        return path
    raise ValueError(f"unknown weights format for {path!r}: use .safetensors, .bin / .pth or .npz")
