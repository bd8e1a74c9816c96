"""`.safetensors` files read and written with NumPy alone.

Layout: an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}
(plus an optional `__metadata__` of strings), then the raw little-endian tensor bytes.
bfloat16 tensors are read as float32 (exact) and written rounded to nearest even.
"""

import json
import os
import struct
from collections.abc import Mapping

import numpy as np

_READ_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
                "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}
_WRITE_DTYPES = {np.dtype(v).newbyteorder("=") if v != "?" else np.dtype(v): k
                 for k, v in _READ_DTYPES.items() if k != "BF16"}


class CorruptSafetensorsError(ValueError):
    pass


def load(path: str) -> dict[str, np.ndarray]:
    """{name: array} of a .safetensors file; a truncated or inconsistent file raises naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"safetensors file {path!r} not found")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise CorruptSafetensorsError(f"{path}: too short for a safetensors file ({size} bytes)")
        (header_size,) = struct.unpack("<Q", head)
        if header_size > size - 8:
            raise CorruptSafetensorsError(f"{path}: header of {header_size} bytes in a file of {size}: "
                                          "truncated, or not a safetensors file")
        try:
            header = json.loads(f.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptSafetensorsError(f"{path}: the safetensors header is not valid JSON ({e})") from e
        data = f.read()
    if not isinstance(header, dict):
        raise CorruptSafetensorsError(f"{path}: the safetensors header is not a JSON object")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype") if isinstance(info, dict) else None
        if dtype not in _READ_DTYPES:
            raise CorruptSafetensorsError(f"{path}: tensor {name} has unsupported dtype {dtype!r}")
        offsets, shape = info.get("data_offsets"), info.get("shape")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)):
            raise CorruptSafetensorsError(f"{path}: the header entry of tensor {name} is damaged: {info}")
        begin, end = offsets
        shape = tuple(shape)
        expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(_READ_DTYPES[dtype]).itemsize
        if not 0 <= begin <= end <= len(data) or end - begin != expected:
            raise CorruptSafetensorsError(
                f"{path}: tensor {name} {shape} needs {expected} bytes at [{begin}, {end}) of a "
                f"{len(data)}-byte data section: the file is truncated or damaged")
        array = np.frombuffer(data[begin:end], dtype=_READ_DTYPES[dtype])
        if dtype == "BF16":  # the upper half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        out[name] = array.reshape(shape)
    return out


def _to_bytes(array: np.ndarray, dtype: str | None) -> tuple[bytes, str]:
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        dtype = None  # a cast applies to floating-point tensors; integer buffers keep their type
    if dtype == "bfloat16":
        bits = np.ascontiguousarray(array, np.float32).view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes(), "BF16"
    if dtype is not None:
        array = array.astype(dtype)
    key = array.dtype.newbyteorder("=") if array.dtype != np.bool_ else array.dtype
    if key not in _WRITE_DTYPES:
        raise TypeError(f"arrays of dtype {array.dtype} cannot be written to safetensors")
    return np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"))).tobytes(), _WRITE_DTYPES[key]


def save(arrays: Mapping[str, np.ndarray], path: str, dtype: str | None = None,
         metadata: Mapping[str, str] | None = None) -> str:
    """Writes {name: array} as .safetensors (`dtype` casts every array; "bfloat16" allowed). Atomic."""
    path = os.fspath(path)
    header, chunks, offset = {}, [], 0
    for name, array in arrays.items():
        data, code = _to_bytes(array, dtype)
        header[name] = {"dtype": code, "shape": list(np.shape(array)), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data section starts 8-byte aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for chunk in chunks:
            f.write(chunk)
    os.replace(tmp, path)
    return path
