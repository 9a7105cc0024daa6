"""Decode speed with and without LoRA, adapter sizes and switch latency, on a full-width synthetic
Phi-4-mini (8 layers by default) with a random rank-320 adapter (the size of Phi-4-multimodal's
speech LoRA), in fp32, fp16, int8 and int4 adapter precision. The int4 bundle runs twice: loaded
from the bundle (its adapter bound to the decoder's LoRA inputs) and from a prepacked entry in the
workdir (the adapter in a session of its own, runtime/adapter_sessions.py). All base weights are
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--rank", type=int, default=320)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=11)
    a = ap.parse_args()
    wd = a.workdir
    ckpt, adapter = wd / f"phi4-mini-{a.layers}l", wd / f"lora-r{a.rank}"
    if not ckpt.exists():
        write(ckpt, "phi4-mini", a.layers)
    if not adapter.exists():
        write_peft_adapter(adapter, ckpt, a.rank)
    bundles = {"no-lora": dict(), "lora-fp32": dict(adapters={"speech": adapter}),
               "lora-fp16": dict(adapters={"speech": adapter}, adapter_precision="fp16"),
               "lora-int8": dict(adapters={"speech": adapter}, adapter_precision="int8"),
               "lora-int4": dict(adapters={"speech": adapter}, adapter_precision="int4")}
    for name, kw in bundles.items():
        if not (wd / name).exists():   # hqq: the default's layout, without calibrating on random weights
            export_model(ckpt, wd / name, quant_method="hqq", **kw)
    os.environ[prepacked.ENV] = str(wd / "no-cache")   # every bundle loads its own graphs...
    models = {name: load(wd / name) for name in bundles}
    os.environ[prepacked.ENV] = str(wd / "cache")      # ...but this one, from a prepacked entry
    prepacked.write(open_bundle(wd / "lora-int4"), "decoder", session_options())
    models["prepacked"] = load(wd / "lora-int4")
    before = rss()
    start = time.perf_counter()
    models["prepacked"].load_adapter("speech")   # its own session: built on first use
    session_ms = (time.perf_counter() - start) * 1e3
    after = rss()

    # first use of an adapter: the file is read (memory-mapped) and its tensors bound
    start = time.perf_counter()
    models["lora-fp32"].load_adapter("speech")
    first_load_ms = (time.perf_counter() - start) * 1e3
    models["lora-fp16"].load_adapter("speech")
    models["lora-int8"].load_adapter("speech")
    models["lora-int4"].load_adapter("speech")
    errors = {k: lora_delta_error(models["lora-fp32"], models[k]) for k in ("lora-int8", "lora-int4", "prepacked")}

    runs = {
        "base bundle (no LoRA inputs)": lambda: decode_tokens_per_s(models["no-lora"], a.tokens),
        "LoRA bundle, text-only request": lambda: decode_tokens_per_s(models["lora-fp32"], a.tokens),
        f"rank-{a.rank} adapter active (fp32)": lambda: decode_tokens_per_s(models["lora-fp32"], a.tokens, adapter="speech"),
        f"rank-{a.rank} adapter active (fp16)": lambda: decode_tokens_per_s(models["lora-fp16"], a.tokens, adapter="speech"),
        "int8 LoRA bundle, text-only request": lambda: decode_tokens_per_s(models["lora-int8"], a.tokens),
        f"rank-{a.rank} adapter active (int8)": lambda: decode_tokens_per_s(models["lora-int8"], a.tokens, adapter="speech"),
        f"rank-{a.rank} adapter active (int4, bound)":
            lambda: decode_tokens_per_s(models["lora-int4"], a.tokens, adapter="speech"),
        "prepacked int4 LoRA bundle, text-only": lambda: decode_tokens_per_s(models["prepacked"], a.tokens),
        f"rank-{a.rank} adapter active (int4, own session)":
            lambda: decode_tokens_per_s(models["prepacked"], a.tokens, adapter="speech"),
    }
    samples = interleaved(runs, a.repeats)
    speeds = {k: statistics.median(v) for k, v in samples.items()}
    base_runs = samples["base bundle (no LoRA inputs)"]
    # each round measured every variant back to back: the median of per-round ratios cancels drift
    ratios = {k: statistics.median(y / x for x, y in zip(base_runs, v)) for k, v in samples.items()}
    own = statistics.median(y / x for x, y in zip(samples["prepacked int4 LoRA bundle, text-only"],
                                                  samples[f"rank-{a.rank} adapter active (int4, own session)"]))
    switch = switch_latency_ms(models["lora-fp32"], None, "speech")
    switch_own = switch_latency_ms(models["prepacked"], None, "speech")   # rebinds the KV buffers to the other session
    sizes = {p: (wd / p / "adapters" / "speech.onnx_adapter").stat().st_size for p in bundles if p != "no-lora"}
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {platform.processor() or '?'}, "
        f"{__import__('os').cpu_count()} cores", "layers": a.layers, "rank": a.rank, "decode_tokens": a.tokens,
        "repeats": a.repeats, "decode_tokens_per_s": speeds, "ratio_to_base": ratios,
        "adapter_file_bytes": sizes, "switch_latency_ms_median": switch, "switch_latency_ms_own_session": switch_own,
        "first_adapter_use_ms": first_load_ms,
        "lora_delta_error": errors, "own_session_ratio_to_its_text_only": own,
        "own_session_first_use_ms": session_ms,
        "own_session_rss_added": {k: after[k] - before[k] for k in after} if before and after else None,
    }
    (wd / "adapters.json").write_text(json.dumps(result, indent=2))
    print(f"full-width Phi-4-mini, {a.layers} layers, int4; medians of {a.repeats} interleaved runs of {a.tokens} tokens")
    for k, v in speeds.items():
        print(f"  {k:38s} {v:6.2f} tok/s   {ratios[k]:5.3f}x base (median of per-round ratios)")
    for p, n in sizes.items():
        print(f"  adapter file ({p.split('-')[1]}): {n / 2**20:.1f} MiB")
    print(f"  adapter switch (none <-> speech): {switch:.3f} ms median ({switch_own:.3f} ms between sessions); "
          f"first use (load + bind): {first_load_ms:.1f} ms")
    print(f"  int4 adapter in its own session: {own:.3f}x the same model's text-only decode (median of per-round "
          f"ratios); first use {session_ms:.0f} ms, RSS added {result['own_session_rss_added']}")
    for k, e in errors.items():
        print(f"  {k}: the adapter's change to the logits differs from fp32's by {e:.4f} "
              f"(max abs difference / max abs change, 64-token prompt)")


if __name__ == "__main__":
    main()
