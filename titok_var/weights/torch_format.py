"""PyTorch checkpoint files (`torch.save`) read and written with NumPy alone, no code run.

A downloaded `.pth` / `.bin` is a pickle; `pickle.load` on it would call any function the file
names. This reader rebuilds only tensors: its unpickler resolves nothing but the tensor-rebuild
functions, the storage and dtype names and `OrderedDict`, and refuses every other global, naming
it, before anything is called. Both formats of `torch.save` are read:

* zip (torch >= 1.6): `<prefix>/data.pkl` plus one raw little-endian record `<prefix>/data/<key>`
  per storage;
* legacy (older files such as torchvision's VGG16 or pytorch-fid's Inception): magic number,
  protocol and system-info pickles, the object pickle, the list of storage keys, then each storage
  as an int64 element count followed by its bytes.

The writer emits the zip format that `torch.load(..., weights_only=True)` reads: a dict of tensors
(contiguous, one storage each). bfloat16 tensors are read as float32 (NumPy has no bfloat16; the
widening is exact).
"""

import collections
import io
import os
import pickle
import pickletools
import struct
import zipfile
from collections.abc import Mapping

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch storage class name -> (numpy dtype read from the file, element size in bytes)
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"), "FloatStorage": np.dtype("<f4"), "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"), "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"), "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
# torch dtype name (as `torch.float32` pickles) -> storage class name
_DTYPE_STORAGES = {
    "float64": "DoubleStorage", "float32": "FloatStorage", "float16": "HalfStorage",
    "bfloat16": "BFloat16Storage", "int64": "LongStorage", "int32": "IntStorage", "int16": "ShortStorage",
    "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage",
}
_NUMPY_STORAGES = {
    np.dtype("float64"): "DoubleStorage", np.dtype("float32"): "FloatStorage", np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage", np.dtype("int32"): "IntStorage", np.dtype("int16"): "ShortStorage",
    np.dtype("int8"): "CharStorage", np.dtype("uint8"): "ByteStorage", np.dtype("bool"): "BoolStorage",
}
_REBUILD_FUNCTIONS = ("_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter")


_PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
                  OverflowError, MemoryError, RecursionError)


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The pickle asked for something other than tensors; nothing of it was run."""


class CorruptCheckpointError(ValueError):
    """The file is truncated or inconsistent."""


class _StorageType:
    """Stands in for `torch.FloatStorage` etc. inside the pickle."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _DType:
    """Stands in for `torch.float32` etc. (pickled by name)."""

    def __init__(self, name: str):
        self.storage = _DTYPE_STORAGES[name]


def _bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *_ignored) -> np.ndarray:
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
        raise CorruptCheckpointError(f"tensor of size {size} stride {stride} offset {offset} is not valid")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    numel = 1
    for n in size:
        numel *= n
    if numel > storage.size:  # an expanded (stride-0) view: never in a state dict, a bomb otherwise
        raise CorruptCheckpointError(f"tensor of size {size} has more elements than its storage ({storage.size})")
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise CorruptCheckpointError(
            f"tensor of size {size} reaches element {last} of a storage of {storage.size} elements")
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(s * storage.itemsize for s in stride), writeable=False)
    return np.array(view)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, *_):
    del requires_grad, hooks, dtype  # the storage already carries the element type
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None, *_):
    del requires_grad, hooks
    return data


# Opcodes a torch.save pickle uses (BUILD sets the `_metadata` attribute of a module's state-dict
# OrderedDict); other object construction (INST, OBJ, NEWOBJ, EXT*) is refused before anything is
# unpickled. Every resolved global is a fresh object, so BUILD can only change throwaways.
_ALLOWED_OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP", "NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT",
    "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING",
    "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
    "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_LIST", "LIST", "APPEND", "APPENDS", "EMPTY_DICT",
    "DICT", "SETITEM", "SETITEMS", "GET", "BINGET", "LONG_BINGET", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE",
    "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "PERSID", "BINPERSID",
})


