"""Decode speed of several bundles in one process, interleaved run by run: for comparing exports
on a shared, loaded machine, where bench/paired_decode.py's fresh process per round saw single
rounds swing from 14 to 75 tok/s.

    python bench/interleaved_decode.py THREADS BASELINE_BUNDLE BUNDLE [BUNDLE ...]

Prints each bundle's median decode tok/s (32-token runs, 40 rounds) and the median of its per-round
ratios to the baseline.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

from phi4edge import load
from phi4edge.runtime.benchmark import decode_tokens_per_s, interleaved

ROUNDS, TOKENS = 40, 32


def main() -> None:
    threads, paths = int(sys.argv[1]), sys.argv[2:]
    models = {Path(p).name: load(p, threads=threads or None) for p in paths}
    runs = {name: (lambda m=m: decode_tokens_per_s(m, TOKENS)) for name, m in models.items()}
    res = interleaved(runs, repeats=ROUNDS, warmup=2)
    base = Path(paths[0]).name
    for name, r in res.items():
        ratio = statistics.median(b / a for a, b in zip(res[base], r))
        print(f"{name:24} median {statistics.median(r):6.2f} tok/s, per-round ratio to {base}: median {ratio:.3f}")


if __name__ == "__main__":
    main()
