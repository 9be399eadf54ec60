"""Read a GGUF file: its metadata, its tensor table, and each tensor's bytes, without copying.

Our own reader rather than `gguf.GGUFReader`: that one builds a Python object per array item,
which takes ~15 s for a 262k-token vocabulary (three such arrays in Gemma 3); this one reads
numeric arrays with one `np.frombuffer` and the whole header of that file in ~0.5 s. Tensor
bytes are slices of one read-only memory map, so converting a model never holds its file twice.
Every offset and size is checked against the file, so a truncated or corrupt file is refused
with the reason before anything is converted.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlxserve.services.common.errors import InvalidArgument

# ggml tensor types (ggml.h): id -> (name, elements per block, bytes per block).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}
GGML_TYPE_IDS = {name: i for i, (name, _, _) in GGML_TYPES.items()}

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NP = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8", 11: "<i8", 12: "<f8"}
GGUF_STRING, GGUF_ARRAY = 8, 9
MAX_ARRAY_DEPTH = 2  # an array of arrays (llama.cpp itself reads no deeper)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS


def type_name(ggml_type: int) -> str:
    return GGML_TYPES[ggml_type][0] if ggml_type in GGML_TYPES else f"type {ggml_type}"


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor table. `shape` is row-major (numpy order): GGUF lists dimensions
    fastest-varying first, so a GGUF `[640, 1024]` matrix is `(1024, 640)` here: 1024 rows."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int   # absolute file offset of the first byte
    n_bytes: int

    @property
    def type_name(self) -> str:
        return type_name(self.ggml_type)

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass
class GGUFFile:
    """A parsed GGUF file. Tensor bytes are read lazily through `raw`/`array` (a memory map)."""

    path: Path
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    _map: np.memmap | None = field(default=None, repr=False)

    # ---------------------------------------------------------------- metadata

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value as a plain Python scalar (numeric arrays stay numpy arrays)."""
        if key not in self.metadata:
            return default
        value = self.metadata[key]
        return value.item() if isinstance(value, np.generic) else value

    def require(self, key: str) -> Any:
        if key not in self.metadata:
            raise InvalidArgument(f"{self.path.name}: GGUF file lacks required metadata {key!r}")
        return self.get(key)

    @property
    def architecture(self) -> str:
        arch = self.require("general.architecture")
        if not isinstance(arch, str):
            raise InvalidArgument(f"{self.path.name}: general.architecture is not a string")
        return arch

    def arch_get(self, key: str, default: Any = None) -> Any:
        """`<architecture>.<key>`, e.g. `arch_get("block_count")`."""
        return self.get(f"{self.architecture}.{key}", default)

    def arch_require(self, key: str) -> Any:
        return self.require(f"{self.architecture}.{key}")

    # ---------------------------------------------------------------- tensor data

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as stored: uint8 of shape `(*shape[:-1], bytes_per_row)`."""
        info = self.tensors[name]
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        data = self._map[info.offset:info.offset + info.n_bytes]
        rows = info.shape[:-1]
        return data.reshape(*rows, info.n_bytes // max(1, int(np.prod(rows, dtype=np.int64))))

    def array(self, name: str) -> np.ndarray:
        """A float tensor (F32, F16, F64, I*) as a numpy array of its shape; BF16 comes back as uint16."""
        info = self.tensors[name]
        dtypes = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": "<u2", "I8": "i1", "I16": "<i2", "I32": "<i4",
                  "I64": "<i8"}
        if info.type_name not in dtypes:
            raise ValueError(f"{name} is {info.type_name}, not a plain array type")
        return self.raw(name).view(np.dtype(dtypes[info.type_name])).reshape(info.shape)

    def close(self) -> None:
        self._map = None


class _Cursor:
    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def fail(self, why: str) -> InvalidArgument:
        return InvalidArgument(f"{self.path.name} is not a valid GGUF file ({why})")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.fail("truncated header")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        raw = self.take(self.unpack("<Q"))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("a string is not UTF-8") from None

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == GGUF_STRING:
            return self.string()
        if vtype == GGUF_ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise self.fail(f"metadata arrays are nested more than {MAX_ARRAY_DEPTH} deep")
            etype, count = self.unpack("<I"), self.unpack("<Q")
            if etype in _NP:
                dt = np.dtype(_NP[etype])
                return np.frombuffer(self.take(count * dt.itemsize), dtype=dt).copy()
            if count > len(self.buf):  # every element takes at least one byte
                raise self.fail("an array is longer than the file")
            return [self.value(etype, depth + 1) for _ in range(count)]
        raise self.fail(f"unknown value type {vtype}")


def read_gguf(path: Path | str) -> GGUFFile:
    """Parse `path`'s header and tensor table; check that every tensor lies inside the file.

    Raises InvalidArgument naming the problem for anything that is not a well-formed GGUF v2/v3.
    """
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise InvalidArgument(f"{path.name} is not a GGUF file (bad magic number)")
        size = f.seek(0, 2)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            cur = _Cursor(buf, path)
            cur.pos = 4
            version = cur.unpack("<I")
            if version not in (2, 3):
                raise InvalidArgument(f"{path.name}: GGUF version {version} is not supported (supported: 2, 3)")
            n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
            if n_tensors > size or n_kv > size:
                raise cur.fail("impossible tensor or metadata count")
            gg = GGUFFile(path, version)
            for _ in range(n_kv):
                key = cur.string()
                gg.metadata[key] = cur.value(cur.unpack("<I"))
            table: list[tuple[str, tuple[int, ...], int, int]] = []
            for _ in range(n_tensors):
                name = cur.string()
                n_dims = cur.unpack("<I")
                if not 1 <= n_dims <= MAX_DIMS:
                    raise cur.fail(f"tensor {name} has {n_dims} dimensions")
                dims = tuple(cur.unpack("<Q") for _ in range(n_dims))
                ggml_type = cur.unpack("<I")
                offset = cur.unpack("<Q")
                if any(d == 0 or d > size * 256 for d in dims):
                    raise cur.fail(f"tensor {name} has an impossible shape {list(dims)} "
                                   "(an empty dimension, or one larger than the file could hold)")
                table.append((name, dims, ggml_type, offset))
            alignment = gg.get("general.alignment", DEFAULT_ALIGNMENT)
            if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
                raise cur.fail(f"general.alignment {alignment!r} is not a power of two")
            data_start = -(-cur.pos // alignment) * alignment

    for name, dims, ggml_type, offset in table:
        if name in gg.tensors:
            raise InvalidArgument(f"{path.name} is not a valid GGUF file (tensor {name} appears twice)")
        n_elements = math.prod(dims)  # Python ints: 2^32 x 2^32 must not wrap around to 0
        if ggml_type in GGML_TYPES:
            _, block, block_bytes = GGML_TYPES[ggml_type]
            if dims[0] % block:
                raise InvalidArgument(
                    f"{path.name} is not a valid GGUF file (tensor {name}: rows of {dims[0]} are not whole "
                    f"{type_name(ggml_type)} blocks of {block})")
            n_bytes = n_elements // block * block_bytes
        else:
            n_bytes = 0  # an unknown type: refused by name later, never read
        start = data_start + offset
        if start + n_bytes > size:
            raise InvalidArgument(
                f"{path.name} is truncated: tensor {name} ends at byte {start + n_bytes}, but the file has {size}")
        # GGUF lists dimensions fastest-varying first; keep them row-major like numpy.
        gg.tensors[name] = TensorInfo(name, tuple(reversed(dims)), ggml_type, start, n_bytes)
    return gg