def _check_opcodes(data: bytes, source: str) -> None:
    try:
        for opcode, _, _ in pickletools.genops(data):
            if opcode.name not in _ALLOWED_OPCODES:
                raise UnsafeCheckpointError(
                    f"{source}: the pickle uses the {opcode.name} opcode, which tensor checkpoints never need "
                    "(nothing was executed)")
    except UnsafeCheckpointError:
        raise
    except Exception as e:  # genops raises ValueError and others on a damaged stream
        raise CorruptCheckpointError(f"{source}: the pickle of the checkpoint is damaged ({e})") from e


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str, load_storage):
        super().__init__(file)
        self._source = source
        self._load_storage = load_storage

    def find_class(self, module, name):
        # Fresh objects each time: a BUILD opcode aimed at them cannot alter this module or collections.
        if module == "collections" and name == "OrderedDict":
            return type("OrderedDict", (collections.OrderedDict,), {})
        if module == "torch._utils" and name in _REBUILD_FUNCTIONS:
            rebuild = {"_rebuild_tensor_v2": _rebuild_tensor, "_rebuild_tensor_v3": _rebuild_tensor_v3,
                       "_rebuild_parameter": _rebuild_parameter}[name]
            return lambda *args: rebuild(*args)
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and name in _DTYPE_STORAGES:
            return _DType(name)
        if module == "torch" and name == "Size":
            return lambda *args: tuple(*args)
        raise UnsafeCheckpointError(
            f"{self._source}: the pickle asks for the global {module}.{name}; only tensors, storages and "
            "OrderedDict are read from checkpoints (nothing was executed)")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise UnsafeCheckpointError(f"{self._source}: unknown persistent id {str(pid)[:80]}")
        storage_type = pid[1]
        if isinstance(storage_type, _DType):
            storage_type = _StorageType(storage_type.storage)
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError(f"{self._source}: storage of unsupported type {storage_type!r}")
        return self._load_storage(storage_type, str(pid[2]), *pid[4:])


def _finish(storage: np.ndarray, storage_type: _StorageType) -> np.ndarray:
    if storage_type.name == "BFloat16Storage":
        return _bfloat16_to_float32(storage)
    return storage


