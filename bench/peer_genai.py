"""Decode speed against onnxruntime-genai, on bundles exported from the same checkpoint: ours
(`phi4edge export`) and the peer's (its model builder, int4 CPU), each driven by its own runtime,
measured interleaved in one process; medians and the ratio ours/peer.

    python -m onnxruntime_genai.models.builder -i CKPT -o PEER_DIR -p int4 -e cpu   # peer's own venv
    phi4edge export CKPT -o OURS
    python bench/peer_genai.py --ours OURS --peer PEER_DIR
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime_genai as og

from phi4edge import load
from phi4edge.runtime.benchmark import decode_tokens_per_s, interleaved


def genai_decode_tokens_per_s(model: og.Model, new_tokens: int, prompt_len: int = 16) -> float:
    prompt = (np.arange(prompt_len) % 97 + 10).astype(np.int32)
    params = og.GeneratorParams(model)
    total = prompt_len + new_tokens
    params.set_search_options(max_length=total, min_length=total, do_sample=False)   # no early stop
    gen = og.Generator(model, params)
    gen.append_tokens(prompt)
    gen.generate_next_token()            # the first token closes the prefill
    start, produced = time.perf_counter(), 0
    while not gen.is_done():
        gen.generate_next_token()
        produced += 1
    return produced / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours", type=Path, required=True)
    ap.add_argument("--peer", type=Path, required=True)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--adapter", default=None, help="also time ours with this adapter active")
    a = ap.parse_args()
    ours, peer = load(a.ours), og.Model(str(a.peer))
    runs = {"phi4edge": lambda: decode_tokens_per_s(ours, a.tokens),
            "onnxruntime-genai": lambda: genai_decode_tokens_per_s(peer, a.tokens)}
    if a.adapter:
        runs[f"phi4edge + {a.adapter}"] = lambda: decode_tokens_per_s(ours, a.tokens, adapter=a.adapter)
    samples = interleaved(runs, a.repeats)
    ratios = [x / y for x, y in zip(samples["phi4edge"], samples["onnxruntime-genai"])]
    result = {"decode_tokens_per_s": {k: statistics.median(v) for k, v in samples.items()},
              "ratio_ours_to_peer": statistics.median(ratios), "tokens": a.tokens, "repeats": a.repeats,
              "date": time.strftime("%Y-%m-%d")}
    for k, v in result["decode_tokens_per_s"].items():
        print(f"  {k:28s} {v:6.2f} tok/s")
    print(f"  ours / onnxruntime-genai: {result['ratio_ours_to_peer']:.3f}x (median of per-round ratios)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
