"""Block-wise symmetric int4 quantisation in MatMulNBits' packed layout.

The packing is done by onnxruntime's own C++ routine (the one its MatMulNBitsQuantizer calls), so
the bytes are exactly what MatMulNBits and GatherBlockQuantized expect. We call it per tensor and in
row chunks rather than through MatMulNBitsQuantizer, which needs the whole ONNX model in memory.
"""
from __future__ import annotations

import numpy as np
from onnxruntime.capi._pybind_state import quantize_matmul_4bits

CHUNK_ELEMENTS = 1 << 25   # 128 MB of float32 per quantisation call bounds peak memory


def quantize_int4(w: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Round-to-nearest symmetric int4: quantise a [N, K] weight (rows = outputs) along K.

    Returns packed [N, ceil(K/bs), bs/2] uint8 (low nibble first, zero point 8) and float32
    scales [N, ceil(K/bs)].
    """
    n, k = w.shape
    blocks = -(-k // block_size)
    # The packer writes only the nibbles of the K real columns: the padding of a last partial block
    # (SigLIP's fc2, K = 4304) would keep whatever heap bytes np.empty returned, and two exports
    # would differ. 0x88 is the zero point in both nibbles: the padding decodes to exact zeros.
    packed = np.full((n, blocks, block_size // 2), 0x88, np.uint8)
    scales = np.empty((n, blocks), np.float32)
    zero_points = np.empty(0, np.uint8)   # unused when symmetric
    step = max(1, CHUNK_ELEMENTS // k)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        chunk_scales = np.empty((hi - lo) * blocks, np.float32)
        quantize_matmul_4bits(packed[lo:hi], np.ascontiguousarray(w[lo:hi].T, dtype=np.float32),
                              chunk_scales, zero_points, block_size, hi - lo, k, True)
        scales[lo:hi] = chunk_scales.reshape(hi - lo, blocks)
    return packed, scales
