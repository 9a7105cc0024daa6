"""The OpenVINO half of `make openvino-check` (scripts/openvino_check.py), run by build/ov-venv's
interpreter: onnxruntime-openvino ships its own onnxruntime build, so this imports only numpy, onnx
and onnxruntime, never phi4edge.

    build/ov-venv/bin/python scripts/openvino_worker.py SPEC.json RESULT.json

SPEC (written by openvino_check.py): bundles (decoder and encoder paths, cache shape, eos ids, media
input names) and cases (prompt ids, adapter tensors file, encoder inputs as raw files). Each case runs
greedily on OpenVINOExecutionProvider (device CPU) and on this build's CPUExecutionProvider; RESULT has
the OpenVINO tokens, the first-step logit difference, whether any logit was NaN, the decoder's nodes
per provider and, for each bundle and adapter whose OpenVINO answer was not finite or not the CPU
EP's, the first node whose OpenVINO output departs from the CPU's and the first non-finite one; and
the two faults those nodes show, each on a two-node graph (`repro`).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

OPENVINO = "OpenVINOExecutionProvider"
PROVIDERS = {"openvino": [(OPENVINO, {"device_type": "CPU"})], "cpu": ["CPUExecutionProvider"]}


def session(path: str, where: str) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    return ort.InferenceSession(path, so, providers=PROVIDERS[where])


def nodes(s: ort.InferenceSession) -> dict:
    """The graph's nodes by provider, and the operator types the CPU runs."""
    counts: Counter[str] = Counter()
    on_cpu: Counter[str] = Counter()
    for sub in s.get_provider_graph_assignment_info():
        counts["OpenVINO" if sub.ep_name == OPENVINO else "CPU"] += len(sub.get_nodes())
        if sub.ep_name != OPENVINO:
            on_cpu.update(n.op_type for n in sub.get_nodes())
    return {**counts, "cpu_ops": dict(on_cpu)}


def repro(folder: Path) -> dict[str, float]:
    """The OpenVINO faults in isolation, on a two-node LoRA pair y = x @ A @ B (x [1, 9, 256] ones):
    A [256, 0], B [0, 512] as initializer defaults (the answer is zeros); the same inputs fed rank-1
    tensors (A ones, B twos: 512 everywhere); and A, B as plain inputs without defaults fed rank 0
    (the WebGPU form's inputs as the runtime feeds them for the base model: zeros)."""
    h, x = onnx.helper, np.ones((1, 9, 256), np.float32)
    rank1 = {"A": np.ones((256, 1), np.float32), "B": np.full((1, 512), 2, np.float32)}
    rank0 = {"A": np.zeros((256, 0), np.float32), "B": np.zeros((0, 512), np.float32)}
    found = {}
    for defaults in (True, False):
        inits = (
            [h.make_tensor(n, onnx.TensorProto.FLOAT, d, []) for n, d in (("A", [256, 0]), ("B", [0, 512]))] if defaults else []
        )
        graph = h.make_graph(
            [h.make_node("MatMul", ["x", "A"], ["xa"]), h.make_node("MatMul", ["xa", "B"], ["y"])],
            "lora",
            [
                h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 9, 256]),
                h.make_tensor_value_info("A", onnx.TensorProto.FLOAT, [256, "r"]),
                h.make_tensor_value_info("B", onnx.TensorProto.FLOAT, ["r", 512]),
            ],
            [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 9, 512])],
            inits,
        )
        path = folder / "rank0-lora.onnx"
        onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=10), str(path))
        for where in PROVIDERS:
            s = session(str(path), where)
            if defaults:
                found[f"{where}, initializer defaults rank 0: max |y - 0|"] = float(np.abs(s.run(None, {"x": x})[0]).max())
                found[f"{where}, initializer defaults fed rank 1: max |y - 512|"] = float(
                    np.abs(s.run(None, {"x": x, **rank1})[0] - 512).max()
                )
            else:
                found[f"{where}, plain inputs fed rank 0: max |y - 0|"] = float(np.abs(s.run(None, {"x": x, **rank0})[0]).max())
        path.unlink()
    return found


