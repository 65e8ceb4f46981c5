"""A safetensors file's header: every tensor's name, dtype and shape, read without a
byte of tensor data, from a file that may be hostile.

The format: an 8-byte little-endian header length N, N bytes of JSON
(``{"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [start, end]}, ...,
"__metadata__": {...}}``), then the data. The length is bounded before the JSON is read
and every entry is checked against the file's real size, so a header can only describe
tensors whose bytes the file holds: sizes taken from it are safe to allocate by.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from scratchlm.errors import CheckpointError

# safetensors itself refuses larger headers; a real one is a few hundred bytes per tensor.
MAX_HEADER_BYTES = 100_000_000
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip
METADATA = "__metadata__"


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header describes it."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    """The checked header of ``file``: tensors by name, and the free-form metadata."""

    file: Path
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]

    @property
    def numel(self) -> int:
        """Elements of all tensors stored (a tied tensor is stored, and counted, once)."""
        return sum(t.numel for t in self.tensors.values())

    @property
    def data_bytes(self) -> int:
        """Bytes of tensor data: what reading every tensor into memory takes."""
        return sum(t.numel * DTYPE_BYTES[t.dtype] for t in self.tensors.values())


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """The header of the safetensors file ``path``, checked entry by entry against the
    file's size; CheckpointError naming the file and the first inconsistency."""
    file = Path(path)
    try:
        with open(file, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(
                    f"{file} is not a safetensors file: {size} bytes, too short for a header"
                )
            length = int.from_bytes(prefix, "little")
            if length > MAX_HEADER_BYTES or length > size - 8:
                raise CheckpointError(
                    f"{file} is damaged: its header claims {length:,} bytes but the file has "
                    f"{size:,} (and headers are at most {MAX_HEADER_BYTES:,})"
                )
            raw = f.read(length)
    except OSError as e:
        raise CheckpointError(f"cannot read weights {file}: {e.strerror or e}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file} is damaged: its header is not JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} is damaged: its header is not a JSON object")
    metadata = data.pop(METADATA, None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointError(f"{file} is damaged: its {METADATA} is not a table of strings")
    room = size - 8 - length  # bytes of tensor data the file really holds
    tensors = {name: _entry(file, name, value, room) for name, value in data.items()}
    return SafetensorsHeader(file, tensors, metadata)


def _entry(file: Path, name: str, value: object, room: int) -> TensorEntry:
    """One header entry, checked: known dtype, a shape of integers >= 0, and data offsets
    inside the file that span exactly the shape's bytes."""

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{file} is damaged: tensor {name!r} {why}")

    if not isinstance(value, dict):
        raise bad("is not described by an object")
    dtype, shape, offsets = value.get("dtype"), value.get("shape"), value.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise bad(f"has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise bad(f"has shape {shape!r}, not a list of integers >= 0")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(o) for o in offsets)
        or not offsets[0] <= offsets[1] <= room
    ):
        raise bad(f"has data offsets {offsets!r} outside the {room:,} bytes of data the file holds")
    entry = TensorEntry(dtype, tuple(shape))
    if offsets[1] - offsets[0] != entry.numel * DTYPE_BYTES[dtype]:
        raise bad(
            f"has shape {list(shape)} ({dtype}) but {offsets[1] - offsets[0]:,} bytes of data"
        )
    return entry


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
