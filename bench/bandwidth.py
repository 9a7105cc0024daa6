"""The roofline probe (phi4edge.runtime.benchmark.read_bandwidth) at 1..N threads, over its own
buffer (>= 8x the last-level cache) and over a cache-resident 16 MiB, in interleaved rounds:
whether the probe measures the memory (flat in threads, well under the cache-resident rate) or a
core (issue 21).

    python bench/bandwidth.py [--rounds 9] [--threads 1 2]

Prints the median GB/s per case over the rounds (each round's figure is itself a median of 3 passes).
"""
from __future__ import annotations

import argparse
import os
import statistics

from phi4edge.runtime.benchmark import read_bandwidth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, nargs="+", default=sorted({1, len(os.sched_getaffinity(0))}))
    a = ap.parse_args()
    cases = {(label, t): size for t in a.threads for label, size in (("probe buffer", None), ("16 MiB", 16 << 20))}
    results: dict[tuple[str, int], list[float]] = {case: [] for case in cases}
    for _ in range(a.rounds):
        for (label, t), size in cases.items():
            results[label, t].append(read_bandwidth(threads=t, repeats=3, buffer_bytes=size).gbs)
    first = read_bandwidth(repeats=1)
    print(f"probe buffer {first.buffer_bytes >> 20} MiB, last-level cache "
          f"{(first.llc_bytes or 0) >> 20} MiB; {os.getloadavg()[0]:.1f} load average at the end")
    for (label, t), values in results.items():
        print(f"{label:13s} {t:2d} threads: median {statistics.median(values):5.1f} GB/s "
              f"(rounds {min(values):.1f}-{max(values):.1f})")


if __name__ == "__main__":
    main()
