"""Decode speed with and without LoRA, adapter sizes and switch latency, on a full-width synthetic
Phi-4-mini (8 layers by default) with a random rank-320 adapter (the size of Phi-4-multimodal's
speech LoRA), in fp32, fp16, int8 and int4 adapter precision. The int8 and int4 bundles run twice:
loaded from the bundle (the adapter bound to the decoder's LoRA inputs) and from a prepacked entry in
the workdir (the adapter in a session of its own, runtime/adapter_sessions.py). All base weights are
int4; measurements are interleaved and reported as medians.

    python bench/adapters.py --workdir /tmp/bench-lora            # writes results JSON to the workdir
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_checkpoint import write, write_peft_adapter  # noqa: E402

from phi4edge import load  # noqa: E402
from phi4edge.bundle import open_bundle  # noqa: E402
from phi4edge.export import export_model  # noqa: E402
from phi4edge.runtime import prepacked  # noqa: E402
from phi4edge.runtime.benchmark import decode_tokens_per_s, interleaved, switch_latency_ms  # noqa: E402
from phi4edge.runtime.generate import Model  # noqa: E402
from phi4edge.runtime.memory import rss  # noqa: E402
from phi4edge.runtime.session import session_options  # noqa: E402


def lora_delta_error(fp32: Model, other: Model, prompt_len: int = 64) -> float:
    """How far another precision's adapter effect (logits with the adapter minus without) is from
    fp32's, relative to the effect's size; both bundles share the same int4 base weights."""
    ids = (np.arange(prompt_len) % 97 + 10).tolist()
    deltas = []
    for model in (fp32, other):
        logits = [model.score(ids, [], adapter=name)[0] for name in (None, "speech")]
        deltas.append(logits[1] - logits[0])
    return float(np.abs(deltas[1] - deltas[0]).max() / np.abs(deltas[0]).max())


PRECISIONS = ("fp32", "fp16", "int8", "int4")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--rank", type=int, default=320)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: onnxruntime's)")
    ap.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                    help="adapter precisions to export and measure (int8 and int4 also run in their own sessions)")
    a = ap.parse_args()
    wd = a.workdir
    ckpt, adapter = wd / f"phi4-mini-{a.layers}l", wd / f"lora-r{a.rank}"
    if not ckpt.exists():
        write(ckpt, "phi4-mini", a.layers)
    if not adapter.exists():
        write_peft_adapter(adapter, ckpt, a.rank)
    bundles = {"no-lora": {}} | {f"lora-{p}": dict(adapters={"speech": adapter}, adapter_precision=p) for p in a.precisions}
    for name, kw in bundles.items():
        if not (wd / name).exists():   # hqq: the default's layout, without calibrating on random weights
            export_model(ckpt, wd / name, quant_method="hqq", **kw)
    os.environ[prepacked.ENV] = str(wd / "no-cache")   # every bundle loads its own graphs...
    models = {name: load(wd / name, threads=a.threads) for name in bundles}
    # first use of an adapter: the file is read (memory-mapped) and its tensors bound
    first_use_ms = {}
    for name in bundles:
        if name != "no-lora":
            start = time.perf_counter()
            models[name].load_adapter("speech")
            first_use_ms[name] = (time.perf_counter() - start) * 1e3
    own = [p for p in ("int8", "int4") if p in a.precisions]
    os.environ[prepacked.ENV] = str(wd / "cache")   # ...but int8/int4 bundles load once more from a prepacked entry
    memory = {}
    for p in own:
        prepacked.write(open_bundle(wd / f"lora-{p}"), "decoder", session_options(a.threads))
        models[f"prepacked-{p}"] = load(wd / f"lora-{p}", threads=a.threads)
        before = rss()
        start = time.perf_counter()
        models[f"prepacked-{p}"].load_adapter("speech")   # its own session: built on first use
        first_use_ms[f"{p}, own session"] = (time.perf_counter() - start) * 1e3
        after = rss()
        memory[p] = {k: after[k] - before[k] for k in after} if before and after else None
    errors = {k: lora_delta_error(models["lora-fp32"], m) for k, m in models.items()
              if k not in ("no-lora", "lora-fp32")} if "fp32" in a.precisions else {}

    decode = lambda name, adapter=None: lambda: decode_tokens_per_s(models[name], a.tokens, adapter=adapter)
    runs = {"base bundle (no LoRA inputs)": decode("no-lora")}
    for p in a.precisions:
        runs[f"{p} LoRA bundle, text-only request"] = decode(f"lora-{p}")
        runs[f"rank-{a.rank} adapter active ({p}{', bound' if p in own else ''})"] = decode(f"lora-{p}", "speech")
    for p in own:
        runs[f"prepacked {p} LoRA bundle, text-only"] = decode(f"prepacked-{p}")
        runs[f"rank-{a.rank} adapter active ({p}, own session)"] = decode(f"prepacked-{p}", "speech")
    samples = interleaved(runs, a.repeats)
    speeds = {k: statistics.median(v) for k, v in samples.items()}
    base_runs = samples["base bundle (no LoRA inputs)"]
    # each round measured every variant back to back: the median of per-round ratios cancels drift
    ratios = {k: statistics.median(y / x for x, y in zip(base_runs, v)) for k, v in samples.items()}
    first = f"lora-{a.precisions[0]}"
    switch = {first: switch_latency_ms(models[first], None, "speech")}
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {platform.processor() or '?'}, "
        f"{os.cpu_count()} cores", "layers": a.layers, "rank": a.rank, "decode_tokens": a.tokens, "threads": a.threads,
        "repeats": a.repeats, "decode_tokens_per_s": speeds, "ratio_to_base": ratios,
        "adapter_file_bytes": {p: (wd / p / "adapters" / "speech.onnx_adapter").stat().st_size for p in bundles
                               if p != "no-lora"},
        "first_adapter_use_ms": first_use_ms, "lora_delta_error": errors,
    }
    for p in own:
        switch[f"{p}, own session"] = switch_latency_ms(models[f"prepacked-{p}"], None, "speech")   # rebinds the KV buffers
    if own:
        result["own_session_ratio_to_its_text_only"] = {p: statistics.median(
            y / x for x, y in zip(samples[f"prepacked {p} LoRA bundle, text-only"],
                                  samples[f"rank-{a.rank} adapter active ({p}, own session)"])) for p in own}
        result["own_session_memory_added"] = memory
    result["switch_latency_ms_median"] = switch
    (wd / "adapters.json").write_text(json.dumps(result, indent=2))
    print(f"full-width Phi-4-mini, {a.layers} layers, int4; medians of {a.repeats} interleaved runs of {a.tokens} tokens")
    for k, v in speeds.items():
        print(f"  {k:48s} {v:6.2f} tok/s   {ratios[k]:5.3f}x base (median of per-round ratios)")
    for k in ("adapter_file_bytes", "first_adapter_use_ms", "switch_latency_ms_median", "lora_delta_error",
              "own_session_ratio_to_its_text_only", "own_session_memory_added"):
        if k in result:
            print(f"  {k}: {json.dumps(result[k])}")


if __name__ == "__main__":
    main()