def _convert_tree(obj):
    """Rebuilt tensors as numpy arrays; bfloat16 bits widened to float32."""
    if isinstance(obj, _Tensor):
        return obj.array
    if isinstance(obj, Mapping):
        return {k: _convert_tree(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_convert_tree(v) for v in obj)
    return obj


class _Tensor:
    """A rebuilt tensor (kept apart from plain numpy arrays until the tree is finished)."""

    def __init__(self, array):
        self.array = array


def _load_zip(path: str) -> object:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise CorruptCheckpointError(f"{path}: not a readable torch zip checkpoint ({e})") from e
    with archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise CorruptCheckpointError(f"{path}: a torch zip checkpoint holds one data.pkl, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in names and archive.read(byteorder).strip() not in (b"little", b""):
            raise CorruptCheckpointError(f"{path}: big-endian checkpoints are not supported")
        cache: dict[str, np.ndarray] = {}

        def load_storage(storage_type: _StorageType, key: str, numel=None, *_):
            if key not in cache:
                record = f"{prefix}data/{key}"
                try:
                    raw = archive.read(record)
                except KeyError as e:
                    raise CorruptCheckpointError(f"{path}: storage record {record} is missing") from e
                except (zipfile.BadZipFile, EOFError, OSError) as e:
                    raise CorruptCheckpointError(f"{path}: storage record {record} is damaged ({e})") from e
                itemsize = storage_type.dtype.itemsize
                if len(raw) % itemsize:
                    raise CorruptCheckpointError(f"{path}: storage record {record} has {len(raw)} bytes, "
                                                 f"not a multiple of {itemsize}")
                cache[key] = _finish(np.frombuffer(raw, storage_type.dtype), storage_type)
            return cache[key]

        try:
            data = archive.read(pickles[0])
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            raise CorruptCheckpointError(f"{path}: {pickles[0]} is damaged ({e})") from e
        return _unpickle(io.BytesIO(data), path, load_storage)


def _unpickle(file, path: str, load_storage):
    _check_opcodes(file.getvalue(), path)
    unpickler = _RestrictedUnpickler(file, path, load_storage)
    unpickler.find_class = _wrap_rebuilders(unpickler.find_class)
    try:
        return _convert_tree(unpickler.load())
    except (UnsafeCheckpointError, CorruptCheckpointError):
        raise
    except _PICKLE_ERRORS as e:
        raise CorruptCheckpointError(f"{path}: the pickle of the checkpoint is damaged ({type(e).__name__}: {e})") from e


def _wrap_rebuilders(find_class):
    """Marks the arrays the rebuild functions return as tensors (so the tree walk can tell them)."""
    def wrapped(module, name):
        found = find_class(module, name)
        if module == "torch._utils":
            return lambda *args: _Tensor(found(*[a.array if isinstance(a, _Tensor) else a for a in args]))
        return found

    return wrapped


def _scan_next_pickle(f, path: str) -> None:
    """Checks the opcodes of the pickle starting at f's position, then rewinds."""
    start = f.tell()
    try:
        ops = list(pickletools.genops(f))
    except Exception as e:
        raise CorruptCheckpointError(f"{path}: the pickle of the checkpoint is damaged ({e})") from e
    bad = [op.name for op, _, _ in ops if op.name not in _ALLOWED_OPCODES]
    if bad:
        raise UnsafeCheckpointError(f"{path}: the pickle uses the {bad[0]} opcode, which tensor checkpoints never "
                                    "need (nothing was executed)")
    f.seek(start)


def _load_legacy(path: str) -> object:
    with open(path, "rb") as f:
        def header(what):
            _scan_next_pickle(f, path)
            try:
                return _RestrictedUnpickler(f, path, _no_storage(path)).load()
            except UnsafeCheckpointError:
                raise
            except _PICKLE_ERRORS as e:
                raise CorruptCheckpointError(f"{path}: legacy torch checkpoint, {what} unreadable ({e})") from e

        if header("magic number") != LEGACY_MAGIC:
            raise CorruptCheckpointError(f"{path}: not a torch checkpoint (wrong magic number)")
        if header("protocol") != LEGACY_PROTOCOL:
            raise CorruptCheckpointError(f"{path}: unsupported legacy torch protocol")
        sys_info = header("system info")
        if isinstance(sys_info, Mapping) and not sys_info.get("little_endian", True):
            raise CorruptCheckpointError(f"{path}: big-endian checkpoints are not supported")
        requested: dict[str, tuple[_StorageType, list]] = {}

        def load_storage(storage_type: _StorageType, key: str, *_):
            # The bytes follow the object pickle: hand out a placeholder, filled in below.
            holder = requested.setdefault(key, (storage_type, [None]))[1]
            return _Deferred(holder)

        unpickler = _RestrictedUnpickler(f, path, load_storage)
        unpickler.find_class = _deferred_rebuilders(unpickler.find_class)
        _scan_next_pickle(f, path)
        try:
            tree = unpickler.load()
            _scan_next_pickle(f, path)
            keys = _RestrictedUnpickler(f, path, _no_storage(path)).load()
        except (UnsafeCheckpointError, CorruptCheckpointError):
            raise
        except _PICKLE_ERRORS as e:
            raise CorruptCheckpointError(f"{path}: the pickle of the checkpoint is damaged ({e})") from e
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise CorruptCheckpointError(f"{path}: the list of storages is damaged")
        remaining = os.fstat(f.fileno()).st_size
        for key in keys:
            if key not in requested:
                raise CorruptCheckpointError(f"{path}: storage {key} is listed but never used")
            storage_type, holder = requested[key]
            count_bytes = f.read(8)
            if len(count_bytes) != 8:
                raise CorruptCheckpointError(f"{path}: truncated before storage {key}")
            (count,) = struct.unpack("<q", count_bytes)
            nbytes = count * storage_type.dtype.itemsize
            if count < 0 or nbytes > remaining - f.tell():
                raise CorruptCheckpointError(f"{path}: truncated in storage {key} ({nbytes} bytes announced, "
                                             f"{max(remaining - f.tell(), 0)} left)")
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise CorruptCheckpointError(f"{path}: truncated in storage {key} ({len(raw)} of {nbytes} bytes)")
            holder[0] = _finish(np.frombuffer(raw, storage_type.dtype), storage_type)
        try:
            return _convert_tree(_resolve_deferred(tree, path))
        except (UnsafeCheckpointError, CorruptCheckpointError):
            raise
        except _PICKLE_ERRORS as e:
            raise CorruptCheckpointError(f"{path}: the checkpoint's tensors are damaged ({type(e).__name__}: {e})") from e


class _Deferred:
    def __init__(self, holder):
        self.holder = holder


class _DeferredTensor:
    def __init__(self, rebuild, args):
        self.rebuild, self.args = rebuild, args


def _deferred_rebuilders(find_class):
    def wrapped(module, name):
        found = find_class(module, name)
        if module == "torch._utils":
            return lambda *args: _DeferredTensor(found, args)
        return found

    return wrapped


def _resolve_deferred(obj, path):
    if isinstance(obj, _DeferredTensor):
        args = [_resolve_deferred(a, path) for a in obj.args]
        return _Tensor(obj.rebuild(*[a.array if isinstance(a, _Tensor) else a for a in args]))
    if isinstance(obj, _Deferred):
        if obj.holder[0] is None:
            raise CorruptCheckpointError(f"{path}: a storage used by a tensor is missing")
        return obj.holder[0]
    if isinstance(obj, Mapping):
        return {k: _resolve_deferred(v, path) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve_deferred(v, path) for v in obj)
    return obj


def _no_storage(path):
    def refuse(*_):
        raise CorruptCheckpointError(f"{path}: a storage reference outside the object pickle")

    return refuse


def is_torch_file(path: str) -> bool:
    """Whether `path` starts like a torch checkpoint (a zip, or a legacy pickle)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head[:2] == b"PK" or head[:1] == b"\x80"


def load(path: str) -> object:
    """The object a `torch.save` file holds, with every tensor as a numpy array."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} not found")
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] != b"\x80":
        raise CorruptCheckpointError(f"{path}: not a torch checkpoint (neither a zip archive nor a pickle)")
    return _load_legacy(path)


