"""Prompt-lookup decoding against plain decoding, one process, interleaved round by round.

    python bench/prompt_lookup.py BUNDLE [--tokens 0,4,8] [--rounds 5] [--threads N] [--max-new 160]
    python bench/prompt_lookup.py BUNDLE --rows 1,2,4,6,9 [--rounds 20]

The first form answers copy-heavy tasks (repeat, correct, edit a text; the prompts below) and one
that is not (a free answer), each with every draft size (0: plain decoding), and prints per task
and size the median decode tok/s, its per-round ratio to plain, the share of drafted tokens kept,
and where the answer first differs from the plain one (none in fp32; with int4's int8 activations a
near tie may flip, see docs/prompt-lookup.md). It needs a model that can copy (real weights such as
bench/real_weights.py's SmolLM2). The second form times one decoder call of R rows against a
one-row step after a 256-token prompt: the cost of checking R - 1 drafts, which with the share
kept gives the speed-up on any model, random weights included.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from phi4edge import load
from phi4edge.runtime.benchmark import cpu_name, interleaved

TEXT = ("The committee met on Tuesday to discuss the budget for next year. After a long debate, the members "
        "agreed to increase funding for the public library by ten percent, while reducing the parks budget "
        "slightly. The chair thanked everyone for their patience and closed the meeting at nine o'clock. "
        "Minutes will be circulated by Friday, and the next meeting is planned for the first week of March.")
TASKS = {
    "repeat": f"Repeat the following text exactly:\n\n{TEXT}",
    "correct": "Fix the spelling mistakes in this text and return the corrected text:\n\n"
               + TEXT.replace("budget", "budgett").replace("library", "libary").replace("meeting", "meetting"),
    "edit": f"Rewrite the following text, replacing Tuesday with Wednesday:\n\n{TEXT}",
    "free": "Write a short story about a lighthouse keeper.",   # little to copy: the cost of failed drafts
}


def tasks(model, sizes: list[int], rounds: int, max_new: int) -> None:
    plain = {name: model.generate(prompt, max_new).token_ids for name, prompt in TASKS.items()}
    stats: dict[tuple[str, int], dict] = {}

    def run(name: str, k: int):
        def once() -> float:
            r = model.generate(TASKS[name], max_new, prompt_lookup=k)
            s = stats.setdefault((name, k), {"drafted": 0, "accepted": 0, "tokens": len(r.token_ids)})
            s["drafted"] += r.timings.get("drafted_tokens", 0)
            s["accepted"] += r.timings.get("accepted_tokens", 0)
            s["differs"] = next((i for i, (a, b) in enumerate(zip(r.token_ids, plain[name])) if a != b),
                                None if r.token_ids == plain[name] else min(len(r.token_ids), len(plain[name])))
            return r.timings["decode_tokens_per_s"]
        return once

    res = interleaved({(name, k): run(name, k) for name in TASKS for k in sizes}, rounds)
    print("| task | drafts | tokens | tok/s | vs plain | drafts kept | first difference |")
    print("|---|---|---|---|---|---|---|")
    for (name, k), speeds in res.items():
        base = res[name, sizes[0]]
        s = stats[name, k]
        kept = f"{s['accepted'] / s['drafted']:.0%}" if s["drafted"] else "-"
        differs = "none" if s["differs"] is None else f"token {s['differs']}"
        ratio = statistics.median(b / a for a, b in zip(base, speeds))
        print(f"| {name} | {k} | {s['tokens']} | {statistics.median(speeds):.1f} | {ratio:.2f}x | {kept} | {differs} |")


def rows_cost(model, sizes: list[int], rounds: int) -> None:
    d = model.decoder
    prompt = (np.arange(256) % 97 + 10).astype(np.int64)
    d.reserve(len(prompt) + max(sizes) + 1)
    d.forward(prompt)

    def call(n: int):
        ids = np.full(n, 11, np.int64)
        def once() -> float:
            d.length = len(prompt)
            start = time.perf_counter()
            d.forward_rows(ids) if n > 1 else d.forward(ids)
            return time.perf_counter() - start
        return once

    res = interleaved({n: call(n) for n in sizes}, rounds, warmup=2)
    one = res[sizes[0]]
    for n, times in res.items():
        ratio = statistics.median(t / o for o, t in zip(one, times))
        print(f"{n} rows: median {statistics.median(times) * 1e3:.1f} ms, {ratio:.2f}x a {sizes[0]}-row call")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--tokens", default="0,4,8", help="draft sizes to compare (0: plain decoding first)")
    ap.add_argument("--rows", default=None, help="time calls of these row counts instead (first: the baseline)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--max-new", type=int, default=160)
    args = ap.parse_args()
    model = load(args.bundle, threads=args.threads)
    print(f"{Path(args.bundle).name} on {cpu_name()}, {args.threads or 'all'} threads, {args.rounds} interleaved rounds")
    if args.rows:
        rows_cost(model, [int(x) for x in args.rows.split(",")], args.rounds)
    else:
        tasks(model, [int(x) for x in args.tokens.split(",")], args.rounds, args.max_new)


if __name__ == "__main__":
    main()
