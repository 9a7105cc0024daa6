"""Importance-weighted scale search (the method behind llama.cpp's `--imatrix` quantisation; written
here from its description, not its code): symmetric blocks whose scale is chosen to minimise the
rounding error weighted per element, with no error feedback.

Each element's weight is its input's importance (the calibration activations' mean square, the
diagonal of H = E[x x^T]) times sqrt(sigma^2 + w^2), sigma^2 the row's mean square weight: loud
inputs and large weights cost more when rounded. Candidate scales map the block's largest magnitude
to -(2^(bits-1) + t/10) for t = -STEPS..STEPS; each candidate's levels get their weighted
least-squares scale, and the candidate with the lowest weighted error is kept.

On the permuted SmolLM2-135M at block 32 with an int8 table it gives +10.6% / +10.9% perplexity over
fp32 on the two texts (llama.cpp's Q4_0 + imatrix: +10.9% / +10.2%), and with rtn's exact layout
(int4 table b32) +18.2% / +16.4% against rtn's +40.0% / +34.3%. At block 64 gptq's error feedback
is 7-9 points ahead (bench/RESULTS.md, "Issue 20, session of 2026-12-02").
"""
from __future__ import annotations

import numpy as np

from .blocks import QuantizedWeight, blocked, diagonal, levels, pack

STEPS = 9                   # candidates t = -9..9 (tenths of a level around the max's level)
CHUNK_ELEMENTS = 1 << 20    # blocked elements searched at a time: the temporaries stay small


def element_weights(b: np.ndarray, importance: np.ndarray | None, sigma2: np.ndarray) -> np.ndarray:
    """[N, blocks, bs] weights of blocked weights b [N, blocks, bs]: importance [blocks, bs] per input
    (None: ones) times sqrt(sigma2 [N] + b^2)."""
    wt = np.sqrt(sigma2[:, None, None] + b * b)
    return wt if importance is None else wt * importance[None]


def search(b: np.ndarray, weight: np.ndarray, bits: int) -> np.ndarray:
    """Symmetric scales [N, blocks] of blocked b with per-element weights; levels are
    clip(rint(b / scale), -2^(bits-1), 2^(bits-1) - 1). The weighted error of a candidate's levels l at
    their least-squares scale is sum(w b^2) - (sum w b l)^2 / sum(w l^2): the largest ratio wins."""
    half = 1 << (bits - 1)
    idx = np.abs(b).argmax(-1)[..., None]
    signed_max = np.take_along_axis(b, idx, -1)[..., 0]
    safe = np.where(signed_max == 0, 1, signed_max)
    best_s = signed_max / -half
    best = np.full(signed_max.shape, -np.inf, np.float32)
    for t in (0, *range(-STEPS, 0), *range(1, STEPS + 1)):
        q = np.clip(np.rint(b * (-(half + 0.1 * t) / safe)[..., None]), -half, half - 1)
        wq = weight * q
        sumlx = (wq * b).sum(-1)
        suml2 = (wq * q).sum(-1)
        ok = suml2 > 0
        s = np.where(ok, sumlx / np.where(ok, suml2, 1), 0)
        score = np.where(ok, sumlx * s, -np.inf)
        better = score > best
        best_s, best = np.where(better, s, best_s), np.where(better, score, best)
    return np.where(signed_max == 0, 0, best_s).astype(np.float32)


def column_importance(k: int, block_size: int, mean_squares: np.ndarray | None) -> np.ndarray | None:
    """[blocks, bs] per-input importance: mean squares normalised to mean 1, floored so inputs never
    seen still count a little (zero padding past K gets the floor)."""
    if mean_squares is None:
        return None
    d = np.asarray(mean_squares, np.float64)
    d = d / max(float(d.mean()), 1e-30) + 1e-3
    return blocked(d[None].astype(np.float32), block_size)[0]


def quantize_rows(w: np.ndarray, bits: int, block_size: int, mean_squares: np.ndarray | None) -> QuantizedWeight:
    """Symmetric blocks (no zero points) with searched scales; `mean_squares` [K] the inputs' importance."""
    b = blocked(w, block_size)
    importance = column_importance(w.shape[1], block_size, mean_squares)
    sigma2 = (np.asarray(w, np.float32) ** 2).mean(1)
    scales = np.empty(b.shape[:2], np.float32)
    step = max(1, CHUNK_ELEMENTS // b[0].size)
    for lo in range(0, len(b), step):
        rows = slice(lo, lo + step)
        scales[rows] = search(b[rows], element_weights(b[rows], importance, sigma2[rows]), bits)
    q = levels(b, scales, np.full(scales.shape, 1 << (bits - 1), np.float32), bits)
    return QuantizedWeight(pack(q, bits), scales, None, bits, block_size)


def quantize(w: np.ndarray, bits: int, block_size: int, hessian: np.ndarray | None = None) -> QuantizedWeight:
    """The METHODS entry: importance from the Hessian's diagonal (ones without calibration)."""
    return quantize_rows(w, bits, block_size, diagonal(hessian))
