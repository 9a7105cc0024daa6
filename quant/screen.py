"""The screened vocabulary table: int8 levels stored as two int4 halves, so the LM head reads half.

Decode is bandwidth bound and the 200K-vocab head is a quarter of Phi-4-mini's bytes per token in
int8. Split each int8 level v in [-120, 119] as v = 16 * high + low with high, low in [-8, 7]:
  - the *screen*: MatMulNBits over the high halves with scales 16 * s gives every logit with an
    error of at most 8 levels per weight, centred, as int4 rounding would (reading 4 bits, not 8);
  - the screen's top SCREEN_TOP logits per row then get the low halves' share added, which makes
    them the int8 table's dot products (with the int8 compute on x that MatMulNBits' accuracy level 4
    uses for an int8 head too), and are scattered back (export/decoder.py).
The tail keeps the screen's values. The embedding gathers both halves: the int8 rows exactly.
The bytes stored are the int8 table's. At Phi-4-mini's width the head took 22.8 ms per token as
int8 MatMulNBits and 14.9 ms screened plus about 1 ms to complete its top logits (32 layers, 2
threads, AMD EPYC AVX-512, bench/profile_decode.py); figures: bench/RESULTS.md.

Levels span [-120, 119], not [-128, 127]: the split needs high in [-8, 7]. The scale is widened by
128/120 so the block's largest magnitude lands on -120 (onnxruntime's symmetric rule, one notch
coarser: 6% more int8 rounding error, small beside the int4 methods' error).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .blocks import QuantizedWeight, blocked, pack

# Logits completed exactly per row. Permuted SmolLM2 (vocab 49152, bench/quality.py, licences text): perplexity
# +15.9% over fp32 at 64, +13.6% at 256, +12.2% at 1024, against +11.2% for the plain int8 head. At Phi-4-mini's
# width completing 256 costs about 1 ms per token and 1024 about 5-6 ms, most of the 8 ms the screen saves.
SCREEN_TOP = 256
LOW, HIGH = -120, 119


@dataclass(frozen=True)
class ScreenedTable:
    """[vocab, blocks, block/2] uint8 high and low halves (MatMulNBits' int4 layout, zero point 8),
    float32 scales [vocab, blocks]: row r is (16 * high + low) * scales."""

    high: np.ndarray
    low: np.ndarray
    scales: np.ndarray


def split(w: np.ndarray, q: QuantizedWeight) -> ScreenedTable:
    """Split an int8 table quantised by any method (its scales chosen for `w`) into halves,
    re-levelled on the [-120, 119] grid from the float rows `w`."""
    assert q.bits == 8, "a screened table starts from int8 levels"
    scales = (q.scales * np.float32(128 / 120)).astype(np.float32)
    safe = np.where(scales == 0, 1, scales)[..., None]
    v = np.clip(np.rint(blocked(w, q.block_size) / safe), LOW, HIGH).astype(np.int16)
    high = (v + 8) >> 4                       # floor((v + 8) / 16): [-7, 7]
    low = v - 16 * high                       # [-8, 7]
    return ScreenedTable(pack(high + 8, 4), pack(low + 8, 4), scales)
