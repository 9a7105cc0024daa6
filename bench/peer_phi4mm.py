"""Text-only decode on a Phi-4-multimodal checkpoint (original `Phi4MMForCausalLM` layout, e.g. from
`synthetic_checkpoint.py --preset phi4-multimodal`): our bundle against onnxruntime-genai's model
builder output for the same checkpoint, interleaved in one process; medians and ratios ours/peer.
Also times our bundle with its speech (rank 320) and vision (rank 256) adapters active, and
optionally a second bundle of ours whose adapters are int8 (`--ours-int8`).

    python bench/peer_phi4mm.py --checkpoint CKPT --ours OURS --peer PEER_DIR \\
        --peer-python /tmp/peer/venv/bin/python [--ours-int8 OURS_INT8]   # builds what is missing

How the peer is built: onnxruntime-genai's builder maps `Phi4MMForCausalLM` to its Phi4MMModel,
which loads the checkpoint with transformers' AutoModelForCausalLM (remote code) and reads PEFT
LoRA layers. The published checkpoint ships that remote code; a synthetic one has none, so
`peer_view()` writes a folder of symlinks to the shards plus a minimal loader (a Phi3ForCausalLM
with the checkpoint's `vision_lora`/`speech_lora` injected by PEFT, as the remote code does) and
runs the builder with `hf_remote=true`. The builder (0.18.0) copies the *vision* LoRA into the
decoder as constant int4 MatMul pairs beside every base linear, so every token, text-only
included, pays for them; the speech LoRA is dropped.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from peer_worker import Genai, ids  # noqa: E402

from phi4edge import load  # noqa: E402
from phi4edge.export import export_model  # noqa: E402
from phi4edge.runtime.benchmark import decode_tokens_per_s, interleaved  # noqa: E402

# The minimal stand-in for the checkpoint's remote code: just what the builder reads (config class
# with model_type phi4mm; a causal LM whose four layer linears are PEFT LoRA layers named "vision"
# and "speech"). Injected into the inner model, whose module names the config's regex matches.
CONFIG_PY = '''from transformers import Phi3Config


class Phi4MMConfig(Phi3Config):
    model_type = "phi4mm"
'''
MODELING_PY = '''from peft import LoraConfig, inject_adapter_in_model
from transformers import Phi3ForCausalLM

from .configuration_phi4mm import Phi4MMConfig


class Phi4MMForCausalLM(Phi3ForCausalLM):
    config_class = Phi4MMConfig

    def __init__(self, config):
        super().__init__(config)
        for name in ("vision", "speech"):
            lc = getattr(config, name + "_lora")
            inject_adapter_in_model(LoraConfig(r=lc["r"], lora_alpha=lc["lora_alpha"], target_modules=lc["layer"],
                                               lora_dropout=lc.get("dp", 0.0)), self.model, adapter_name=name)
'''


def peer_view(checkpoint: Path, view: Path) -> Path:
    """The checkpoint as the builder can load it: shards symlinked, config with an auto_map."""
    view.mkdir(parents=True, exist_ok=True)
    for f in checkpoint.iterdir():
        if f.name != "config.json" and not (view / f.name).exists():
            (view / f.name).symlink_to(f.resolve())
    cfg = json.loads((checkpoint / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_phi4mm.Phi4MMConfig",
                       "AutoModelForCausalLM": "modeling_phi4mm.Phi4MMForCausalLM"}
    (view / "config.json").write_text(json.dumps(cfg, indent=2))
    (view / "configuration_phi4mm.py").write_text(CONFIG_PY)
    (view / "modeling_phi4mm.py").write_text(MODELING_PY)
    return view


def build_peer(checkpoint: Path, out: Path, python: str) -> dict:
    """Run the builder (int4, CPU) under /usr/bin/time; returns its wall time and peak RSS."""
    view = peer_view(checkpoint, out.with_name(out.name + "-input"))
    cmd = ["/usr/bin/time", "-v", python, "-m", "onnxruntime_genai.models.builder", "-i", str(view), "-o", str(out),
           "-p", "int4", "-e", "cpu", "--extra_options", "hf_remote=true"]
    start = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True)
    (out.with_name(out.name + "-build.log")).write_text(run.stdout + run.stderr)
    if run.returncode:
        raise SystemExit(f"the onnxruntime-genai builder failed (log: {out.name}-build.log):\n{run.stderr[-3000:]}")
    rss = next(int(x.split()[-1]) for x in run.stderr.splitlines() if "Maximum resident set size" in x)
    return {"wall_s": time.perf_counter() - start, "peak_rss_gb": rss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--ours", type=Path, required=True)
    ap.add_argument("--peer", type=Path, required=True)
    ap.add_argument("--peer-python", default="/tmp/peer/venv/bin/python", help="python of the builder's venv")
    ap.add_argument("--ours-int8", type=Path, help="also time this bundle of ours with int8 adapters")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    built = {}
    if not a.ours.exists():
        start = time.perf_counter()
        export_model(a.checkpoint, a.ours)
        built["phi4edge_export_s"] = time.perf_counter() - start
    if a.ours_int8 and not a.ours_int8.exists():
        export_model(a.checkpoint, a.ours_int8, adapter_precision="int8")
    if not a.peer.exists():
        built["peer_build"] = build_peer(a.checkpoint, a.peer, a.peer_python)
    ours, peer = load(a.ours), Genai(str(a.peer), os.cpu_count())
    runs = {"phi4edge text-only": lambda: decode_tokens_per_s(ours, a.tokens),
            "onnxruntime-genai": lambda: peer.run(ids(16), a.tokens)["decode_tokens_per_s"],
            "phi4edge + speech (r320)": lambda: decode_tokens_per_s(ours, a.tokens, adapter="speech"),
            "phi4edge + vision (r256)": lambda: decode_tokens_per_s(ours, a.tokens, adapter="vision")}
    bundles = [ours]
    if a.ours_int8:
        int8 = load(a.ours_int8)
        bundles.append(int8)
        runs |= {"phi4edge int8 LoRA text-only": lambda: decode_tokens_per_s(int8, a.tokens),
                 "phi4edge int8 LoRA + speech": lambda: decode_tokens_per_s(int8, a.tokens, adapter="speech"),
                 "phi4edge int8 LoRA + vision": lambda: decode_tokens_per_s(int8, a.tokens, adapter="vision")}
    for model in bundles:
        for name in ("speech", "vision"):
            model.load_adapter(name)   # first use maps the file: keep it out of the timings
    samples = interleaved(runs, a.repeats)

    def ratio(x: str, y: str) -> float:   # median of per-round ratios: each round ran both back to back
        return statistics.median(p / q for p, q in zip(samples[x], samples[y]))
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "layers": json.loads((a.checkpoint / "config.json").read_text())["num_hidden_layers"],
        "tokens": a.tokens, "repeats": a.repeats, **built,
        "decode_tokens_per_s": {k: statistics.median(v) for k, v in samples.items()},
        "ours_text_to_peer": ratio("phi4edge text-only", "onnxruntime-genai"),
        "speech_to_text": ratio("phi4edge + speech (r320)", "phi4edge text-only"),
        "vision_to_text": ratio("phi4edge + vision (r256)", "phi4edge text-only"),
        "speech_to_peer": ratio("phi4edge + speech (r320)", "onnxruntime-genai"),
    }
    if a.ours_int8:
        result |= {"int8_speech_to_text": ratio("phi4edge int8 LoRA + speech", "phi4edge text-only"),
                   "int8_vision_to_text": ratio("phi4edge int8 LoRA + vision", "phi4edge text-only"),
                   "int8_text_to_text": ratio("phi4edge int8 LoRA text-only", "phi4edge text-only")}
    for k, v in result["decode_tokens_per_s"].items():
        print(f"  {k:28s} {v:6.2f} tok/s")
    print(f"  ours text-only / onnxruntime-genai: {result['ours_text_to_peer']:.3f}x; speech / text-only: "
          f"{result['speech_to_text']:.3f}x; vision / text-only: {result['vision_to_text']:.3f}x; "
          f"ours + speech / onnxruntime-genai: {result['speech_to_peer']:.3f}x (medians of per-round ratios)")
    if a.ours_int8:
        print(f"  int8 LoRA bundle vs text-only: text {result['int8_text_to_text']:.3f}x, speech "
              f"{result['int8_speech_to_text']:.3f}x, vision {result['int8_vision_to_text']:.3f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
