"""Timing primitives shared by `phi4edge bench` and the scripts in bench/: warm-up, repetitions,
medians. Kept here (not in bench/) because the CLI ships them; they need nothing beyond the runtime."""
from __future__ import annotations

import statistics
import time

import numpy as np

from .generate import Model
from .sampling import SamplingParams


def decode_tokens_per_s(model: Model, new_tokens: int = 64, prompt_len: int = 16, adapter: str | None = None) -> float:
    """One greedy generation of exactly `new_tokens` (end tokens ignored); decode tokens per second."""
    prompt = (np.arange(prompt_len) % 97 + 10).tolist()
    stop, model.eos_token_ids = model.eos_token_ids, set()
    try:
        timings: dict = {}
        for _ in model.stream(prompt, new_tokens, SamplingParams(), timings, adapter):
            pass
    finally:
        model.eos_token_ids = stop
    return timings["decode_tokens_per_s"]


def interleaved(runs: dict[str, callable], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run each measurement in turn, round after round, so machine noise hits all of them alike."""
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    results: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            results[name].append(fn())
    return results


def switch_latency_ms(model: Model, a: str | None, b: str | None, switches: int = 1000) -> float:
    """Median time to switch the active adapter between a and b (both already loaded)."""
    dec = model.decoder
    dec.use_adapter(a)
    dec.use_adapter(b)
    times = []
    for i in range(switches):
        name = a if i % 2 == 0 else b
        start = time.perf_counter()
        dec.use_adapter(name)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3
