"""Resident memory of a loaded decoder (anonymous vs file-backed), with and without handing back the
weight-file pages that only prepacking read, under extra onnxruntime session config entries; and
an interleaved decode A/B of the two in one process (issue 21).

    python bench/load_memory.py BUNDLE                                  # shipped vs pages kept
    python bench/load_memory.py BUNDLE --option mlas.qnbit.force_fp32=1  # any session config entry
    python bench/load_memory.py BUNDLE --ab 12 --tokens 8               # decode tok/s: shipped / pages kept
    python bench/load_memory.py BUNDLE --ab 12 --option KEY=VALUE       # decode tok/s: with KEY / shipped

Each memory variant loads in its own fresh process, so RSS is that of one decoder: after load,
then after 8 greedy decode steps. Prints one JSON line per variant (GiB; ratios to the decoder's
weight bytes).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np

import phi4edge.runtime.session as session_module
from phi4edge.bundle import open_bundle
from phi4edge.runtime.benchmark import _initializer_bytes
from phi4edge.runtime.memory import rss

GIB = 1 << 30


def load(bundle: str, keep_pages: bool, options: list[str]) -> session_module.DecoderSession:
    """The decoder as the runtime loads it, plus `options` ("key=value" session config entries);
    `keep_pages` skips handing back the pages only prepacking read."""
    base_options = session_module.session_options

    def with_options(*args, **kwargs):
        so = base_options(*args, **kwargs)
        for option in options:
            so.add_session_config_entry(*option.split("=", 1))
        return so

    release = session_module.release_load_pages
    session_module.session_options = with_options
    if keep_pages:
        session_module.release_load_pages = lambda *_: 0
    try:
        return session_module.DecoderSession(open_bundle(bundle))
    finally:
        session_module.session_options, session_module.release_load_pages = base_options, release


def decode_tokens_per_s(decoder: session_module.DecoderSession, tokens: int) -> float:
    """Greedy decode of `tokens` after a 16-token prompt; tokens per second of the decode part."""
    decoder.reserve(tokens + 16)
    token = int(np.argmax(decoder.forward(np.arange(10, 26, dtype=np.int64))))
    start = time.perf_counter()
    for _ in range(tokens):
        token = int(np.argmax(decoder.forward(np.array([token], np.int64))))
    return tokens / (time.perf_counter() - start)


def measure(bundle: str, keep_pages: bool, options: list[str]) -> dict:
    weights = sum(length for _, length in _initializer_bytes(open_bundle(bundle)))
    start = time.perf_counter()
    decoder = load(bundle, keep_pages, options)
    load_s = time.perf_counter() - start
    loaded = rss()
    decode_tokens_per_s(decoder, 8)
    decoded = rss()
    assert loaded and decoded, "RSS is read from /proc/self/status: Linux only"
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    return {"pages": "kept" if keep_pages else "handed back", "options": options, "load_s": round(load_s, 1),
            "weights_gb": weights / 1e9, "peak_gib": round(peak / GIB, 3),
            **{f"{when}_{k}_gib": round(v / GIB, 3) for when, r in (("load", loaded), ("decode", decoded))
               for k, v in r.items()},
            "load_rss_over_weights": round(loaded["rss"] / weights, 3),
            "decode_rss_over_weights": round(decoded["rss"] / weights, 3)}


def ab(bundle: str, rounds: int, tokens: int, options: list[str]) -> None:
    """B (as shipped, plus `options`) against A (as shipped, or with the pages kept when there are no
    options) in one process, alternating: noise hits both alike."""
    runs = {"A shipped": load(bundle, False, [])} if options else {"A pages kept": load(bundle, True, [])}
    runs["B " + (" ".join(options) or "shipped")] = load(bundle, False, options)
    for decoder in runs.values():
        decode_tokens_per_s(decoder, tokens)   # warm-up
    results: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, decoder in runs.items():
            results[name].append(decode_tokens_per_s(decoder, tokens))
    for name, values in results.items():
        print(f"{name:30s} median {statistics.median(values):.2f} tok/s  {[round(v, 2) for v in values]}")
    a, b = results.values()
    print(f"B/A: ratio of medians {statistics.median(b) / statistics.median(a):.3f}, "
          f"median of per-round ratios {statistics.median(y / x for x, y in zip(a, b)):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--option", action="append", default=[], help="session config entry key=value (repeatable)")
    ap.add_argument("--ab", type=int, default=0, metavar="ROUNDS", help="interleaved decode A/B instead")
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--child", choices=["kept", "handed back"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure(a.bundle, a.child == "kept", a.option)))
    elif a.ab:
        ab(a.bundle, a.ab, a.tokens, a.option)
    else:
        for pages in ("kept", "handed back"):
            extra = [f"--option={o}" for o in a.option]
            subprocess.run([sys.executable, __file__, a.bundle, "--child", pages, *extra], check=True)


if __name__ == "__main__":
    main()
