"""Read a PyTorch state_dict saved in the legacy (pre-zip, torch < 1.6) format without torch.

The file is five back-to-back pieces (torch/serialization.py, `_legacy_save`):

1. pickle: magic number 0x1950a86a20f9469cfc6c
2. pickle: protocol version 1001
3. pickle: sys_info dict (``little_endian`` must be true here)
4. pickle: the state_dict itself; every tensor is
   ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` and every storage a
   persistent id ``("storage", torch.FloatStorage, key, location, numel, view_metadata)``
5. pickle: the list of storage keys, followed, key by key in that order, by each storage as an
   8-byte little-endian element count and then the raw little-endian elements.

Security: the unpickler resolves only the globals in `_ALLOWED` and maps them to inert stand-ins;
any other global (``os.system``, ``builtins.eval``, ...) raises `UnsafePickleError` before it can be
called. Storages become numpy arrays; nothing from torch is imported.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references a global, persistent id or structure this reader does not allow."""


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for torch.<X>Storage: only says which dtype the raw bytes hold."""

    name: str
    dtype: np.dtype


@dataclass(frozen=True)
class _StorageRef:
    """A storage named by a persistent id; its bytes come after the main pickle."""

    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    """What `_rebuild_tensor_v2` returns here: a strided view to cut out of a storage later."""

    storage: _StorageRef
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    """Stand-in for torch._utils._rebuild_tensor_v2; checks argument types, copies nothing."""
    ints = (storage_offset, *size, *stride)
    if not isinstance(storage, _StorageRef) or not all(type(i) is int and i >= 0 for i in ints):
        raise UnsafePickleError("malformed tensor record")
    if len(size) != len(stride):
        raise UnsafePickleError("tensor size and stride differ in length")
    return _TensorRef(storage, storage_offset, tuple(size), tuple(stride))


def _storage(name, dtype):
    return ("torch", name), _StorageType(name, np.dtype(dtype).newbyteorder("<"))


_STORAGE_TYPES = dict([
    _storage("FloatStorage", np.float32), _storage("DoubleStorage", np.float64),
    _storage("HalfStorage", np.float16), _storage("LongStorage", np.int64),
    _storage("IntStorage", np.int32), _storage("ShortStorage", np.int16),
    _storage("CharStorage", np.int8), _storage("ByteStorage", np.uint8),
    _storage("BoolStorage", np.bool_),
])

_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    **_STORAGE_TYPES,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that knows only `_ALLOWED` globals and ("storage", ...) persistent ids."""

    def __init__(self, file):
        super().__init__(file, encoding="utf-8")
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"global {module}.{name} is not allowed") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise UnsafePickleError(f"unsupported persistent id {pid!r:.80}")
        _, stype, key, _location, numel, view_metadata = pid
        if not isinstance(stype, _StorageType) or type(numel) is not int or numel < 0:
            raise UnsafePickleError("malformed storage record")
        if view_metadata is not None:  # storage views date from torch < 0.4; not supported
            raise UnsafePickleError("storage views are not supported")
        ref = self.storages.setdefault(str(key), _StorageRef(str(key), stype.dtype, numel))
        if ref.dtype != stype.dtype or ref.numel != numel:
            raise UnsafePickleError(f"storage {key} declared twice with different types")
        return ref


def _load_plain(f, what):
    """Unpickle one header piece, which may hold no globals at all."""
    try:
        return _NoGlobals(f).load()
    except UnsafePickleError:
        raise
    except Exception as exc:
        raise ValueError(f"not a legacy torch file: cannot read the {what}: {exc}") from exc


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module, name):
        raise UnsafePickleError(f"global {module}.{name} is not allowed in a header")


def _read_header(f):
    """Check the three header pickles; raise ValueError on a foreign file."""
    if _load_plain(f, "magic number") != MAGIC_NUMBER:
        raise ValueError("not a legacy torch file: wrong magic number (zip format unsupported)")
    if _load_plain(f, "protocol version") != PROTOCOL_VERSION:
        raise ValueError("unsupported legacy torch protocol version")
    sys_info = _load_plain(f, "sys_info")
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        raise ValueError("only little-endian legacy torch files are supported")


def _read_storages(f, refs, keys):
    """Read each storage's raw bytes, in the order of `keys`; return key -> 1-D array."""
    if not isinstance(keys, list) or set(keys) != set(refs) or len(keys) != len(refs):
        raise UnsafePickleError("storage key list does not match the storages referenced")
    arrays = {}
    for key in keys:
        ref = refs[key]
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"storage {key}: file truncated")
        (numel,) = struct.unpack("<q", head)
        if numel != ref.numel:
            raise ValueError(f"storage {key}: {numel} elements on disk, {ref.numel} declared")
        data = f.read(numel * ref.dtype.itemsize)
        if len(data) != numel * ref.dtype.itemsize:
            raise ValueError(f"storage {key}: file truncated")
        arrays[key] = np.frombuffer(data, dtype=ref.dtype)
    return arrays


def _materialise(t: _TensorRef, flat: np.ndarray) -> np.ndarray:
    """Copy the strided view `t` out of its storage; raise ValueError if it runs past the end."""
    last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride) if n > 0)
    if 0 not in t.size and last >= flat.size:
        raise ValueError(f"tensor view runs past its storage {t.storage.key}")
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[t.offset:], shape=t.size, strides=[s * item for s in t.stride], writeable=False)
    return np.array(view, dtype=flat.dtype.newbyteorder("="), order="C")


def load_state_dict(path) -> dict[str, np.ndarray]:
    """Return {name: array} from a legacy-format torch file, in file order.

    Raises UnsafePickleError (a pickle.UnpicklingError) for any global, persistent id or object
    outside the allow-list, and ValueError for a file that is not a well-formed legacy state_dict.
    """
    with open(path, "rb") as fh:
        f = io.BytesIO(fh.read())
    _read_header(f)
    unpickler = _RestrictedUnpickler(f)
    try:
        state = unpickler.load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # e.g. REDUCE on a storage stand-in: TypeError
        raise UnsafePickleError(f"malformed state_dict pickle: {exc}") from exc
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, _TensorRef) for k, v in state.items()):
        raise UnsafePickleError("the main pickle is not a dict of tensors")
    keys = _NoGlobals(f).load()
    arrays = _read_storages(f, unpickler.storages, keys)
    return {name: _materialise(t, arrays[t.storage.key]) for name, t in state.items()}
