"""On-disk formats decoded into arrays, without running code from the files.

- IDX (the MNIST format), gzipped or not: :func:`read_idx`; multi-byte values come back in native byte order.
- CIFAR-10 python batches: pickles read by an unpickler that accepts numpy's array constructors only.
- ``.npy`` production batches: :func:`load_batch_file`, which refuses ``.npz`` archives and pickled objects and
  checks the array with :func:`scanflow.data.batches.validate_batch`.

Parsed IDX files and CIFAR-10 batches are cached in memory, read-only, per (path, mtime, size).
"""

from __future__ import annotations

import functools
import gzip
import importlib
import math
import pickle
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scanflow.data.batches import DatasetInfo, validate_batch
from scanflow.errors import (
    DatasetNotFoundError,
    InvalidBatchError,
    ScanflowError,
)

__all__ = [
    "load_batch_file",
    "read_idx",
]

# ---------------------------------------------------------------- IDX parsing

_IDX_DTYPES: Mapping[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _file_key(path: Path) -> tuple[str, int, int]:
    """(path, mtime_ns, size): the in-memory cache key, so edited files are re-read."""
    try:
        stat = path.stat()
    except FileNotFoundError as exc:
        raise DatasetNotFoundError(f"file not found: {path}") from exc
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic (whatever its name)."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ScanflowError(
            f"{path} is a corrupt gzip file ({exc}); delete it and fetch the dataset again"
        ) from exc


def _parse_idx(raw: bytes, path: str) -> np.ndarray:
    """Decode IDX bytes: magic ``00 00 <dtype code> <ndim>``, big-endian uint32 dims, data."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ScanflowError(
            f"{path} is not a valid IDX file: magic bytes {raw[:4].hex(' ') or '(empty file)'}, "
            "expected 00 00 <type code 08/09/0b/0c/0d/0e> <ndim>; the file is corrupt or in "
            "another format, fetch it again"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ScanflowError(f"{path} is truncated inside its IDX header; fetch it again")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = math.prod(dims)
    if len(raw) - header != count * dtype.itemsize:
        raise ScanflowError(
            f"{path} is truncated or corrupt: its IDX header declares shape {list(dims)} "
            f"({count * dtype.itemsize} data bytes) but it holds {len(raw) - header}; fetch it again"
        )
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    array.flags.writeable = False
    return array


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    return _parse_idx(_read_bytes(Path(path)), path)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, into a new writable array.

    Multi-byte values are converted from big-endian to native order. Raises
    :class:`~scanflow.errors.ScanflowError` naming the file when it is corrupt.
    """
    return np.array(_read_idx_cached(*_file_key(Path(path))))


# ---------------------------------------------------------------- CIFAR-10 batches

_NUMPY_PICKLE_GLOBALS: Mapping[tuple[str, str], tuple[str, str]] = {
    ("numpy.core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): ("multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): ("multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
    ("numpy", "ndarray"): ("", "ndarray"),
    ("numpy", "dtype"): ("", "dtype"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR-10 batch format but refuses any global other than numpy's
    array constructors, so a planted batch file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        target = _NUMPY_PICKLE_GLOBALS.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        submodule, attribute = target
        if not submodule:
            return getattr(np, attribute)
        core = "numpy._core" if hasattr(np, "_core") else "numpy.core"
        return getattr(importlib.import_module(f"{core}.{submodule}"), attribute)


def _unpickle(path: Path) -> dict[Any, Any]:
    try:
        with path.open("rb") as handle:
            loaded = _NumpyOnlyUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise ScanflowError(
            f"{path} is not a CIFAR-10 python batch ({exc}); fetch cifar-10-python.tar.gz again"
        ) from exc
    if not isinstance(loaded, dict):
        raise ScanflowError(f"{path} holds a {type(loaded).__name__}, expected a pickled dict (CIFAR-10 batch)")
    return loaded


def _field(batch: Mapping[Any, Any], key: str, path: Path) -> Any:
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise ScanflowError(f"{path} has no {key!r} entry; it is not a CIFAR-10 python batch")


@functools.lru_cache(maxsize=8)
def _read_cifar_batch_cached(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One batch as read-only ``uint8 [N, 3, 32, 32]`` images (rows stored R, G, B planes) and labels."""
    file = Path(path)
    batch = _unpickle(file)
    data = np.asarray(_field(batch, "data", file))
    labels = np.asarray(_field(batch, "labels", file), dtype=np.int64).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ScanflowError(f"{file}: 'data' is {data.dtype} {list(data.shape)}, expected uint8 [N, 3072]")
    if len(data) != len(labels):
        raise ScanflowError(f"{file} has {len(data)} images but {len(labels)} labels")
    images = data.reshape(-1, 3, 32, 32)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels



# ---------------------------------------------------------------- .npy production batches


def load_batch_file(path: str | Path, info: DatasetInfo | None = None) -> torch.Tensor:
    """Read a production batch saved with `numpy.save`: uint8 `[N, H, W]` or `[N, C, H, W]`, validated.

    Pickled object arrays are refused (loading them would run code from the file).
    """
    path = Path(path)
    if path.is_dir():
        raise InvalidBatchError(f"batch file {path} is a directory: pass one .npy file written with numpy.save")
    if not path.is_file():
        raise InvalidBatchError(f"batch file {path} does not exist: pass a .npy file written with numpy.save")
    with path.open("rb") as handle:
        header = handle.read(6)
    if header.startswith(b"PK\x03\x04"):
        raise InvalidBatchError(f"batch file {path} is a .npz archive, not one array: save the images with numpy.save, not savez")
    if header != b"\x93NUMPY":
        raise InvalidBatchError(f"batch file {path} is not a .npy file (no numpy header): save the images with "
                                "numpy.save(path, uint8_array)")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as error:
        reason = "it holds Python objects, which are never loaded" if "allow_pickle" in str(error) else str(error)
        raise InvalidBatchError(
            f"batch file {path} is not a plain numpy array ({reason}); save it with numpy.save(path, uint8_array)"
        ) from error
    except OSError as error:
        raise InvalidBatchError(f"batch file {path} is not a .npy file ({error}); save it with numpy.save") from error
    if not isinstance(array, np.ndarray):
        raise InvalidBatchError(f"batch file {path} holds {type(array).__name__}, not one array: use numpy.save, not savez")
    return validate_batch(array, info)
