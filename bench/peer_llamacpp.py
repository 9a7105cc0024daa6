"""Decode and prefill against llama.cpp (llama-cpp-python), on the same Phi-4-mini checkpoint:
our int4 bundle (block 32) against its Q4_0 GGUF (blocks of 32 too), interleaved round by round;
medians and ratios ours/peer. llama.cpp runs in its own venv, as a worker process
(bench/llamacpp_worker.py) that idles on stdin while we measure.

    python bench/peer_llamacpp.py --checkpoint CKPT --ours OURS --gguf MODEL.gguf \\
        --llama-python /tmp/llama/venv/bin/python --llama-cpp-dir LLAMA_CPP_DIR

Missing artifacts are built first: OURS with `phi4edge export`, MODEL.gguf with the sdist's
convert_hf_to_gguf.py (LLAMA_CPP_DIR: vendor/llama.cpp of the unpacked llama-cpp-python sdist) then
llama_model_quantize to Q4_0 (`--pure`, the default: every matrix Q4_0, the tied embedding / LM head
included, as ours is int4; `--no-pure`: llama.cpp's default mix, Q6_K for that tensor).
Setup of the peer venv: see bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

from phi4edge import load
from phi4edge.export import export_model
from phi4edge.runtime.benchmark import decode_tokens_per_s, interleaved, prefill_tokens_per_s

WORKER = Path(__file__).with_name("llamacpp_worker.py")


class LlamaCpp:
    """The worker process: one JSON request per line, one JSON answer per line."""

    def __init__(self, python: str, gguf: Path, threads: int):
        self.proc = subprocess.Popen([python, str(WORKER), "serve", str(gguf), str(threads)], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.info = json.loads(self.proc.stdout.readline())

    def ask(self, **request) -> float:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return next(iter(json.loads(self.proc.stdout.readline()).values()))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="needed only to build a missing OURS or GGUF")
    ap.add_argument("--ours", type=Path, required=True)
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--llama-python", required=True, help="python of the venv with llama-cpp-python")
    ap.add_argument("--llama-cpp-dir", help="vendor/llama.cpp of the sdist (for the conversion)")
    ap.add_argument("--pure", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--prefill", type=int, nargs="*", default=[128, 512])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    if not a.ours.exists():
        export_model(a.checkpoint, a.ours)
    if not a.gguf.exists():
        subprocess.run([a.llama_python, str(WORKER), "convert", a.llama_cpp_dir, str(a.checkpoint), str(a.gguf)]
                       + (["--pure"] if a.pure else []), check=True)
    ours, peer = load(a.ours, threads=a.threads), LlamaCpp(a.llama_python, a.gguf, a.threads)
    try:
        runs = {"decode phi4edge": lambda: decode_tokens_per_s(ours, a.tokens),
                "decode llama.cpp": lambda: peer.ask(decode=a.tokens, prompt_len=16)}
        for n in a.prefill:
            runs[f"prefill {n} phi4edge"] = lambda n=n: prefill_tokens_per_s(ours, n)
            runs[f"prefill {n} llama.cpp"] = lambda n=n: peer.ask(prefill=n)
        samples = interleaved(runs, a.repeats)
    finally:
        peer.close()
    ratios = {}
    for what in ["decode"] + [f"prefill {n}" for n in a.prefill]:
        # median of per-round ratios: each round measured both back to back
        ratios[what] = statistics.median(x / y for x, y in zip(samples[f"{what} phi4edge"], samples[f"{what} llama.cpp"]))
    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "gguf": a.gguf.name, "gguf_bytes": a.gguf.stat().st_size, "threads": a.threads, "tokens": a.tokens,
              "repeats": a.repeats, "tokens_per_s": {k: statistics.median(v) for k, v in samples.items()},
              "ratio_ours_to_llamacpp": ratios}
    for k, v in result["tokens_per_s"].items():
        print(f"  {k:24s} {v:7.2f} tok/s")
    for k, v in ratios.items():
        print(f"  {k}: ours / llama.cpp {v:.3f}x (median of per-round ratios)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
