"""`make openvino-check`: the embedded model's bundles on onnxruntime-openvino (OpenVINOExecutionProvider,
device CPU: the only OpenVINO device here) against the CPU, on text, image and audio prompts.

    python -m scripts.openvino_check [--out build/openvino] [--items 2]

onnxruntime-openvino ships its own onnxruntime build (1.24.1, not the project's 1.32), so it lives in
its own venv (build/ov-venv, made when missing) and scripts/openvino_worker.py runs there. Bundles: the
CPU form and the WebGPU form (export/webgpu.py), fp32 and int4, as scripts/webgpu_check.py exports
them. Reference: the Python runtime's greedy tokens on the CPU bundle. Prints a table (OpenVINO tokens
equal to the reference, first-step logit difference from the same build's CPU EP, decoder nodes per
provider; then phi4edge's own runtime, `phi4edge run --provider openvino`, installed in that venv,
on the WebGPU-form bundles, and its refusal of the CPU form) and, for each bundle and adapter
OpenVINO gets wrong, the first node whose OpenVINO output departs from the CPU's and the first
NaN/Inf one, then the two faults on two-node graphs. Exits 1 when a WebGPU-form bundle (the form
that runs on OpenVINO, docs/openvino.md) gives tokens other than the CPU's.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import tomllib

from phi4edge.bundle import open_bundle
from phi4edge.runtime.adapter_file import read_mapped

from .webgpu_check import export_bundles, prepare

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / "build" / "ov-venv"
# onnxruntime-openvino 1.24.1 is the newest on PyPI (Dec 2026); numpy and onnx as constraints.txt pins them
PACKAGES = ["onnxruntime-openvino==1.24.1", "numpy==2.4.6", "onnx==1.23.2"]


def runtime_packages() -> list[str]:
    """phi4edge's own dependencies but onnxruntime, onnx and numpy (PACKAGES gives those), so that
    the runtime itself runs on onnxruntime-openvino's build (phi4edge is then installed --no-deps)."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = [re.split(r"[<>=!~; \[]", d, maxsplit=1)[0] for d in deps]
    return [n for n in names if n.lower() not in ("onnxruntime", "onnx", "numpy")]


def ensure_venv() -> Path:
    """build/ov-venv's interpreter, creating the venv with PACKAGES, the runtime's other dependencies
    (pinned by constraints.txt) and phi4edge itself when it is missing."""
    python = VENV / "bin" / "python"
    stamp = VENV / ".installed"
    want = "\n".join(PACKAGES + runtime_packages())
    if not stamp.exists() or stamp.read_text() != want:
        venv.create(VENV, with_pip=True, clear=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, *PACKAGES], check=True)
        subprocess.run([*pip, "-c", str(REPO / "constraints.txt"), *runtime_packages()], check=True)
        subprocess.run([*pip, "--no-deps", "-e", str(REPO)], check=True)
        stamp.write_text(want)
    return python


def runtime_rows(python: Path, bundles: dict[str, Path], cases: list[dict]) -> list[dict]:
    """phi4edge's own runtime on OpenVINO (`phi4edge run --provider openvino`, run by build/ov-venv's
    interpreter) on the WebGPU-form bundles, from each case's prompt and media; and its one-line
    refusal of a CPU-form bundle."""
    rows = []
    for name, path in bundles.items():
        run = [str(python), "-m", "phi4edge.cli", "run", str(path), "--provider", "openvino", "--json"]
        if name.startswith("cpu-form"):
            out = subprocess.run([*run, "--prompt", "hi"], capture_output=True, text=True)
            print(f"{name}, phi4edge run --provider openvino: exit {out.returncode}: {out.stderr.strip()}")
            continue
        for case in (c for c in cases if name.endswith(c["precision"])):
            media = [a for flag, files in (("--image", case["media"].get("images", [])),
                                           ("--audio", case["media"].get("audios", []))) for f in files for a in (flag, f)]
            out = subprocess.run([*run, "--prompt", case["prompt"], "--max-new-tokens", str(case["max_new_tokens"]), *media],
                                 capture_output=True, text=True, check=True)
            result = json.loads(out.stdout)
            nodes = result["nodes"]["decoder"]
            rows.append({"bundle": f"{name} (phi4edge runtime)", "case": case["name"], "adapter": result["adapter"],
                         "tokens": result["token_ids"], "finite": True, "diff": None,
                         "nodes": {"OpenVINO": nodes.get("OpenVINOExecutionProvider", 0),
                                   "CPU": nodes.get("CPUExecutionProvider", 0), "cpu_ops": {}}})
    return rows


