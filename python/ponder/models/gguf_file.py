"""A minimal GGUF reader: metadata, tensor directory and numpy de-quantisation.

The file is memory-mapped once; the header is walked with ``struct`` and each tensor's bytes
are a zero-copy numpy view of the map. The ``gguf`` package's reader builds a Python object
for every one of the ~100k tokenizer strings a chat model carries (seconds per read);
this reader skips string arrays, which a model loader never needs (the tokenizer is read by
``transformers``), keeping only their length.

Layout (little-endian; version 2 or 3)::

    "GGUF"  u32 version  u64 num_tensors  u64 num_kv
    num_kv      x  (string key, u32 value_type, value)
    num_tensors x  (string name, u32 n_dims, u64 dims[n_dims] (innermost first), u32 ggml_type, u64 offset)
    padding to `general.alignment` (default 32), then the tensor data; offsets are relative to it.

De-quantisation (``dequantize``) is vectorised over whole tensors and performs the same
float32 operations, in the same order, as ``gguf.quants`` for the block types listed in
``NATIVE_TYPES``, so results are bit-identical to it; other types are delegated to
``gguf.quants`` when that package is installed.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import struct
from typing import Any, Dict, List

import numpy as np

GGUF_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32

# GGUF metadata value types -> struct format of a scalar
_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_NUMPY_DTYPES = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
                 6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9

# ggml tensor types: id -> (name, elements per block, bytes per block)
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8),
    28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}
NATIVE_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")


@dataclasses.dataclass(frozen=True)
class SkippedStrings:
    """Placeholder for a string array the reader did not decode (e.g. the tokenizer vocabulary)."""

    count: int


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file. ``shape`` is in PyTorch order (outermost first)."""

    name: str
    shape: tuple
    type_name: str
    type_id: int
    data: np.ndarray  # uint8 view of the file map: the tensor's raw bytes


class GGUFFile:
    """Parsed header of a GGUF file: ``metadata`` (key -> value) and ``tensors`` (name -> TensorInfo).

    Any malformed or truncated content raises ``ValueError`` naming the file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise ValueError(f"{self.path}: not a GGUF file (only {size} bytes)")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._pos = 0
        try:
            self._parse(size)
        except (struct.error, UnicodeDecodeError, OverflowError, MemoryError) as exc:
            raise ValueError(f"{self.path}: truncated or corrupt GGUF header ({exc})") from None

    def _read(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self._map, self._pos)
        self._pos += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def _string(self) -> str:
        n = self._read("Q")
        if self._pos + n > len(self._map):
            raise struct.error(f"string of {n} bytes at offset {self._pos} runs past the end of the file")
        s = bytes(self._map[self._pos:self._pos + n]).decode("utf-8")
        self._pos += n
        return s

    def _value(self, vtype: int) -> Any:
        if vtype in _SCALAR_FORMATS:
            return self._read(_SCALAR_FORMATS[vtype])
        if vtype == _STRING:
            return self._string()
        if vtype != _ARRAY:
            raise struct.error(f"unknown metadata value type {vtype} at offset {self._pos - 4}")
        etype, count = self._read("IQ")
        if etype in _NUMPY_DTYPES:
            dtype = np.dtype(_NUMPY_DTYPES[etype]).newbyteorder("<")
            if self._pos + count * dtype.itemsize > len(self._map):
                raise struct.error(f"array of {count} values at offset {self._pos} runs past the end of the file")
            arr = np.frombuffer(self._map, dtype=dtype, count=count, offset=self._pos).copy()
            self._pos += count * dtype.itemsize
            return arr
        if etype == _STRING:
            # Only lengths are read: decoding ~100k tokenizer strings costs seconds and no
            # loader needs them.
            for _ in range(count):
                self._pos += 8 + struct.unpack_from("<Q", self._map, self._pos)[0]
            if self._pos > len(self._map):
                raise struct.error("string array runs past the end of the file")
            return SkippedStrings(count)
        return [self._value(etype) for _ in range(count)]

    def _parse(self, size: int) -> None:
        if bytes(self._map[:4]) != GGUF_MAGIC:
            raise ValueError(f"{self.path}: not a GGUF file (magic {bytes(self._map[:4])!r}, expected b'GGUF')")
        self._pos = 4
        self.version = self._read("I")
        if self.version not in (2, 3):
            raise ValueError(f"{self.path}: unsupported GGUF version {self.version} (supported: 2, 3, "
                             "little-endian)")
        num_tensors, num_kv = self._read("QQ")
        if num_tensors > size or num_kv > size:
            raise ValueError(f"{self.path}: corrupt GGUF header ({num_tensors} tensors, {num_kv} metadata keys "
                             f"in {size} bytes)")
        self.metadata: Dict[str, Any] = {}
        for _ in range(num_kv):
            key = self._string()
            self.metadata[key] = self._value(self._read("I"))
        infos: List[tuple] = []
        for _ in range(num_tensors):
            name = self._string()
            dims = [self._read("Q") for _ in range(self._read("I"))]
            infos.append((name, tuple(reversed(dims)), self._read("I"), self._read("Q")))
        alignment = int(self.metadata.get("general.alignment", _DEFAULT_ALIGNMENT))
        if alignment <= 0:
            raise ValueError(f"{self.path}: general.alignment must be positive, got {alignment}")
        start = -(-self._pos // alignment) * alignment
        self.tensors: Dict[str, TensorInfo] = {}
        for name, shape, type_id, offset in infos:
            if type_id not in GGML_TYPES:
                raise ValueError(f"{self.path}: tensor {name!r} has unknown ggml type id {type_id}")
            type_name, block, block_bytes = GGML_TYPES[type_id]
            numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if shape and shape[-1] % block:
                raise ValueError(f"{self.path}: tensor {name!r} ({type_name}) has rows of {shape[-1]} values, "
                                 f"not a multiple of the block size {block}")
            nbytes = numel // block * block_bytes
            begin = start + offset
            if begin + nbytes > size:
                raise ValueError(f"{self.path}: truncated GGUF file: tensor {name!r} needs bytes "
                                 f"[{begin}, {begin + nbytes}) but the file has {size}")
            data = np.frombuffer(self._map, dtype=np.uint8, count=nbytes, offset=begin)
            self.tensors[name] = TensorInfo(name, shape, type_name, type_id, data)

    def field(self, key: str, default: Any = None) -> Any:
        """Metadata value of ``key`` (numbers as Python scalars), or ``default``."""
        return self.metadata.get(key, default)

    def dequantize(self, name: str) -> np.ndarray:
        """Tensor ``name`` as float32 numpy, shape ``TensorInfo.shape`` (a fresh array)."""
        info = self.tensors[name]
        return dequantize(info.data, info.type_name, info.shape, f"{self.path}: tensor {name!r}")


def _halves(blocks: np.ndarray, start: int) -> np.ndarray:
    """float16 at byte ``start`` of each block, as float32 ``[n_blocks, 1]``."""
    return blocks[:, start:start + 2].copy().view(np.float16).astype(np.float32)


def _unpack_nibbles(qs: np.ndarray, out: np.ndarray, offset: int = 0) -> np.ndarray:
    """``[n, 16]`` packed bytes into ``out [n, 32]``: low nibbles are elements 0..15, high 16..31
    (minus ``offset``). Written in place: one float32 array per tensor, no temporaries of it."""
    np.subtract(qs & np.uint8(0x0F), offset, out=out[:, :16], dtype=np.float32, casting="unsafe")
    np.subtract(qs >> np.uint8(4), offset, out=out[:, 16:], dtype=np.float32, casting="unsafe")
    return out


def _add_fifth_bits(qh_bytes: np.ndarray, out: np.ndarray) -> None:
    """Add bit i of each block's little-endian u32 ``qh`` (``[n, 4]`` bytes), times 16, to element i."""
    qh = qh_bytes.copy().view("<u4")
    bits = (qh >> np.arange(32, dtype=np.uint32)) & np.uint32(1)
    out += bits.astype(np.float32) * np.float32(16)


