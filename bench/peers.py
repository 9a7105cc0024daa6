"""phi4edge against its peers on one checkpoint, in one interleaved script (issue 21): decode at each
thread count, prefill at 128/512/2048 tokens, time to first token from a cold process, resident
memory after load and at peak, and the machine's memory-bandwidth ceiling for scale.

    python bench/peers.py --ours BUNDLE --gguf Q4_0=q4_0.gguf --gguf Q4_K_M=q4_k_m.gguf \\
        --llama-python /tmp/llama/venv/bin/python [--genai GENAI_DIR] \\
        [--optimum OPTIMUM_DIR --optimum-python /tmp/optimum/venv/bin/python] --json out.json

Every runtime is a worker process (bench/peer_worker.py) in its own venv, loaded once per thread
count; it idles on stdin while another is measured, and each round measures all of them back to
back, so machine noise hits them alike. Figures are medians over rounds; ratios are medians of
per-round ratios to phi4edge. Time to first token spawns a fresh process per try (interpreter
start, imports, load, a 128-token prefill, one token; files already in the page cache). How the
peers' models are built from the same checkpoint: bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from phi4edge.bundle import open_bundle
from phi4edge.runtime.benchmark import cpu_name, decode_bytes_per_token, read_bandwidth

WORKER = str(Path(__file__).with_name("peer_worker.py"))
GB = 1e9


class Worker:
    """A runtime loaded in its own process; one JSON request per line, one answer per line."""

    def __init__(self, python: str, runtime: str, model: str, threads: int, env: dict[str, str]):
        self.what = f"{runtime} worker for {model}"
        self.proc = subprocess.Popen([python, WORKER, runtime, model, str(threads), "serve"], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.info = self._answer("loading")

    def ask(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._answer(json.dumps(request))

    def _answer(self, doing: str) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.what} died while {doing} (its stderr is above)")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def cold_ttft_s(python: str, runtime: str, model: str, threads: int, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([python, WORKER, runtime, model, str(threads), "ttft"], check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def measure(runtimes: dict[str, tuple[str, str, str, dict[str, str]]], threads: int, tokens: int, prefills: list[int],
            repeats: int) -> dict:
    """Load every runtime with `threads`, then interleave rounds of every measurement."""
    workers = {name: Worker(python, rt, model, threads, env) for name, (python, rt, model, env) in runtimes.items()}
    try:
        runs = {("decode", name): (w, {"decode": tokens, "prompt_len": 16}) for name, w in workers.items()}
        runs |= {(f"prefill {n}", name): (w, {"prefill": n}) for n in prefills for name, w in workers.items()}
        samples: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
        for r in range(repeats + 1):    # round 0 warms up
            for key, (w, req) in runs.items():
                value = w.ask(**req)["tokens_per_s"]
                if r:
                    samples[key].append(value)
            print(f"  {threads} thread(s): round {r}/{repeats}", file=sys.stderr, flush=True)
        peak = {name: w.ask(memory=1) for name, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    out: dict = {}
    for (what, name), values in samples.items():
        ours = samples[(what, "phi4edge")]
        out.setdefault(what, {})[name] = {"tokens_per_s": statistics.median(values),
                                          "ours_over_this": statistics.median(o / v for o, v in zip(ours, values))}
    out["memory"] = {name: {"after_load": {k: w.info[k] for k in ("rss", "anon", "file")}, "load_s": w.info["load_s"],
                            "peak": peak[name]["peak"], "kernels": w.info["kernels"]} for name, w in workers.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours", required=True, help="phi4edge bundle")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=PATH",
                    help="another phi4edge bundle, measured as 'phi4edge NAME', repeatable")
    ap.add_argument("--prepacked", metavar="CACHE", help="also measure --ours loading its graphs from this "
                    "`phi4edge prepack` cache, as 'phi4edge prepacked' (the other phi4edge rows use none)")
    ap.add_argument("--gguf", action="append", default=[], metavar="NAME=PATH", help="a llama.cpp model, repeatable")
    ap.add_argument("--llama-python", help="python of the venv with llama-cpp-python")
    ap.add_argument("--genai", help="onnxruntime-genai model folder (its builder's int4)")
    ap.add_argument("--optimum", help="optimum-onnx model folder (ORTModelForCausalLM, int4 by onnxruntime's quantizer)")
    ap.add_argument("--optimum-python", help="python of the venv with optimum-onnx")
    ap.add_argument("--threads", type=int, nargs="+", default=[os.cpu_count(), 1])
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--prefill", type=int, nargs="*", default=[128, 512, 2048])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ttft-repeats", type=int, default=3, help="0: no time-to-first-token runs")
    ap.add_argument("--json", type=Path, help="write the results here too")
    a = ap.parse_args()
    # phi4edge rows never see a user's prepack cache: an empty one unless --prepacked names one
    env = os.environ | {"PHI4EDGE_CACHE": tempfile.mkdtemp(prefix="peers-no-cache-")}
    runtimes = {"phi4edge": (sys.executable, "phi4edge", a.ours, env)}
    if a.prepacked:
        runtimes["phi4edge prepacked"] = (sys.executable, "phi4edge", a.ours, env | {"PHI4EDGE_CACHE": a.prepacked})
    for spec in a.variant:
        name, _, path = spec.partition("=")
        runtimes[f"phi4edge {name}"] = (sys.executable, "phi4edge", path, env)
    for spec in a.gguf:
        name, _, path = spec.partition("=")
        runtimes[f"llama.cpp {name}"] = (a.llama_python, "llama.cpp", path, env)
    if a.genai:
        runtimes["onnxruntime-genai"] = (sys.executable, "genai", a.genai, env)
    if a.optimum:
        runtimes["optimum"] = (a.optimum_python, "optimum", a.optimum, env)
    bw = read_bandwidth(threads=os.cpu_count())
    nbytes = {name: decode_bytes_per_token(open_bundle(Path(model))) for name, (_, rt, model, _) in runtimes.items()
              if rt == "phi4edge"}
    nbytes |= {name: Path(model).stat().st_size for name, (_, rt, model, _) in runtimes.items() if rt == "llama.cpp"}
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_name(), "load_average": os.getloadavg(),
              "bandwidth_ceiling_gb_s": bw.gbs, "bandwidth_buffer_bytes": bw.buffer_bytes,
              "bytes_per_token": nbytes, "tokens": a.tokens, "repeats": a.repeats, "threads": {}}
    for t in a.threads:
        result["threads"][t] = measure(runtimes, t, a.tokens, a.prefill, a.repeats)
    ttft: dict[str, list[float]] = {name: [] for name in runtimes}
    for _ in range(a.ttft_repeats):
        for name, (python, rt, model, env) in runtimes.items():
            ttft[name].append(cold_ttft_s(python, rt, model, max(a.threads), env))
    result["cold_ttft_s"] = {name: statistics.median(v) for name, v in ttft.items() if v}
    report(result)
    if a.json:
        a.json.write_text(json.dumps(result, indent=1))


def report(r: dict) -> None:
    print(f"\n{r['cpu']}; load average {r['load_average'][0]:.2f}; {r['date']}")
    mib = r["bandwidth_buffer_bytes"] / 2**20
    print(f"bandwidth ceiling {r['bandwidth_ceiling_gb_s']:.1f} GB/s (all threads, {mib:.0f} MiB buffer)\n")
    print("| threads | measurement | runtime | tok/s | phi4edge / this | % of ceiling |\n|---|---|---|---|---|---|")
    for t, by in r["threads"].items():
        for what, rows in by.items():
            if what == "memory":
                continue
            for name, v in rows.items():
                roof = ""
                if what == "decode" and name in r["bytes_per_token"]:
                    roof = f"{100 * v['tokens_per_s'] * r['bytes_per_token'][name] / GB / r['bandwidth_ceiling_gb_s']:.0f}%"
                print(f"| {t} | {what} | {name} | {v['tokens_per_s']:.2f} | {v['ours_over_this']:.3f}x | {roof} |")
    mem, ttft = r["threads"][max(r["threads"])]["memory"], r["cold_ttft_s"]
    print("\n| runtime | bytes/token | RSS after load (anon) | peak RSS | load s | cold TTFT s | kernels |")
    print("|---|---|---|---|---|---|---|")
    for name, m in mem.items():
        b = r["bytes_per_token"].get(name)
        a, kernels = m["after_load"], m["kernels"].replace(" |", ",")   # llama.cpp's list is |-separated
        print(f"| {name} | {f'{b / GB:.3f} GB' if b else ''} | {a['rss'] / 2**30:.2f} GiB ({a['anon'] / 2**30:.2f}) | "
              f"{m['peak'] / 2**30:.2f} GiB | {m['load_s']:.1f} | {ttft.get(name, float('nan')):.2f} | {kernels} |")


if __name__ == "__main__":
    main()
