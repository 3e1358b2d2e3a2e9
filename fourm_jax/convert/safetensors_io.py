"""Streaming safetensors: read tensor by tensor (memory-mapped) and write tensor by tensor.

`safetensors.numpy.save_file` needs every tensor in memory at once; for a 2.8 B-parameter model
that is a second copy of the checkpoint. The format is a little-endian u64 header size, a JSON
header (dtype, shape, byte offsets per tensor, optional string `__metadata__`) padded to 8 bytes,
then the raw tensor bytes; `write_safetensors` writes the header from the shapes first and then
each tensor as it is produced. Files it writes load with the safetensors library.
"""

from __future__ import annotations

import json
import math
import pathlib
import struct
from collections.abc import Callable, Iterable, Mapping

import numpy as np
from safetensors import safe_open

_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int64): "I64",
           np.dtype(np.int32): "I32", np.dtype(np.bool_): "BOOL"}


class TensorSource:
    """Read-only access to the tensors of a safetensors file, one at a time."""

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file")
        self._file = safe_open(str(self.path), framework="numpy")

    def keys(self) -> list[str]:
        return list(self._file.keys())

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._file.get_slice(key).get_shape())

    def dtype(self, key: str) -> str:
        return self._file.get_slice(key).get_dtype()

    def get(self, key: str) -> np.ndarray:
        return self._file.get_tensor(key)

    def metadata(self) -> dict[str, str]:
        return dict(self._file.metadata() or {})


class ArraySource:
    """The TensorSource interface over an in-memory mapping of numpy arrays."""

    def __init__(self, tensors: Mapping[str, np.ndarray], name: str = "state dict"):
        self.path = name
        self._tensors = tensors

    def keys(self) -> list[str]:
        return list(self._tensors)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(np.shape(self._tensors[key]))

    def dtype(self, key: str) -> str:
        return _DTYPES.get(np.asarray(self._tensors[key]).dtype, str(np.asarray(self._tensors[key]).dtype))

    def get(self, key: str) -> np.ndarray:
        return np.asarray(self._tensors[key])

    def metadata(self) -> dict[str, str]:
        return {}


def write_safetensors(path: str | pathlib.Path,
                      tensors: Iterable[tuple[str, tuple[int, ...], np.dtype, Callable[[], np.ndarray]]],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Writes (key, shape, dtype, produce) entries in the given order; `produce()` is called once per
    tensor, when its bytes are written. Raises if a produced array disagrees with its declared shape."""
    entries = list(tensors)
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for key, shape, dtype, _ in entries:
        if key in header:
            raise ValueError(f"{path}: tensor {key!r} is written twice")
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        header[key] = {"dtype": _DTYPES[np.dtype(dtype)], "shape": list(shape),
                       "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for key, shape, dtype, produce in entries:
            array = np.ascontiguousarray(produce(), dtype=np.dtype(dtype).newbyteorder("<"))
            if array.shape != tuple(shape):
                raise ValueError(f"{path}: tensor {key!r} has shape {array.shape}, declared {tuple(shape)}")
            f.write(array.tobytes())