def bundle_spec(path: Path) -> dict:
    b = open_bundle(path)
    m = b.manifest
    cfg = m.model.config
    return {
        "graphs": {kind: str(b.file(file)) for kind, file in m.graphs.items()},
        "layers": cfg.num_layers,
        "kv_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden": cfg.hidden_size,
        "eos": list(m.eos_token_ids),
        "media": list(m.decoder.media),
        "lora_dtype": "float16" if m.decoder.lora == "fp16" else "float32",
    }


def adapter_file(out: Path, name: str, path: Path, adapter: str | None) -> str | None:
    """The adapter's tensors as an .npz the worker reads (its onnxruntime cannot map .onnx_adapter files
    through phi4edge)."""
    if adapter is None:
        return None
    b = open_bundle(path)
    file = out / "adapters" / f"{name}-{adapter}.npz"
    file.parent.mkdir(parents=True, exist_ok=True)
    np.savez(file, **dict(read_mapped(b.file(b.manifest.adapters[adapter].file))[1]))
    return str(file)


def table(rows: list[dict], expected: dict) -> tuple[str, int]:
    """Markdown table of the rows and the count of WebGPU-form mismatches."""
    lines = [
        "| bundle | prompt | adapter | tokens | equal to CPU | logits finite | first-step max abs logit diff "
        "| nodes (OpenVINO/CPU) | on CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    bad = 0
    for r in rows:
        equal = r["tokens"] == expected[(r["bundle"], r["case"])]
        bad += (not equal) and r["bundle"].startswith("webgpu-form")
        diff = "" if r["diff"] is None else f"{r['diff']:.2g}"
        lines.append(
            f"| {r['bundle']} | {r['case']} | {r['adapter'] or 'none'} | {len(r['tokens'])} | {'yes' if equal else '**no**'} | "
            f"{'yes' if r['finite'] else '**NaN**'} | {diff} | {r['nodes'].get('OpenVINO', 0)}/{r['nodes'].get('CPU', 0)} | "
            f"{', '.join(f'{op} x{n}' for op, n in r['nodes']['cpu_ops'].items())} |"
        )
    return "\n".join(lines), bad


def causes_text(causes: dict, repro: dict) -> str:
    lines = [f"- two-node repro (y = x @ A @ B, A [256, r], B [r, 512]), {k}: {v:.3g}" for k, v in repro.items()]
    for bundle, c in causes.items():
        for what, label in (("departs", "first node departing from CPU"), ("non_finite", "first NaN/Inf node")):
            n = c[what]
            if n:
                lines.append(
                    f"- {bundle} ({c['case']}), {label}: {n['op']} `{n['node']}` -> `{n['output']}` "
                    f"(OpenVINO shape {n['openvino_shape']}, CPU {n['cpu_shape']}; inputs {', '.join(n['inputs'])})"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "openvino")
    parser.add_argument("--items", type=int, default=2, help="the demo's samples plus items - 1 of each held-out set")
    args = parser.parse_args()
    python = ensure_venv()
    bundles = export_bundles(args.out)
    cases = prepare(args.out, args.items)
    spec = {
        "cases_dir": str(args.out / "cases"),
        "bundles": {name: bundle_spec(path) for name, path in bundles.items()},
        "cases": [
            {**c, "bundle": name, "adapter_file": adapter_file(args.out, name, path, c["adapter"])}
            for name, path in bundles.items()
            for c in cases
            if name.endswith(c["precision"])
        ],
    }
    (args.out / "spec.json").write_text(json.dumps(spec))
    result_file = args.out / "openvino.json"
    subprocess.run(
        [str(python), str(REPO / "scripts" / "openvino_worker.py"), str(args.out / "spec.json"), str(result_file)], check=True
    )
    result = json.loads(result_file.read_text())
    expected = {(c["bundle"], c["name"]): c["expected"] for c in spec["cases"]}
    expected |= {(f"{bundle} (phi4edge runtime)", name): tokens for (bundle, name), tokens in expected.items()}
    text, bad = table(result["rows"] + runtime_rows(python, bundles, cases), expected)
    header = f"OpenVINOExecutionProvider (device CPU), onnxruntime-openvino {result['onnxruntime']}"
    text = f"{header}\n\n{text}\n\n{causes_text(result['causes'], result['repro'])}"
    print(text)
    (args.out / "openvino.md").write_text(text + "\n")
    if bad:
        print(f"{bad} WebGPU-form prompt(s) gave tokens other than the CPU's on OpenVINO", file=sys.stderr)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