# -- writing ---------------------------------------------------------------------------------------


def _to_storage(array: np.ndarray, dtype: str | None) -> tuple[bytes, str]:
    array = np.asarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        dtype = None  # a cast applies to floating-point tensors; integer buffers keep their type
    if dtype == "bfloat16" or (dtype is None and array.dtype.name == "bfloat16"):
        bits = np.ascontiguousarray(array, np.float32).view(np.uint32)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")  # round to nearest even
        return rounded.tobytes(), "BFloat16Storage"
    if dtype is not None:
        array = array.astype(dtype)
    if array.dtype not in _NUMPY_STORAGES:
        raise TypeError(f"arrays of dtype {array.dtype} cannot be written to a torch checkpoint")
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return np.ascontiguousarray(little).tobytes(), _NUMPY_STORAGES[array.dtype]


def _pickle_state_dict(arrays: Mapping[str, np.ndarray], dtype: str | None) -> tuple[bytes, list]:
    """The data.pkl bytes and the (key, bytes) storage records of `arrays`."""
    records = []
    out = io.BytesIO()
    pickler = _GlobalsPickler(out, records, arrays, dtype)
    pickler.dump_state_dict()
    return out.getvalue(), records


class _GlobalsPickler:
    """Writes the pickle opcodes of an OrderedDict of `_rebuild_tensor_v2` calls by hand: the
    stdlib pickler would need the real torch classes to name them."""

    def __init__(self, out, records, arrays, dtype):
        self.out, self.records, self.arrays, self.dtype = out, records, arrays, dtype

    def _global(self, module, name):
        self.out.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())

    def _unicode(self, text: str):
        encoded = text.encode("utf-8")
        self.out.write(pickle.BINUNICODE + struct.pack("<I", len(encoded)) + encoded)

    def _int(self, value: int):
        if 0 <= value < 256:
            self.out.write(pickle.BININT1 + struct.pack("<B", value))
        elif -(2 ** 31) <= value < 2 ** 31:
            self.out.write(pickle.BININT + struct.pack("<i", value))
        else:
            encoded = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            self.out.write(pickle.LONG1 + struct.pack("<B", len(encoded)) + encoded)

    def _int_tuple(self, values):
        self.out.write(pickle.MARK)
        for v in values:
            self._int(int(v))
        self.out.write(pickle.TUPLE)

    def dump_state_dict(self):
        w = self.out.write
        w(pickle.PROTO + bytes([2]))
        self._global("collections", "OrderedDict")
        w(pickle.EMPTY_TUPLE + pickle.REDUCE)
        w(pickle.MARK)
        for index, (name, array) in enumerate(self.arrays.items()):
            data, storage_name = _to_storage(array, self.dtype)
            shape = tuple(np.shape(array))
            numel = int(np.prod(shape, dtype=np.int64))
            key = str(index)
            self.records.append((key, data))
            self._unicode(str(name))
            self._global("torch._utils", "_rebuild_tensor_v2")
            w(pickle.MARK)
            # persistent id: ("storage", torch.<Type>Storage, key, "cpu", numel)
            w(pickle.MARK)
            self._unicode("storage")
            self._global("torch", storage_name)
            self._unicode(key)
            self._unicode("cpu")
            self._int(numel)
            w(pickle.TUPLE + pickle.BINPERSID)
            self._int(0)
            self._int_tuple(shape)
            strides, acc = [], 1
            for n in reversed(shape):
                strides.append(acc)
                acc *= n
            self._int_tuple(reversed(strides))
            w(pickle.NEWFALSE)
            self._global("collections", "OrderedDict")
            w(pickle.EMPTY_TUPLE + pickle.REDUCE)
            w(pickle.TUPLE + pickle.REDUCE)
        w(pickle.SETITEMS + pickle.STOP)


