"""Block-wise integer weights in MatMulNBits' layout, and the round-to-nearest grids other methods start from.

A weight [N, K] (rows = outputs) is cut along K into blocks of `block_size` (the last one zero
padded); each block has a float32 scale and, when asymmetric, an integer zero point:
w ~ (q - zero_point) * scale, q in [0, 2^bits). Symmetric blocks use the middle level
(8 for int4, 128 for int8) as zero point and store none.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QuantizedWeight:
    """MatMulNBits' inputs for one weight: packed [N, blocks, bs*bits/8] uint8, scales [N, blocks]
    float32, zero points packed [N, ceil(blocks*bits/8)] uint8 or None (symmetric)."""

    packed: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    bits: int
    block_size: int

    def dequantize(self, k: int) -> np.ndarray:
        """The float32 [N, K] weight the kernel computes with."""
        n, blocks = self.scales.shape
        q = unpack(self.packed, self.bits).astype(np.float32)
        zp = (np.full((n, blocks), 1 << (self.bits - 1), np.float32) if self.zero_points is None
              else unpack(self.zero_points, self.bits)[:, :blocks].astype(np.float32))
        return ((q - zp[..., None]) * self.scales[..., None]).reshape(n, -1)[:, :k]

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales.nbytes + (0 if self.zero_points is None else self.zero_points.nbytes)


def blocked(w: np.ndarray, block_size: int) -> np.ndarray:
    """[N, K] -> [N, blocks, block_size] float32, the last block zero padded."""
    n, k = w.shape
    pad = -k % block_size
    w = np.asarray(w, np.float32)
    if pad:
        w = np.concatenate([w, np.zeros((n, pad), np.float32)], axis=1)
    return w.reshape(n, -1, block_size)


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Levels (uint8, last axis) to MatMulNBits bytes: int4 two per byte, low nibble first."""
    q = q.astype(np.uint8)
    if bits == 8:
        return q
    if q.shape[-1] % 2:
        q = np.concatenate([q, np.zeros(q.shape[:-1] + (1,), np.uint8)], axis=-1)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return packed
    out = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), np.uint8)
    out[..., 0::2], out[..., 1::2] = packed & 15, packed >> 4
    return out


def symmetric(w: np.ndarray, bits: int, block_size: int) -> QuantizedWeight:
    """Round to nearest with the largest magnitude at the most negative level (onnxruntime's
    symmetric rule: scale = max|w| signed / -2^(bits-1))."""
    b = blocked(w, block_size)
    half = 1 << (bits - 1)
    idx = np.abs(b).argmax(-1)[..., None]
    scales = (np.take_along_axis(b, idx, -1)[..., 0] / -half).astype(np.float32)
    q = levels(b, scales, np.full(scales.shape, half, np.float32), bits)
    return QuantizedWeight(pack(q, bits), scales, None, bits, block_size)


def levels(b: np.ndarray, scales: np.ndarray, zero: np.ndarray, bits: int) -> np.ndarray:
    """Nearest levels of blocked weights for the given scales and (integer-valued) zero points."""
    safe = np.where(scales == 0, 1, scales)[..., None]
    return np.clip(np.rint(b / safe + zero[..., None]), 0, (1 << bits) - 1).astype(np.uint8)


def minmax(b: np.ndarray, bits: int, shrink: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Asymmetric (scale, integer zero point) spanning each block's [min, max] (times `shrink`),
    zero kept representable."""
    top = (1 << bits) - 1
    lo = np.minimum(b.min(-1), 0) * shrink
    hi = np.maximum(b.max(-1), 0) * shrink
    scales = ((hi - lo) / top).astype(np.float32)
    zero = np.clip(np.rint(-lo / np.where(scales == 0, 1, scales)), 0, top).astype(np.float32)
    return scales, zero


def asymmetric(b: np.ndarray, scales: np.ndarray, zero: np.ndarray, bits: int, block_size: int) -> QuantizedWeight:
    """Pack blocked weights with the given scales and integer zero points."""
    q = levels(b, scales, zero, bits)
    zp = pack(zero.astype(np.uint8), bits)
    return QuantizedWeight(pack(q, bits), scales.astype(np.float32), zp, bits, block_size)


def diagonal(hessian: np.ndarray | None) -> np.ndarray | None:
    """The inputs' mean squares [K] from a quantiser's second-moments argument ([K, K], [K] or None)."""
    return hessian if hessian is None or hessian.ndim == 1 else np.diag(hessian)