class Runner:
    """One bundle's graphs on one provider, driven as docs/bundle-format.md describes (the plain loop
    of scripts/webgpu_check.py: present fed back as past, adapter tensors fed by name)."""

    def __init__(self, bundle: dict, where: str):
        self.bundle, self.where = bundle, where
        self.sessions: dict[str, ort.InferenceSession] = {}
        self.decoder = self.session("decoder")

    def session(self, graph: str) -> ort.InferenceSession:
        if graph not in self.sessions:
            self.sessions[graph] = session(self.bundle["graphs"][graph], self.where)
        return self.sessions[graph]

    def lora(self, adapter_file: str | None) -> dict[str, np.ndarray]:
        """The adapter's tensors; rank-1 zeros for LoRA inputs without a default (WebGPU form)."""
        tensors = dict(np.load(adapter_file)) if adapter_file else {}
        for i in self.decoder.get_inputs():
            if i.name.startswith("lora.") and i.name not in tensors:
                tensors[i.name] = np.zeros([1 if isinstance(d, str) else d for d in i.shape], self.bundle["lora_dtype"])
        return tensors

    def first_feeds(self, case: dict, cases_dir: Path) -> dict[str, np.ndarray]:
        """The decoder's feeds for the prompt (the first step)."""
        b = self.bundle
        media = {name: np.zeros((0, b["hidden"]), np.float32) for name in b["media"]}
        e = case["encoder"]
        if e:
            feeds = {name: np.fromfile(cases_dir / s["file"], s["dtype"]).reshape(s["dims"]) for name, s in e["inputs"].items()}
            media[e["feed"]] = self.session(e["graph"]).run([e["output"]], feeds)[0]
        past = {
            f"past_key_values.{i}.{k}": np.zeros((1, b["kv_heads"], 0, b["head_dim"]), np.float32)
            for i in range(b["layers"])
            for k in ("key", "value")
        }
        ids = np.array([case["ids"]], np.int64)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids), **past, **media, **self.lora(case.get("adapter_file"))}

    def greedy(self, case: dict, cases_dir: Path) -> tuple[list[int], np.ndarray]:
        b, names = self.bundle, [o.name for o in self.decoder.get_outputs()]
        feeds, tokens, first = self.first_feeds(case, cases_dir), [], None
        for _ in range(case["max_new_tokens"]):
            out = dict(zip(names, self.decoder.run(None, feeds)))
            logits = out["logits"][0, -1]
            first = logits.copy() if first is None else first
            tokens.append(int(np.argmax(logits)))
            if tokens[-1] in b["eos"] or not np.isfinite(logits).all():
                break
            total = feeds["attention_mask"].shape[1] + 1
            feeds.update(
                {f"past_key_values.{i}.{k}": out[f"present.{i}.{k}"] for i in range(b["layers"]) for k in ("key", "value")}
            )
            feeds.update({name: np.zeros((0, b["hidden"]), np.float32) for name in b["media"]})
            feeds["input_ids"], feeds["attention_mask"] = np.array([[tokens[-1]]], np.int64), np.ones((1, total), np.int64)
        assert first is not None
        return tokens, first


def first_bad_nodes(runner: dict[str, Runner], case: dict, cases_dir: Path) -> dict[str, dict | None]:
    """The first node (graph order) whose OpenVINO output departs from the CPU's (shape, or max abs
    difference over 1e-3 + 5% of the CPU output's largest magnitude: int4 MatMulNBits differs by ~1%
    between the two, a fault by orders of magnitude), and the first whose OpenVINO output is NaN or Inf, on the
    prompt's step fed the same (CPU-encoded) inputs, with every node output made a graph output in a copy beside the decoder."""
    path = Path(runner["cpu"].bundle["graphs"]["decoder"])
    model = onnx.load(str(path), load_external_data=False)
    known = {o.name for o in model.graph.output}
    order = []
    for node in model.graph.node:
        for name in node.output:
            if name and name not in known:
                model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
                known.add(name)
                order.append((node, name))
    copy = path.with_name(path.stem + ".all-outputs.onnx")
    onnx.save(model, str(copy))
    feeds, outs = runner["cpu"].first_feeds(case, cases_dir), {}  # the CPU's encoder output for both
    for where in runner:
        s = session(str(copy), where)
        outs[where] = dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))
    found: dict[str, dict | None] = {"departs": None, "non_finite": None}
    for node, name in order:
        a, b = outs["cpu"][name], outs["openvino"][name]
        shown = {
            "node": node.name,
            "op": node.op_type,
            "output": name,
            "cpu_shape": list(a.shape),
            "openvino_shape": list(b.shape),
            "inputs": list(node.input),
        }
        with np.errstate(invalid="ignore", over="ignore"):
            off = (
                a.shape != b.shape or a.dtype.kind == "f" and a.size and not np.abs(a - b).max() <= 1e-3 + 0.05 * np.abs(a).max()
            )
        if found["departs"] is None and off:
            found["departs"] = shown
        if found["non_finite"] is None and b.dtype.kind == "f" and not np.isfinite(b).all():
            found["non_finite"] = shown
    copy.unlink()
    return found


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    cases_dir = Path(spec["cases_dir"])
    rows, causes = [], {}
    for name, bundle in spec["bundles"].items():
        runner = {where: Runner(bundle, where) for where in PROVIDERS}
        counts = nodes(runner["openvino"].decoder)
        for case in (c for c in spec["cases"] if c["bundle"] == name):
            tokens, logits = runner["openvino"].greedy(case, cases_dir)
            cpu_tokens, ref = runner["cpu"].greedy(case, cases_dir)
            finite = bool(np.isfinite(logits).all())
            rows.append(
                {
                    "bundle": name,
                    "case": case["name"],
                    "adapter": case["adapter"],
                    "tokens": tokens,
                    "cpu_ep_tokens": cpu_tokens,
                    "finite": finite,
                    "nodes": counts,
                    "diff": float(np.abs(logits - ref).max()) if finite else None,
                }
            )
            key = f"{name}, adapter {case['adapter'] or 'none'}"
            if (not finite or tokens != cpu_tokens) and key not in causes:
                causes[key] = {"case": case["name"], **first_bad_nodes(runner, case, cases_dir)}
    Path(sys.argv[2]).write_text(
        json.dumps({"onnxruntime": ort.__version__, "rows": rows, "causes": causes, "repro": repro(cases_dir)})
    )


if __name__ == "__main__":
    main()
