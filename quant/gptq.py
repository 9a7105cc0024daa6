"""GPTQ (Frantar et al. 2022): quantise one input column at a time and push its rounding error onto
the columns not yet quantised, weighted by the layer's input second moments H = E[x x^T] from
calibration text, so the layer's output error, not the weight error, is minimised.

Block grids (scale, integer zero point) are fitted by the HQQ-like search (quant/hqq.py) when the
column loop enters each block, on the weights as updated so far. Without a full Hessian (encoder
linears, which have no calibration here, or only its diagonal) this is quant/hqq.py alone.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

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
THREADED = 1024   # from this size the Cholesky factorisation uses every BLAS thread (see feedback)


def feedback(h: np.ndarray) -> np.ndarray:
    """V [K, K], upper triangular: quantising column j with error d_j (original weight minus level)
    adds d_j * V[j, i] to every later column i. This is GPTQ's update without inverting anything.

    The paper updates with the rows of U, the upper Cholesky factor of H^-1. With H = R R^T (R upper,
    so U = R^-1), summing its updates gives column i, before it is quantised, as w_i + sum_{j<i} d_j
    R[j, i] / R[i, i] with d_j the original weights minus the levels: V = R over its diagonal, one
    factorisation (the inverse of the triangle was 11 of the 32 s down_proj took at K = 8192).
    Dead inputs get a unit diagonal. Small matrices factorise on one BLAS thread: OpenBLAS's threaded
    Cholesky synchronises per panel, and on a loaded 2-core machine a 256x256 one took 0.7 s instead
    of 8 ms; at K = 8192 two threads take 5.8 s instead of 7.6 (quiet)."""
    h = h.astype(np.float64)   # a copy
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    h[np.diag_indices_from(h)] += DAMP * np.mean(np.diag(h))
    with threadpool_limits(limits=None if len(h) >= THREADED else 1, user_api="blas"):
        low = np.linalg.cholesky(h[::-1, ::-1])   # with J the reversal, J H J = L L^T: R = J L J
    v = low[::-1, ::-1].astype(np.float32)
    v /= np.diag(v)[None, :]
    return v


def _columns(w1: np.ndarray, orig1: np.ndarray, v1: np.ndarray, i1: int, scales: np.ndarray, zero: np.ndarray,
             weight: np.ndarray, bits: int, block_size: int) -> np.ndarray:
    """The column loop over one lazy block for some rows: quantises w1 [rows, L] (columns i1...) in
    place, fitting each block's grid (into the rows' scales/zero views) as the loop enters it; returns
    the errors against the original weights orig1 [rows, L] for the trailing update."""
    top = (1 << bits) - 1
    delta = np.empty_like(w1)
    for i in range(w1.shape[1]):
        col = i1 + i
        g = col // block_size
        if col % block_size == 0:
            b = blocked(w1[:, i:i + min(block_size, w1.shape[1] - i)], block_size)
            scales[:, g], zero[:, g] = (x[:, 0] for x in fit_rows(b, weight[g:g + 1], bits))
        s = np.where(scales[:, g] == 0, 1, scales[:, g])
        q = (np.clip(np.rint(w1[:, i] / s + zero[:, g]), 0, top) - zero[:, g]) * scales[:, g]
        delta[:, i] = orig1[:, i] - q
        w1[:, i + 1:] += np.outer(delta[:, i], v1[i, i + 1:])
        w1[:, i] = q
    return delta


def quantize(w: np.ndarray, bits: int, block_size: int, hessian: np.ndarray | None = None) -> QuantizedWeight:
    if hessian is None or hessian.ndim == 1:
        return hqq_quantize(w, bits, block_size, hessian)
    n, k = w.shape
    v = feedback(hessian)
    weight = importance(k, block_size, hessian)
    orig = np.asarray(w, np.float32)
    w = orig.copy()
    blocks = -(-k // block_size)
    scales = np.empty((n, blocks), np.float32)
    zero = np.empty((n, blocks), np.float32)
    lazy = max(LAZY, block_size)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for i1 in range(0, k, lazy):
            cols = slice(i1, min(k, i1 + lazy))
            delta = np.empty((n, cols.stop - i1), np.float32)

            def run(rows: slice, cols: slice = cols, delta: np.ndarray = delta) -> None:
                w1 = w[rows, cols].copy()
                delta[rows] = _columns(w1, orig[rows, cols], v[cols, cols], cols.start, scales[rows], zero[rows], weight,
                                       bits, block_size)
                w[rows, cols] = w1
            # rows are independent in the column loop: ROWS at a time keep its working set in cache, on
            # every core (numpy releases the GIL in the array operations: gate_up_proj 23.5 -> 19 s on 2)
            list(pool.map(run, (slice(r, r + ROWS) for r in range(0, n, ROWS))))
            w[:, cols.stop:] += delta @ v[cols, cols.stop:]
    return asymmetric(blocked(w, block_size), scales, zero, bits, block_size)
