"""Read a `torch.save` zip file (torch >= 1.6) with the standard library and numpy, never running it.

`<prefix>/data.pkl` is a protocol-2 pickle of the saved object in which every tensor is
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` and every storage a persistent
id `('storage', torch.<Type>Storage, key, location, numel)` whose bytes are `<prefix>/data/<key>`
(byte order in `<prefix>/byteorder`). The unpickler is restricted: `find_class` admits only those
callables and plain containers (`_GLOBALS`) and refuses any other global by name. Tensors become
numpy arrays honouring storage offset, size and stride (views sharing a storage stay correct).
"""

from __future__ import annotations

import codecs
import collections
import dataclasses
import io
import os
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np


class CheckpointError(ValueError):
  """A checkpoint jkd cannot read or import; the message names the file, the key and the fix."""


_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"), "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"), "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"), "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"), "BoolStorage": np.dtype("?"),
    "UntypedStorage": np.dtype("u1"),
}
# The first bytes of a legacy (pre-1.6, non-zip) torch.save file: pickled magic number 0x1950a86a...
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


@dataclasses.dataclass(frozen=True)
class _StorageType:
  """Stands in for `torch.<Name>Storage` inside persistent ids."""
  name: str


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> np.ndarray:
  """`torch._utils._rebuild_tensor(_v2)`: a strided view into a storage, copied out."""
  if not (isinstance(storage, np.ndarray) and storage.ndim == 1 and storage.flags.c_contiguous):
    raise CheckpointError(f"tensor refers to {type(storage).__name__}, not a storage")
  size, stride = tuple(size), tuple(stride)
  ints = all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride))
  if not ints or len(size) != len(stride):
    raise CheckpointError(f"tensor with invalid layout (offset {offset}, size {size}, "
                          f"stride {stride})")
  if 0 in size:
    return np.zeros(size, storage.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= storage.size:
    raise CheckpointError(f"tensor (offset {offset}, size {size}, stride {stride}) reads past its "
                          f"storage of {storage.size} elements; the file is corrupt")
  strides = [s * storage.itemsize for s in stride]
  view = np.lib.stride_tricks.as_strided(storage[offset:], size, strides)
  return view.copy()


def _rebuild_parameter(data: Any, *_: Any) -> Any:
  return data


def _empty_bytes() -> bytes:
  """Protocol 2 pickles `b''` as `bytes()`."""
  return b""


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
  """Protocol 2 pickles `bytes` as `_codecs.encode(str, 'latin1')`."""
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise CheckpointError(f"refusing _codecs.encode with encoding {encoding!r}")
  return codecs.encode(text, encoding)


_GLOBALS: dict[str, Any] = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch.Size": tuple,
    "collections.OrderedDict": collections.OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.tuple": tuple,
    "builtins.list": list,
    "builtins.dict": dict,
    "builtins.bytes": _empty_bytes,
    "_codecs.encode": _codecs_encode,
}


class _Unpickler(pickle.Unpickler):
  """Admits only the globals a state_dict needs; storages come from the zip."""

  def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, big_endian: bool):
    super().__init__(io.BytesIO(data))
    self._archive, self._prefix, self._big_endian = archive, prefix, big_endian
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module: str, name: str) -> Any:
    module = "builtins" if module == "__builtin__" else module  # protocol 2 spells it so
    qualified = f"{module}.{name}"
    if qualified in _GLOBALS:
      return _GLOBALS[qualified]
    if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise CheckpointError(
        f"refusing to load global '{qualified}': a checkpoint of tensors needs only "
        f"torch._utils._rebuild_tensor_v2, torch.*Storage and plain containers, and loading "
        f"anything else could run code. Re-save just the tensors, e.g. "
        f"torch.save({{'model_state_dict': model.state_dict()}}, path)")

  def persistent_load(self, pid: Any) -> np.ndarray:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType) and pid[1].name in _STORAGE_DTYPES
            and isinstance(pid[2], str)
            and isinstance(pid[4], int)):
      raise CheckpointError(f"unsupported persistent id {str(pid)[:80]}")
    _, storage_type, key, _location, numel = pid
    if key not in self._storages:
      dtype = _STORAGE_DTYPES[storage_type.name]
      try:
        raw = self._archive.read(f"{self._prefix}/data/{key}")
      except KeyError:
        raise CheckpointError(f"storage '{key}' is missing from the archive") from None
      if numel < 0 or len(raw) < numel * dtype.itemsize:
        raise CheckpointError(f"storage '{key}' holds {len(raw)} bytes, expected "
                              f"{numel * dtype.itemsize}; the file is truncated")
      if self._big_endian and dtype.itemsize > 1:  # swap as unsigned ints (bfloat16 has no '>')
        unsigned = f"u{dtype.itemsize}"
        swapped = np.frombuffer(raw, ">" + unsigned, count=numel).astype("<" + unsigned)
        self._storages[key] = swapped.view(dtype)
      else:
        self._storages[key] = np.frombuffer(raw, dtype, count=numel)
    return self._storages[key]


def read_torch(path: str | os.PathLike) -> Any:
  """The object a `torch.save` zip file holds, with tensors as numpy arrays; never runs its code."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: no such file")
  if not zipfile.is_zipfile(path):
    with open(path, "rb") as f:
      head = f.read(len(_LEGACY_MAGIC))
    if head == _LEGACY_MAGIC:
      raise CheckpointError(
          f"{path}: legacy (pre-1.6) torch.save format, which jkd does not read; re-save it with "
          f"torch >= 1.6: torch.save(torch.load(path, weights_only=True), new_path)")
    raise CheckpointError(f"{path}: not a PyTorch checkpoint (torch.save writes a zip archive; "
                          f"this file is not one)")
  try:
    with zipfile.ZipFile(path) as archive:
      pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
      if len(pickles) != 1:
        raise CheckpointError(f"{path}: a zip file but not a torch.save archive "
                              f"(expected exactly one '<name>/data.pkl' inside)")
      prefix = pickles[0][:-len("/data.pkl")]
      try:
        order = archive.read(f"{prefix}/byteorder").decode().strip()
      except KeyError:
        order = "little"
      try:
        return _Unpickler(archive.read(pickles[0]), archive, prefix, order == "big").load()
      except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
  except CheckpointError:
    raise
  except Exception as e:  # noqa: BLE001 - a damaged archive or pickle can fail in many ways
    raise CheckpointError(f"{path}: corrupt checkpoint ({type(e).__name__}: {e}); copy it again "
                          "from where it was saved, or re-save it with torch.save") from None
