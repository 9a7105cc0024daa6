"""Reading .onnx_adapter files through a memory map.

Written by hand (with flatbuffers' table reader, which onnxruntime itself depends on) because
onnxruntime's Python API offers no mapped read: AdapterFormat.read_adapter copies the whole file
into memory, and LoraAdapter memory-maps but does not expose its tensors, which the runtime must
bind itself (IO binding ignores active adapters). Schema: onnxruntime/lora/adapter_format.
"""
from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

import numpy as np
from flatbuffers.number_types import Int32Flags
from flatbuffers.table import Table

IDENTIFIER = b"TORT"
DTYPES = {1: np.float32, 10: np.float16, 16: np.uint16, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64}


def _field(table: Table, index: int) -> int:
    """Offset of a table's field (0 when absent), from its vtable slot."""
    return table.Offset(4 + 2 * index)


def _vector(table: Table, index: int, item_size: int) -> tuple[int, int]:
    """(start, length) of a vector field, refused unless it lies inside the buffer: a damaged
    length would otherwise loop over billions of entries."""
    o = _field(table, index)
    if not o:
        return 0, 0
    start, count = table.Vector(o), table.VectorLen(o)
    if count < 0 or start + count * item_size > len(table.Bytes):
        raise ValueError(f"a vector of {count} entries runs past the end of the file")
    return start, count


def read_mapped(path: str | Path) -> tuple[int, dict[str, np.ndarray], mmap.mmap]:
    """(model_version, {name: read-only array viewing the mapped file}, the mapping to keep alive).
    Raises ValueError for any file that is not a well-formed adapter (offsets are bounds-checked by
    numpy and flatbuffers' reader, whose assorted errors are folded into that one)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ValueError("the file is empty")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _parse(buf)
    except (TypeError, IndexError, struct.error, OverflowError, UnicodeDecodeError) as e:
        raise ValueError(f"malformed ({type(e).__name__}: {e})") from None


def _parse(buf: mmap.mmap) -> tuple[int, dict[str, np.ndarray], mmap.mmap]:
    if len(buf) < 8 or buf[4:8] != IDENTIFIER:
        raise ValueError("not an .onnx_adapter file (missing the TORT identifier)")
    root = Table(buf, int.from_bytes(buf[0:4], "little"))
    o = _field(root, 2)
    model_version = root.Get(Int32Flags, o + root.Pos) if o else 0
    params = {}
    start, count = _vector(root, 3, 4)
    for i in range(count):
        p = Table(buf, root.Indirect(start + 4 * i))
        name = root.String(_field(p, 0) + p.Pos).decode() if _field(p, 0) else ""
        dims_at, ndim = _vector(p, 1, 8)
        dims = [int.from_bytes(buf[dims_at + 8 * k: dims_at + 8 * k + 8], "little", signed=True) for k in range(ndim)]
        o = _field(p, 2)
        dtype_code = p.Get(Int32Flags, o + p.Pos) if o else 0
        if dtype_code not in DTYPES:
            raise ValueError(f"parameter '{name}': unsupported data type code {dtype_code}")
        data_at, nbytes = _vector(p, 3, 1)
        dtype = np.dtype(DTYPES[dtype_code])
        params[name] = np.frombuffer(buf, dtype, nbytes // dtype.itemsize, data_at).reshape(dims)
    return model_version, params, buf
