"""Next-token choice from logits: greedy, or temperature / top-k / top-p sampling (numpy)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import RequestError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0   # 0 = greedy
    top_k: int = 0             # 0 = no limit
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool)
                      for v in (self.temperature, self.top_k, self.top_p))
        if not numbers or not math.isfinite(self.temperature) or not math.isfinite(self.top_p):
            raise RequestError(f"sampling needs finite numbers: temperature={self.temperature!r}, top_p={self.top_p!r}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or int(self.top_k) != self.top_k:
            raise RequestError(f"sampling needs temperature >= 0, an integer top_k >= 0 and 0 < top_p <= 1 "
                               f"(got {self.temperature}, {self.top_k}, {self.top_p})")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0):
            raise RequestError(f"seed must be a non-negative integer, got {self.seed!r}")


class Sampler:
    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray) -> int:
        p = self.params
        if p.temperature == 0:
            return int(np.argmax(logits))
        scores = logits.astype(np.float64) / p.temperature
        candidates = np.arange(scores.size)
        if p.top_k and p.top_k < scores.size:
            candidates = np.argpartition(-scores, p.top_k - 1)[:p.top_k]
        candidates = candidates[np.argsort(-scores[candidates], kind="stable")]
        probs = np.exp(scores[candidates] - scores[candidates[0]])
        probs /= probs.sum()
        if p.top_p < 1.0:   # smallest prefix whose mass reaches top_p
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p)) + 1
            candidates, probs = candidates[:keep], probs[:keep] / probs[:keep].sum()
        return int(candidates[self.rng.choice(candidates.size, p=probs)])