def _dequantize_blocks(kind: str, blocks: np.ndarray) -> np.ndarray:
    """float32 ``[n_blocks, 32]``. The arithmetic is gguf.quants' (``d * q`` then ``+ m``, each
    rounded to float32; every q and every q-offset is an exact small integer)."""
    out = np.empty((blocks.shape[0], 32), dtype=np.float32)
    if kind == "Q8_0":
        np.copyto(out, blocks[:, 2:].view(np.int8), casting="unsafe")
    elif kind == "Q4_0":
        _unpack_nibbles(blocks[:, 2:], out, offset=8)
    elif kind == "Q4_1":
        _unpack_nibbles(blocks[:, 4:], out)
    elif kind == "Q5_0":
        _unpack_nibbles(blocks[:, 6:], out, offset=16)
        _add_fifth_bits(blocks[:, 2:6], out)
    elif kind == "Q5_1":
        _unpack_nibbles(blocks[:, 8:], out)
        _add_fifth_bits(blocks[:, 4:8], out)
    else:
        raise AssertionError(kind)
    out *= _halves(blocks, 0)
    if kind in ("Q4_1", "Q5_1"):
        out += _halves(blocks, 2)
    return out


def dequantize(data: np.ndarray, type_name: str, shape: tuple, what: str = "tensor") -> np.ndarray:
    """Raw GGUF tensor bytes (``uint8 [nbytes]``) -> float32 array of ``shape``.

    ``type_name`` is the ggml type (e.g. "Q4_1"). Types outside ``NATIVE_TYPES`` go through
    ``gguf.quants.dequantize`` if the ``gguf`` package is installed; otherwise, or if it cannot
    either, ``ValueError`` names ``what`` and the type.
    """
    if type_name == "F32":
        out = data.view("<f4").copy()
    elif type_name == "F16":
        out = data.view("<f2").astype(np.float32)
    elif type_name == "BF16":
        out = (data.view("<i2").astype(np.int32) << 16).view(np.float32)
    elif type_name in NATIVE_TYPES:
        _, block, block_bytes = next(t for t in GGML_TYPES.values() if t[0] == type_name)
        out = _dequantize_blocks(type_name, data.reshape(-1, block_bytes))
    else:
        out = _dequantize_with_gguf(data, type_name, shape, what)
    return out.reshape(shape)


def _gguf_dequantizer():
    """``(GGMLQuantizationType, gguf.quants.dequantize)``, or ``None`` without the gguf package."""
    try:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize as gguf_dequantize
    except ImportError:
        return None
    return GGMLQuantizationType, gguf_dequantize


def _dequantize_with_gguf(data: np.ndarray, type_name: str, shape: tuple, what: str) -> np.ndarray:
    supported = ", ".join(NATIVE_TYPES)
    found = _gguf_dequantizer()
    if found is None:
        raise ValueError(f"{what} has quantization type {type_name}, which ponder de-quantizes only with the "
                         f"'gguf' package installed (pip install gguf); built in are {supported}")
    qtypes, gguf_dequantize = found
    try:
        rows = data.reshape(-1, data.size // max(1, int(np.prod(shape[:-1], dtype=np.int64))))
        return np.asarray(gguf_dequantize(rows, qtypes[type_name]), dtype=np.float32)
    except (KeyError, NotImplementedError) as exc:
        raise ValueError(f"{what} has unsupported quantization type {type_name} "
                         f"(built in: {supported}; gguf: {exc!r})") from None
