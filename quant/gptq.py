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
from .hqq import fit_rows, importance
from .hqq import quantize as hqq_quantize

# Of the mean diagonal, added to H. The usual GPTQ value, 0.01, over-fits the 2,048 calibration tokens
# on SmolLM2: at block 64 with an int8 table (torch proxy of bench/quality.py) +20.9% / +18.8% perplexity
# on the two texts; 1.0 gives +10.2% / +10.8% (0.3 and 3.0 measured at block 32, symmetric grid: 1.0 best
# on the Python text, 3.0 on the licences). The mean is dominated by a few loud input channels (up to 377x
# it), so this damps the quiet ones heavily and the error feedback runs mostly through the loud ones.
DAMP = 1.0
LAZY = 128     # columns updated together before the trailing matrix (the paper's lazy batch)
ROWS = 1024    # rows through the column loop at a time


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


def _columns(w1: np.ndarray, u1: np.ndarray, i1: int, scales: np.ndarray, zero: np.ndarray, weight: np.ndarray,
             bits: int, block_size: int) -> np.ndarray:
    """The column loop over one lazy block for some rows: quantises w1 [rows, L] (columns i1...) in
    place, fitting each block's grid (into the rows' scales/zero views) as the loop enters it; returns
    the scaled errors [rows, L] for the trailing update."""
    top = (1 << bits) - 1
    err1 = np.zeros_like(w1)
    for i in range(w1.shape[1]):
        col = i1 + i
        g = col // block_size
        if col % block_size == 0:
            b = blocked(w1[:, i:i + min(block_size, w1.shape[1] - i)], block_size)
            scales[:, g], zero[:, g] = (x[:, 0] for x in fit_rows(b, weight[g:g + 1], bits))
        s = np.where(scales[:, g] == 0, 1, scales[:, g])
        q = (np.clip(np.rint(w1[:, i] / s + zero[:, g]), 0, top) - zero[:, g]) * scales[:, g]
        e = (w1[:, i] - q) / u1[i, i]
        w1[:, i:] -= np.outer(e, u1[i, i:])
        err1[:, i] = e
        w1[:, i] = q
    return err1


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
    for i1 in range(0, k, lazy):
        i2 = min(k, i1 + lazy)
        err1 = np.empty((n, i2 - i1), np.float32)
        # rows are independent in the column loop: ROWS at a time keep its working set in cache
        for r in range(0, n, ROWS):
            rows = slice(r, r + ROWS)
            w1 = w[rows, i1:i2].copy()
            err1[rows] = _columns(w1, u[i1:i2, i1:i2], i1, scales[rows], zero[rows], weight, bits, block_size)
            w[rows, i1:i2] = w1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return asymmetric(blocked(w, block_size), scales, zero, bits, block_size)
