"""Rotary cos/sin caches for GroupQueryAttention's fused rotary (do_rotary=1)."""
from __future__ import annotations

import numpy as np

from ..models.config import RopeConfig


def inv_freq(rope: RopeConfig, factors: tuple[float, ...] = ()) -> np.ndarray:
    """Inverse frequencies in float32, computed as transformers does (so caches match bit-for-bit
    as far as float32 allows); LongRoPE divides each by its rescale factor."""
    exponent = np.arange(0, rope.rotary_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(rope.rotary_dim)
    base = np.float32(rope.theta) ** exponent
    if factors:
        base = np.asarray(factors, dtype=np.float32) * base
    return (np.float32(1.0) / base).astype(np.float32)


def cos_sin(rope: RopeConfig, length: int, factors: tuple[float, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """[length, rotary_dim/2] caches, scaled by the LongRoPE magnitude factor."""
    freqs = np.arange(length, dtype=np.float32)[:, None] * inv_freq(rope, factors)[None, :]
    scale = np.float64(rope.attention_factor)
    freqs64 = freqs.astype(np.float64)
    return ((np.cos(freqs64) * scale).astype(np.float32), (np.sin(freqs64) * scale).astype(np.float32))
