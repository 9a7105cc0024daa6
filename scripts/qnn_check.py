"""`make qnn-check`: the embedded model on Qualcomm's QNN HTP backend, as onnxruntime-qnn's x86-64
simulator runs it, next to its CPU bundle. No phone, NPU or GPU is involved: the HTP is simulated
on this machine's CPU, so its times say how slow the simulator is, not how fast a phone would be.

    python -m scripts.qnn_check [--work build/qnn] [--limit N] [--jobs 3] [--context 256]

Steps, each through the `phi4edge` command line:
1. export: the embedded checkpoint as `make demo` exports it (dynamic int4) and with
   `--target qnn --context C` (static graphs and their context binaries);
2. nodes: every graph of both bundles loaded for QNN, the static graphs with the CPU fallback
   disabled (a graph QNN does not take whole fails), the dynamic ones with it (to count what QNN
   leaves to the CPU); the time to compile each static graph against loading its context binary;
3. eval: `phi4edge eval` of the dynamic bundle on the CPU, of the QNN bundle's graphs on the CPU
   and of the QNN bundle with `--provider qnn --require-provider`, over the held-out sets (in parts
   of 25 items, run by parallel processes; `--limit` takes the first N of each), and how many
   greedy answers are the same;
4. speed: `phi4edge bench --repeats 1 --new-tokens 8` of each, the simulator's next to the CPU's.

Writes WORK/report.md (printed too) and WORK/report.json; eval results are kept in WORK/eval and
reused by a later run with the same --limit (delete them to measure again). Exit status 1 when
a static graph of the QNN bundle has less than 90% of its nodes on QNN.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = REPO / "models" / "embedded"
SETS = {"image": ("image.jsonl", "images"), "speech": ("speech.jsonl", "audio"), "text": ("text.jsonl", None)}
KINDS = ("decoder", "prefill", "vision", "speech")
# eval runs, name -> (bundle, arguments): the CPU bundle on the CPU; the QNN bundle's graphs on the
# CPU (what the static form changes); the QNN bundle on the simulator (what the HTP changes)
EVALS = {"cpu": ("cpu", []), "static": ("qnn", []), "qnn": ("qnn", ["--provider", "qnn", "--require-provider"])}


def phi4edge(*args: str, out: Path | None = None) -> str:
    """Run the command line; its stdout (also written to `out`)."""
    done = subprocess.run([sys.executable, "-m", "phi4edge.cli", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"phi4edge {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    if out is not None:
        out.write_text(done.stdout)
    return done.stdout


def export(work: Path, context: int) -> dict[str, Path]:
    bundles = {"cpu": work / "embedded-int4", "qnn": work / f"embedded-qnn-{context}"}
    for name, args in (("cpu", []), ("qnn", ["--target", "qnn", "--context", str(context)])):
        if not (bundles[name] / "manifest.json").is_file():
            start = time.perf_counter()
            phi4edge("export", str(EMBEDDED / "checkpoint"), "-o", str(bundles[name]), "--force", *args)
            print(f"exported {bundles[name]} in {time.perf_counter() - start:.1f} s", flush=True)
    return bundles


def nodes(bundles: dict[str, Path]) -> dict:
    """{bundle: {graph: {"nodes": {provider: n}, ...}}}, with compile and context-load seconds."""
    from phi4edge.bundle import open_bundle
    from phi4edge.providers import node_counts
    from phi4edge.runtime.session import ProviderFallbackWarning, ProviderRequest, load_graph
    qnn = open_bundle(bundles["qnn"])
    graphs = replace(qnn, manifest=replace(qnn.manifest, qnn=None))   # the static graphs themselves
    strict = ProviderRequest(["qnn"], strict=True)
    out: dict = {"qnn": {}, "cpu": {}}
    for kind in KINDS:
        start = time.perf_counter()
        counts = node_counts(load_graph(graphs, kind, providers=strict))
        compiled = time.perf_counter() - start
        start = time.perf_counter()
        load_graph(qnn, kind, providers=strict)
        out["qnn"][kind] = {"nodes": counts, "compile_s": compiled, "context_load_s": time.perf_counter() - start}
    dynamic = open_bundle(bundles["cpu"])
    for kind in dynamic.manifest.graphs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ProviderFallbackWarning)
            out["cpu"][kind] = {"nodes": node_counts(load_graph(dynamic, kind, providers=["qnn"]))}
    return out


def split_sets(work: Path, limit: int | None, part: int) -> dict[str, list[Path]]:
    """Each held-out set (its first `limit` items) in folders of `part` items (links to the shipped
    files), evaluated in separate processes; a run that stops keeps the parts it finished."""
    folders: dict[str, list[Path]] = {}
    for kind, (name, media) in SETS.items():
        lines = (EMBEDDED / "eval" / name).read_text().splitlines()[:limit]
        folders[kind] = []
        for i in range(0, len(lines), part):
            folder = work / "sets" / f"{kind}-{limit or 'all'}-{i // part:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text("\n".join(lines[i:i + part]) + "\n")
            if media and not (folder / media).exists():
                os.symlink(EMBEDDED / "eval" / media, folder / media)
            folders[kind].append(folder)
    return folders


def evaluate(work: Path, bundles: dict[str, Path], limit: int | None, jobs: int, part: int) -> dict:
    """{bundle: {set: scores}}: `phi4edge eval` over the parts of each set (reports of an earlier
    run reused), scored over the whole set from the parts' answers."""
    folders = split_sets(work, limit, part)
    (work / "eval").mkdir(exist_ok=True)
    runs = []
    for name, (bundle, extra) in EVALS.items():   # the CPU's first (minutes), then the simulator's, sets interleaved
        parts = sorted((i, folder) for kind_parts in folders.values() for i, folder in enumerate(kind_parts))
        runs += [(work / "eval" / f"{name}-{folder.name}.json", ["eval", str(bundles[bundle]), "--set", str(folder), "--json",
                                                                *extra]) for _, folder in parts]

    def run(item: tuple[Path, list[str]]) -> None:
        out, args = item
        if not out.is_file():
            start = time.perf_counter()
            phi4edge(*args, out=out)
            print(f"{out.name}: {time.perf_counter() - start:.0f} s", flush=True)
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(run, runs))
    return {name: {kind: merge(kind, parts, [json.loads((work / "eval" / f"{name}-{f.name}.json").read_text()) for f in parts],
                               bundles[bundle])
                   for kind, parts in folders.items()} for name, (bundle, _) in EVALS.items()}


