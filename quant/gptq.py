"""GPTQ (Frantar et al. 2022): quantise one input column at a time and push its rounding error onto
the columns not yet quantised, weighted by the inverse Hessian H = E[x x^T] of the layer's inputs
from calibration text, so the layer's output error, not the weight error, is minimised.

Block grids (scale, integer zero point) are fitted by the HQQ-like search (quant/hqq.py) when the
column loop enters each block, on the weights as updated so far. Without a Hessian (encoder
linears, which have no calibration here) this is quant/hqq.py alone.
"""
from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from .blocks import QuantizedWeight, asymmetric, blocked
from .hqq import fit_blocks, importance
from .hqq import quantize as hqq_quantize

DAMP = 0.01    # of the mean diagonal, added to H: the usual GPTQ value; 0.1 was worse on SmolLM2
LAZY = 128     # columns updated together before the trailing matrix (the paper's lazy batch)


def lower_inverse(low: np.ndarray) -> np.ndarray:
    """Inverse of a lower triangular matrix by halves, with matmuls (numpy has no triangular
    solver; a general solve against the identity took 6.2 s of 10.1 at K = 4304)."""
    n = len(low)
    if n <= 256:
        return np.tril(np.linalg.inv(low))   # LU leaves rounding dust above the diagonal
    m = n // 2
    a, d = lower_inverse(low[:m, :m]), lower_inverse(low[m:, m:])
    out = np.zeros_like(low)
    out[:m, :m], out[m:, m:] = a, d
    out[m:, :m] = -(d @ low[m:, :m]) @ a
    return out


@threadpool_limits.wrap(limits=1, user_api="blas")
def inverse_factor(h: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor U of H^-1 = U^T U (dead inputs get a unit diagonal).

    With J the reversal, J H J = L L^T gives H = R R^T, R = J L J upper, so U = R^-1 = J L^-1 J: one
    factorisation and one triangular inverse. One BLAS thread: OpenBLAS's threaded Cholesky
    synchronises per panel, and with the cores busy (a loaded 2-core machine) a 256x256
    factorisation took 0.7 s instead of 8 ms, 19 of the embedded model's 33 s export."""
    h = h.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    h[np.diag_indices_from(h)] += DAMP * np.mean(np.diag(h))
    low = np.linalg.cholesky(h[::-1, ::-1])
    return np.ascontiguousarray(lower_inverse(low)[::-1, ::-1])


def quantize(w: np.ndarray, bits: int, block_size: int, hessian: np.ndarray | None = None) -> QuantizedWeight:
    if hessian is None:
        return hqq_quantize(w, bits, block_size)
    n, k = w.shape
    u = inverse_factor(hessian).astype(np.float32)
    weight = importance(k, block_size, hessian)
    w = np.array(w, np.float32)
    blocks = -(-k // block_size)
    scales = np.empty((n, blocks), np.float32)
    zero = np.empty((n, blocks), np.float32)
    lazy = max(LAZY, block_size)
    top = (1 << bits) - 1
    for i1 in range(0, k, lazy):
        i2 = min(k, i1 + lazy)
        w1, err1 = w[:, i1:i2].copy(), np.zeros((n, i2 - i1), np.float32)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % block_size == 0:
                g = col // block_size
                end = min(block_size, i2 - i1 - i)
                b = blocked(w1[:, i:i + end], block_size)
                scales[:, g], zero[:, g] = (x[:, 0] for x in fit_blocks(b, weight[g:g + 1], bits))
            g = col // block_size
            s = np.where(scales[:, g] == 0, 1, scales[:, g])
            q = (np.clip(np.rint(w1[:, i] / s + zero[:, g]), 0, top) - zero[:, g]) * scales[:, g]
            e = (w1[:, i] - q) / u1[i, i]
            w1[:, i:] -= np.outer(e, u1[i, i:])
            err1[:, i] = e
            w1[:, i] = q
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return asymmetric(blocked(w, block_size), scales, zero, bits, block_size)
