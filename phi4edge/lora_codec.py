"""Quantised LoRA weights as .onnx_adapter files store them, shared by the exporter (which writes
them) and the runtime (which reads them).

- int8: each A [in, r] / B [r, out] symmetric per column, with NAME.scale [cols] beside it: what the
  int8 decoder's DynamicQuantizeMatMul takes as it is.
- int4: symmetric blocks of INT4_BLOCK along each column (the product's input; a whole column in one
  even-sized block when it is shorter, as B's columns of a small rank are), MatMulNBits' packing (low
  nibble first, level 8 is zero): NAME is uint8 [cols, blocks, block / 2], NAME.scale float32
  [cols, blocks]. About 0.6 of an int8 file at real ranks; the runtime widens it to the int8 form at load.
"""
from __future__ import annotations

import numpy as np

INT4_BLOCK = 32   # embedded model: blocks 16/32/64 all within 0.2 points of fp32 adapters (bench/RESULTS.md)


def quantize_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per column: (int8 [rows, cols], float32 scales [cols]); zero columns get scale 1."""
    scale = np.abs(w).max(axis=0) / 127
    scale[scale == 0] = 1
    return np.clip(np.rint(w / scale), -127, 127).astype(np.int8), scale.astype(np.float32)


def int4_to_int8(packed: np.ndarray, scales: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """An int4 tensor (layout above) as the int8 decoder input [rows, cols] and its column scales."""
    levels = np.stack([packed & 15, packed >> 4], -1).reshape(scales.shape + (-1,)).astype(np.float32)
    w = ((levels - 8) * scales[..., None]).reshape(len(scales), -1)[:, :rows]
    return quantize_columns(np.ascontiguousarray(w.T))