def merge(kind: str, folders: list[Path], reports: list[dict], bundle: Path) -> dict:
    """One set's scores from its parts' reports, as `phi4edge eval` scores a whole set: image
    accuracy and speech WER/exact from the answers, text perplexity over all answer tokens."""
    import jiwer

    from phi4edge.runtime.evaluate import normalise
    from phi4edge.runtime.tokenizer import ChatTokenizer
    items = [[json.loads(line) for line in (folder / SETS[kind][0]).read_text().splitlines()] for folder in folders]
    if kind == "text":   # each part's perplexity weighted by its tokens (the answer's and the end token)
        tokenizer = ChatTokenizer(bundle / "tokenizer.json", bundle / "tokenizer_config.json")
        tokens = [sum(len(tokenizer.encode_text(i["answer"])) + 1 for i in part) for part in items]
        nll = sum(n * math.log(r["text_perplexity"]) for n, r in zip(tokens, reports))
        return {"items": sum(map(len, items)), "text_perplexity": math.exp(nll / sum(tokens))}
    said = [a for r in reports for a in r["answers"]["routed"][kind]]
    refs, hyps = [normalise(i["answer"]) for part in items for i in part], [normalise(a) for a in said]
    scores = {"items": len(refs), "answers": said}
    if kind == "image":
        return scores | {"image_accuracy": sum(r == h for r, h in zip(refs, hyps)) / len(refs)}
    return scores | {"speech_wer": float(jiwer.wer(refs, hyps)),
                     "speech_exact": sum(r == h for r, h in zip(refs, hyps)) / len(refs)}


