"""Mixed precision: the decoder linears whose int4 rounding hurts most are stored in int8 (MatMulNBits
bits=8, the same accuracy-level-4 kernel), as many as a bits-per-weight budget allows.

Sensitivity is measured, not guessed: each linear's output error energy tr(E H E^T) on the shipped
calibration text, E = W - int4(W) and H = E[x x^T] the layer's input second moments, with int4(W)
the configured method's own result (GPTQ's included), measured in the calibration pass that made it
(export/calibrate.py).
int8 removes nearly all of a tensor's error, so the choice is a knapsack: greedily take the
linears with the most error per extra stored bit while the whole decoder (every linear plus the
embedding/head table, counted as bench/quality.py counts them) stays within the budget.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..errors import Phi4EdgeError
from .blocks import QuantizedWeight

INT8_BLOCK = 128   # int8 needs fewer scales than int4 for the same error: 8.25 bits/weight, not 9


def int8_block(k: int, block_size: int) -> int:
    """Block of an int8 linear with K inputs: the largest power of two up to INT8_BLOCK dividing K
    (no padded last block), never below the int4 block."""
    block = INT8_BLOCK
    while block > block_size and k % block:
        block //= 2
    return block


def stored_bits(n: int, k: int, bits: int, block_size: int, zero_points: bool) -> int:
    """Bits MatMulNBits stores for an [n, k] weight: packed levels (a last partial block padded),
    float32 scales and, when asymmetric, packed zero points."""
    blocks = -(-k // block_size)
    zp = n * -(-blocks * bits // 8) * 8 if zero_points else 0
    return n * blocks * block_size * bits + n * blocks * 32 + zp


def output_error(w: np.ndarray, q: QuantizedWeight, hessian: np.ndarray) -> float:
    """tr(E H E^T): summed squared output error per token of x @ W.T quantised as q."""
    e = np.asarray(w, np.float32) - q.dequantize(w.shape[1])
    return float(np.einsum("nk,nk->", e @ hessian.astype(np.float32), e))


@dataclass(frozen=True)
class Candidate:
    """One decoder linear: graph name, its measured int4 output error, and the extra bits int8 costs."""

    name: str
    error: float
    int8_block: int
    extra_bits: int


@dataclass(frozen=True)
class Plan:
    """Which linears are int8, the decoder's bits per weight (every matrix) with that choice, and
    every linear's measurement."""

    int8: tuple[tuple[str, int], ...]   # (graph name, int8 block size), sorted
    bits_per_weight: float
    candidates: tuple[Candidate, ...]


def choose(candidates: Iterable[Candidate], base_bits: int, params: int, budget: float) -> Plan:
    """Greedy knapsack: most int4 error per extra bit first, each taken if the total stays within
    `budget` bits per weight. base_bits: every matrix stored at the base settings; params: the
    matrices' weights (a tied table once)."""
    room = budget * params - base_bits
    if room < 0:
        raise Phi4EdgeError(f"--bits-budget {budget}: the int4 linears and the table alone take "
                            f"{base_bits / params:.3f} bits/weight; raise it or choose a smaller --head/--block-size")
    ranked = tuple(sorted(candidates, key=lambda c: c.error / c.extra_bits, reverse=True))
    taken, spent = [], 0
    for c in ranked:
        if spent + c.extra_bits <= room:
            taken.append((c.name, c.int8_block))
            spent += c.extra_bits
    return Plan(tuple(sorted(taken)), (base_bits + spent) / params, ranked)


def plan(linears: Iterable[tuple[str, tuple[int, int], float]], block_size: int, zero_points: bool, table_bits: int,
         table_params: int, budget: float) -> Plan:
    """The int8 choice for (graph name, [out, in] shape, int4 output error) of every decoder linear, in
    any order. table_bits / table_params: the embedding/head table(s) as stored and their weights."""
    linears = list(linears)
    candidates = []
    for name, (n, k), error in linears:
        block = int8_block(k, block_size)
        extra = stored_bits(n, k, 8, block, zero_points) - stored_bits(n, k, 4, block_size, zero_points)
        candidates.append(Candidate(name, error, block, extra))
    bits, params = base([shape for _, shape, _ in linears], block_size, zero_points, table_bits, table_params)
    return choose(candidates, bits, params, budget)


def base(shapes: Iterable[tuple[int, int]], block_size: int, zero_points: bool, table_bits: int,
         table_params: int) -> tuple[int, int]:
    """(stored bits, weights) of every decoder matrix at the base settings: the int4 linears of these
    [out, in] shapes and the table(s) as stored."""
    bits, params = table_bits, table_params
    for n, k in shapes:
        bits, params = bits + stored_bits(n, k, 4, block_size, zero_points), params + n * k
    return bits, params