def save(arrays: Mapping[str, np.ndarray], path: str, dtype: str | None = None) -> str:
    """Writes {name: array} as a torch zip checkpoint (`torch.load(path, weights_only=True)` gives
    an OrderedDict of tensors); `dtype` (e.g. "float32", "bfloat16") casts every array. Atomic."""
    path = os.fspath(path)
    prefix = os.path.splitext(os.path.basename(path))[0] or "archive"
    data_pkl, records = _pickle_state_dict(arrays, dtype)
    tmp = path + ".tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{prefix}/data.pkl", data_pkl)
        archive.writestr(f"{prefix}/byteorder", "little")
        for key, data in records:
            _write_aligned(archive, f"{prefix}/data/{key}", data)
        archive.writestr(f"{prefix}/version", "3\n")
    os.replace(tmp, path)
    return path


def _write_aligned(archive: zipfile.ZipFile, name: str, data: bytes, alignment: int = 64) -> None:
    """Stores `data` so that it starts on an `alignment`-byte boundary, as torch's writer does
    (torch.load with mmap=True needs it), padding the local header's extra field."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    header_size = 30 + len(name.encode("utf-8"))
    start = archive.fp.tell() + header_size + 4  # 4 bytes: the extra field's own id and length
    padding = (-start) % alignment
    info.extra = struct.pack("<HH", 0x4654, padding) + b"Z" * padding  # "FT": torch's padding id
    archive.writestr(info, data)
