"""`make webgpu-check` / `make browser-check`: the embedded model's bundles on onnxruntime's WebGPU EP
give the CPU's greedy tokens on text, image and audio prompts, natively (onnxruntime-ep-webgpu on a
Vulkan driver: Chromium's SwiftShader here) and in headless Chromium (onnxruntime-web, runtime/web/).

    python -m scripts.webgpu_check native  [--out build/webgpu] [--items 2]
    python -m scripts.webgpu_check browser [--out build/webgpu] [--items 2]

Bundles: the CPU form (GroupQueryAttention, LoRA defaults) and the WebGPU form (export/webgpu.py),
fp32 and int4. Reference: the Python runtime's tokens on the CPU bundle. Each bundle's decoder runs
the docs' plain loop (present fed back as past; LoRA tensors fed as inputs, rank-1 zeros for the
base model) with the encoders' outputs for image/audio prompts; the browser run gets the same
prompt ids and encoder inputs (tokenizer and media preprocessing are not ported to JavaScript).
Prints a table (tokens equal, first-step logit difference, nodes per provider) and exits 1 when a
WebGPU-form bundle's tokens differ from the CPU's. The CPU form's rows are informative: on
SwiftShader they show the GroupQueryAttention kernel fault that the WebGPU form routes around.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort

from phi4edge import load
from phi4edge.bundle import open_bundle
from phi4edge.format import DecoderNames
from phi4edge.providers import CPU, WEBGPU
from phi4edge.runtime import webgpu
from phi4edge.runtime.adapter_file import read_mapped
from phi4edge.runtime.speech import key_bias
from phi4edge.runtime.vision import NEG, position_ids, token_index

from .arm64_check import requests

REPO = Path(__file__).resolve().parents[1]
MAX_NEW = 24
FORMS = {"cpu-form": False, "webgpu-form": True}


def export_bundles(out: Path) -> dict[str, Path]:
    """{'cpu-form-fp32': path, 'webgpu-form-int4': path, ...} of the embedded checkpoint."""
    from phi4edge.export import export_model
    from phi4edge.models import EMBEDDED
    bundles = {}
    for form, on in FORMS.items():
        for precision in ("fp32", "int4"):
            bundles[f"{form}-{precision}"] = export_model(EMBEDDED / "checkpoint", out / "bundles" / f"{form}-{precision}",
                                                          precision=precision, force=True, show_progress=False, webgpu=on)
    return bundles


def prepare(out: Path, items: int) -> list[dict]:
    """Each request's prompt ids, adapter, encoder inputs (saved as raw files for the browser) and
    the Python runtime's greedy tokens on the CPU bundle of each precision."""
    cases_dir = out / "cases"
    cases_dir.mkdir(parents=True, exist_ok=True)
    cases = []
    for precision in ("fp32", "int4"):
        model = load(out / "bundles" / f"cpu-form-{precision}")
        for n, req in enumerate(requests(items)):
            media = {"image": {"images": [req["file"]]}, "audio": {"audios": [req["file"]]}}.get(req["kind"], {})
            result = model.generate(req["prompt"], max_new_tokens=MAX_NEW, **media)
            encoder = None
            if req["kind"] == "image":
                image = model.prepare_image(req["file"])
                bias = np.where(image.patch_mask.reshape(len(image.patch_mask), 1, 1, -1), 0.0, NEG).astype(np.float32)
                inputs = {"pixel_values": image.pixel_values, "position_ids": position_ids(image.patch_mask),
                          "attention_bias": bias, "token_index": token_index(image)}
                encoder = {"graph": "vision", "output": "image_features", "feed": "image_features"}
            elif req["kind"] == "audio":
                mel = model.prepare_audio(req["file"]).features
                inputs = {"audio_features": mel[None].astype(np.float32), "key_bias": key_bias(-(-len(mel) // 8))}
                encoder = {"graph": "speech", "output": "speech_features", "feed": "audio_features"}
            if encoder:
                encoder["inputs"] = {}
                for name, array in inputs.items():
                    array = np.ascontiguousarray(array)
                    file = f"{precision}-{n}-{name}.bin"
                    (cases_dir / file).write_bytes(array.tobytes())
                    encoder["inputs"][name] = {"file": file, "dtype": str(array.dtype), "dims": list(array.shape)}
            cases.append({"name": f"{req['kind']}-{n}", "kind": req["kind"], "precision": precision,
                          "prompt": req["prompt"], "media": {k: [str(f) for f in v] for k, v in media.items()},
                          "ids": result.prompt_token_ids, "adapter": result.adapter, "expected": result.token_ids,
                          "max_new_tokens": MAX_NEW, "encoder": encoder})
    return cases


class Runner:
    """One bundle's graphs on one provider, driven as docs/bundle-format.md describes."""

    def __init__(self, bundle_dir: Path, on_webgpu: bool):
        self.bundle = open_bundle(bundle_dir)
        self.on_webgpu = on_webgpu
        self.sessions: dict[str, ort.InferenceSession] = {}
        self.decoder = self.session("decoder")

    def session(self, kind: str) -> ort.InferenceSession:
        if kind not in self.sessions:
            so = ort.SessionOptions()
            so.log_severity_level = 3
            so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
            path = self.bundle.file(self.bundle.manifest.graphs[kind])
            self.sessions[kind] = webgpu.session(path, so) if self.on_webgpu else \
                ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return self.sessions[kind]

    def nodes(self) -> dict[str, int]:
        """The decoder's nodes by provider."""
        counts: Counter[str] = Counter()
        for sub in self.decoder.get_provider_graph_assignment_info():
            counts[WEBGPU if sub.ep_name == WEBGPU else "CPU"] += len(sub.get_nodes())
        return dict(counts)

    def lora(self, adapter: str | None) -> dict[str, np.ndarray]:
        """Adapter tensors for the LoRA inputs, rank-1 zeros for the rest (the WebGPU EP crashed on
        the rank-0 defaults: a MatMul whose inner dimension is 0)."""
        m = self.bundle.manifest
        tensors = dict(read_mapped(self.bundle.file(m.adapters[adapter].file))[1]) if adapter else {}
        dtype = np.float16 if m.decoder.lora == "fp16" else np.float32
        for i in [*self.decoder.get_inputs(), *self.decoder.get_overridable_initializers()]:
            if i.name.startswith("lora.") and i.name not in tensors:
                tensors[i.name] = np.zeros([1 if isinstance(d, str) else d for d in i.shape], dtype)
        return tensors

    def greedy(self, case: dict, cases_dir: Path) -> tuple[list[int], np.ndarray]:
        cfg, m = self.bundle.manifest.model.config, self.bundle.manifest
        media = {name: np.zeros((0, cfg.hidden_size), np.float32) for name in m.decoder.media}
        if case["encoder"]:
            e = case["encoder"]
            feeds = {name: np.fromfile(cases_dir / s["file"], s["dtype"]).reshape(s["dims"]) for name, s in e["inputs"].items()}
            media[e["feed"]] = self.session(e["graph"]).run([e["output"]], feeds)[0]
        past = {DecoderNames.past(i, k): np.zeros((1, cfg.num_kv_heads, 0, cfg.head_dim), np.float32)
                for i in range(cfg.num_layers) for k in ("key", "value")}
        lora, step, total, tokens, first = self.lora(case["adapter"]), list(case["ids"]), 0, [], None
        names = [o.name for o in self.decoder.get_outputs()]
        for _ in range(case["max_new_tokens"]):
            total += len(step)
            out = dict(zip(names, self.decoder.run(None, {
                "input_ids": np.array([step], np.int64), "attention_mask": np.ones((1, total), np.int64),
                **past, **media, **lora})))
            logits = out["logits"][0, 0]
            first = logits.copy() if first is None else first
            tokens.append(int(np.argmax(logits)))
            if tokens[-1] in m.eos_token_ids:
                break
            past = {DecoderNames.past(i, k): out[DecoderNames.present(i, k)]
                    for i in range(cfg.num_layers) for k in ("key", "value")}
            media = {name: np.zeros((0, cfg.hidden_size), np.float32) for name in media}
            step = [tokens[-1]]
        return tokens, first


def table(rows: list[dict]) -> tuple[str, int]:
    """Markdown table of the rows and the count of WebGPU-form mismatches."""
    lines = ["| bundle | prompt | adapter | tokens | equal to CPU | first-step max abs logit diff | nodes (WebGPU/CPU) |",
             "|---|---|---|---|---|---|---|"]
    bad = 0
    for r in rows:
        equal = r["tokens"] == r["expected"]
        bad += (not equal) and r["bundle"].startswith("webgpu-form")
        diff = "" if r.get("diff") is None else f"{r['diff']:.2g}"
        nodes = f"{r['nodes'].get(WEBGPU, 0)}/{r['nodes'].get('CPU', 0)}" if r.get("nodes") else ""
        shown = r["error"] if r.get("error") else len(r["tokens"])
        lines.append(f"| {r['bundle']} | {r['case']} | {r['adapter'] or 'none'} | {shown} | "
                     f"{'yes' if equal else '**no**'} | {diff} | {nodes} |")
    return "\n".join(lines), bad


def native(out: Path, cases: list[dict], bundles: dict[str, Path]) -> list[dict]:
    rows = []
    for name, path in bundles.items():
        cpu, gpu = Runner(path, False), Runner(path, True)
        for case in (c for c in cases if name.endswith(c["precision"])):
            tokens, logits = gpu.greedy(case, out / "cases")
            _, ref = cpu.greedy(case, out / "cases")
            rows.append({"bundle": name, "case": case["name"], "adapter": case["adapter"], "tokens": tokens,
                         "expected": case["expected"], "diff": float(np.abs(logits - ref).max()), "nodes": gpu.nodes()})
        if name.startswith("webgpu-form"):   # phi4edge's own runtime (PlainDecoder) on WebGPU, from the request
            model = load(path, providers=[WEBGPU])
            nodes = {"CPU" if p == CPU else p: n for p, n in model.node_counts()["decoder"].items()}
            for case in (c for c in cases if name.endswith(c["precision"])):
                result = model.generate(case["prompt"], max_new_tokens=MAX_NEW, **case["media"])
                rows.append({"bundle": f"{name} (phi4edge runtime)", "case": case["name"], "adapter": result.adapter,
                             "tokens": result.token_ids, "expected": case["expected"], "nodes": nodes})
    print(f"native WebGPU EP (onnxruntime {ort.__version__}, onnxruntime-ep-webgpu), Vulkan driver: {webgpu.driver()}")
    return rows


def browser(out: Path, cases: list[dict], bundles: dict[str, Path]) -> list[dict]:
    spec = {"bundles": {name: f"../bundles/{name}/" for name in bundles},
            "cases": [{**c, "bundle": name} for name in bundles for c in cases if name.endswith(c["precision"])]}
    (out / "cases" / "cases.json").write_text(json.dumps(spec))
    result_file = out / "browser.json"
    subprocess.run(["node", str(REPO / "runtime" / "web" / "test" / "check.mjs"), str(out), str(result_file)], check=True)
    result = json.loads(result_file.read_text())
    print(f"onnxruntime-web WebGPU in headless Chromium, adapter: {result['adapter']}")
    nodes = {(p["bundle"]): p["nodes"] for p in result["placements"] if p["graph"] == "decoder"}
    expected = {(c["bundle"], c["name"]): c for c in spec["cases"]}
    return [{"bundle": r["bundle"], "case": r["name"], "adapter": expected[(r["bundle"], r["name"])]["adapter"],
             "tokens": r.get("tokens") or [], "error": r.get("error"), "expected": expected[(r["bundle"], r["name"])]["expected"],
             "nodes": {WEBGPU: nodes.get(r["bundle"], {}).get(WEBGPU, 0),
                       "CPU": nodes.get(r["bundle"], {}).get("CPUExecutionProvider", 0)}} for r in result["cases"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("where", choices=["native", "browser"])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "webgpu")
    parser.add_argument("--items", type=int, default=2, help="the demo's samples plus items - 1 of each held-out set")
    args = parser.parse_args()
    bundles = export_bundles(args.out)
    cases = prepare(args.out, args.items)
    rows = (native if args.where == "native" else browser)(args.out, cases, bundles)
    text, bad = table(rows)
    print(text)
    (args.out / f"{args.where}.md").write_text(text + "\n")
    if bad:
        print(f"{bad} WebGPU-form prompt(s) gave tokens other than the CPU's", file=sys.stderr)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
