"""Weight quantisation for export: numpy weights in, MatMulNBits' packed arrays out.

A method is one module exposing `quantize(w [N, K], block_size) -> (packed [N, K/bs, bs/2] uint8,
scales [N, K/bs] float32)`, registered in METHODS by name; `QuantConfig` picks one and carries the
settings the manifest records.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import Phi4EdgeError
from . import int4

Quantizer = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
METHODS: dict[str, Quantizer] = {"rtn": int4.quantize_int4}   # round to nearest, symmetric


@dataclass(frozen=True)
class QuantConfig:
    """int4 settings recorded in the manifest. accuracy_level 4 = int8 compute on CPU (fast path)."""

    method: str = "rtn"
    bits: int = 4
    block_size: int = 32
    accuracy_level: int = 4

    def __post_init__(self):
        if self.method not in METHODS:
            raise Phi4EdgeError(f"--quant {self.method!r}: choose one of {', '.join(sorted(METHODS))}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise Phi4EdgeError(f"--block-size {self.block_size}: must be a power of two >= 16")
        if self.bits != 4:
            raise Phi4EdgeError(f"only 4-bit weights are supported, got bits={self.bits}")

    def quantize(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return METHODS[self.method](w, self.block_size)

    def to_json(self) -> dict:
        return asdict(self)


__all__ = ["METHODS", "QuantConfig", "Quantizer"]