def bench(work: Path, bundles: dict[str, Path]) -> dict:
    out = {}
    for name, bundle in bundles.items():
        path = work / f"bench-{name}.json"
        if not path.is_file():
            extra = ["--provider", "qnn", "--require-provider"] if name == "qnn" else []
            phi4edge("bench", str(bundle), "--repeats", "1", "--new-tokens", "8", "-o", str(path), *extra)
        out[name] = json.loads(path.read_text())
    return out


def report(results: dict) -> tuple[str, bool]:
    """The markdown report, and whether every static graph has at least 90% of its nodes on QNN."""
    qnn, nodes = "QNNExecutionProvider", results["nodes"]
    lines = ["No phone, NPU or GPU was used: QNN's HTP backend is onnxruntime-qnn's x86-64 simulator.", "",
             "| graph | QNN bundle: nodes on QNN (CPU fallback disabled) | compile s | context binary load s | "
             "dynamic bundle: nodes on QNN |", "|---|---|---|---|---|"]
    whole = True
    for kind in KINDS:
        s = nodes["qnn"][kind]
        total, on = sum(s["nodes"].values()), s["nodes"].get(qnn, 0)
        whole &= on >= 0.9 * total
        d = nodes["cpu"].get(kind)
        dyn = f"{d['nodes'].get(qnn, 0)} of {sum(d['nodes'].values())}" if d else "(no such graph)"
        lines.append(f"| {kind} | {on} of {total} ({on / total:.0%}) | {s['compile_s']:.2f} | "
                     f"{s['context_load_s']:.2f} | {dyn} |")
    ev = results["eval"]
    lines += ["", "| held-out set (adapters routed) | CPU bundle on CPU | QNN bundle's graphs on CPU | QNN bundle on "
              "the HTP simulator | simulator's answer = CPU bundle's | = its graphs' on CPU |", "|---|---|---|---|---|---|"]
    for kind, key, fmt in (("image", "image_accuracy", "{:.1%}"), ("speech", "speech_wer", "{:.1%}"),
                           ("speech", "speech_exact", "{:.1%}"), ("text", "text_perplexity", "{:.3f}")):
        cpu, static, sim = ev["cpu"][kind], ev["static"][kind], ev["qnn"][kind]
        same = [f"{sum(x == y for x, y in zip(r['answers'], sim['answers']))} of {r['items']}"
                if key in ("image_accuracy", "speech_wer") else "" for r in (cpu, static)]
        lines.append(f"| {kind} ({cpu['items']} items): {key.replace('_', ' ')} | {fmt.format(cpu[key])} | "
                     f"{fmt.format(static[key])} | {fmt.format(sim[key])} | {same[0]} | {same[1]} |")
    b = results["bench"]
    lines += ["", "| speed (phi4edge bench --repeats 1 --new-tokens 8) | CPU bundle on CPU | QNN bundle on the simulator |",
              "|---|---|---|"]
    rows = [("decode, tokens/s", lambda r: r["decode_tokens_per_s"]),
            ("decode, seconds per token", lambda r: 1 / r["decode_tokens_per_s"]),
            ("time to first token (128-token prompt), ms", lambda r: r["time_to_first_token_ms"]),
            ("image encode, ms", lambda r: r["image_encode_ms"]), ("audio encode (5 s), ms", lambda r: r["audio_encode_ms"])]
    for label, get in rows:
        lines.append(f"| {label} | {get(b['cpu']):.4g} | {get(b['qnn']):.4g} |")
    return "\n".join(lines) + "\n", whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / "build" / "qnn")
    parser.add_argument("--limit", type=int, default=None, help="the first N items of each held-out set (default: all)")
    parser.add_argument("--jobs", type=int, default=3, help="eval processes at a time")
    parser.add_argument("--part", type=int, default=25, help="items per eval process (finished parts are kept)")
    parser.add_argument("--context", type=int, default=256, help="the QNN bundle's static context")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    bundles = export(args.work, args.context)
    results = {"nodes": nodes(bundles), "eval": evaluate(args.work, bundles, args.limit, args.jobs, args.part),
               "bench": bench(args.work, bundles)}
    text, whole = report(results)
    (args.work / "report.json").write_text(json.dumps(results, indent=1))
    (args.work / "report.md").write_text(text)
    print(text)
    sys.exit(0 if whole else 1)


if __name__ == "__main__":
    main()
