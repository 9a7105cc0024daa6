"""Where a decode step's time goes: onnxruntime's profiler on our decoder, per operator class,
with the bytes of weights each class reads per token and the bandwidth that implies.

    python bench/profile_decode.py BUNDLE [--adapter NAME ...] [--tokens 32]

Each variant (no adapter, then each named adapter) runs in its own profiled session: one warm-up
generation, then a measured one whose prefill run is dropped. Classes: base linears (MatMulNBits),
LM head, LoRA (the adapter's MatMuls), attention (GroupQueryAttention) and the rest.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx

import phi4edge.runtime.session as session_module
from phi4edge.bundle import Bundle, open_bundle
from phi4edge.runtime.benchmark import read_bandwidth
from phi4edge.runtime.session import DecoderSession

LORA_OPS = {"MatMul", "DynamicQuantizeMatMul", "Cast", "Add"}   # our LoRA branch (and its Add)


def op_class(name: str, op: str) -> str:
    if name.startswith("lm_head"):
        return "LM head (int4)"
    if op == "MatMulNBits":
        return "base linears (int4)"
    if op in LORA_OPS:
        return "LoRA MatMuls"
    if op == "GroupQueryAttention":
        return "attention (GQA)"
    return "other (norms, SiLU, embed)"


def weight_bytes(bundle: Bundle) -> dict[str, int]:
    """Bytes of decoder initializers read per token, by class (as decode_bytes_per_token counts)."""
    model = onnx.load(str(bundle.file(bundle.manifest.decoder.graph)), load_external_data=False)
    size = {t.name: next((int(e.value) for e in t.external_data if e.key == "length"), 0) for t in model.graph.initializer}
    out: dict[str, int] = defaultdict(int)
    for node in model.graph.node:
        if node.op_type in ("MatMulNBits",):
            out[op_class(node.name, node.op_type)] += sum(size.get(i, 0) for i in node.input[1:])
    return dict(out)


def profile(bundle_path: Path, adapter: str | None, tokens: int, prompt_len: int = 16) -> tuple[dict, int]:
    """Per-class milliseconds per decode step, and the adapter's bytes (0 without one)."""
    prefix = tempfile.mkdtemp(prefix="ortprof-") + "/decode"
    original = session_module.session_options

    def profiled(*args, **kwargs):
        so = original(*args, **kwargs)
        so.enable_profiling, so.profile_file_prefix = True, prefix
        return so
    session_module.session_options = profiled
    try:
        dec = DecoderSession(open_bundle(bundle_path))
    finally:
        session_module.session_options = original
    dec.use_adapter(adapter)
    sizes = {"tensor(int8)": 1, "tensor(float16)": 2}
    adapter_bytes = int(sum(np.prod(v.shape()) * sizes.get(v.data_type(), 4)
                            for v in dec.adapters.load(adapter).values())) if adapter else 0
    prompt = (np.arange(prompt_len) % 97 + 10).astype(np.int64)
    one = np.array([11], np.int64)
    for _ in range(2):                  # warm-up generation, then the measured one
        dec.reserve(prompt_len + tokens + 1)
        dec.forward(prompt)
        for _ in range(tokens):
            dec.forward(one)
    events = json.loads(Path(dec.session.end_profiling()).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    measured = runs[-tokens:]           # the measured generation's decode steps (its prefill dropped)
    ms: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        if any(lo <= e["ts"] <= hi for lo, hi in measured):
            ms[op_class(e["name"].removesuffix("_kernel_time"), e["args"]["op_name"])] += e["dur"] / 1e3 / tokens
    total = sum((hi - lo) for lo, hi in measured) / 1e3 / tokens
    ms["whole step (model_run)"] = total
    return dict(ms), adapter_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--adapter", action="append", default=[])
    ap.add_argument("--tokens", type=int, default=32)
    a = ap.parse_args()
    bundle = open_bundle(a.bundle)
    nbytes = weight_bytes(bundle)
    bandwidth = read_bandwidth().gbs
    result = {"read_bandwidth_gbs": bandwidth, "weight_bytes": nbytes, "variants": {}}
    print(f"read bandwidth {bandwidth:.1f} GB/s; per decode step, means over {a.tokens} steps")
    for adapter in [None] + a.adapter:
        ms, lora_bytes = profile(a.bundle, adapter, a.tokens)
        by = dict(nbytes, **({"LoRA MatMuls": lora_bytes} if adapter else {}))
        result["variants"][adapter or "none"] = {"ms_per_token": ms, "bytes": by}
        print(f"\n  adapter: {adapter or 'none'}")
        for cls, t in sorted(ms.items(), key=lambda kv: -kv[1]):
            b = by.get(cls, 0)
            rate = f"{b / 1e6:8.1f} MB  {b / t / 1e6:6.1f} GB/s" if b else ""
            print(f"    {cls:28s} {t:7.2f} ms  {rate}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
