"""The decoder's WebGPU form (export/webgpu.py) computes what the CPU form computes: on the CPU, the
embedded model's WebGPU-form bundles give the Python runtime's greedy tokens on text, image and
audio prompts, with the same logits; and the graph holds none of the patterns onnxruntime's WebGPU
EP got wrong. (On WebGPU itself: `make webgpu-check`, `make browser-check`, docs/webgpu.md.)"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

from phi4edge.errors import CheckpointError
from phi4edge.export import export_model
from phi4edge.format import WEBGPU_DECODER
from phi4edge.models import EMBEDDED
from scripts.webgpu_check import Runner, export_bundles, prepare

# first-step logits of the two forms on the CPU, measured: fp32 within 3e-6; int4 within 0.009
# (MatMulNBits quantises its activations to int8 per block, so 1e-6 input differences can move a
# value by one step)
BOUND = {"fp32": 1e-4, "int4": 0.05}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    out = tmp_path_factory.mktemp("webgpu")
    bundles = export_bundles(out)
    return out, bundles, prepare(out, items=1)


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_webgpu_form_gives_cpu_tokens_and_logits(work, precision):
    out, bundles, cases = work
    cpu_form, webgpu_form = (Runner(bundles[f"{form}-{precision}"], on_webgpu=False) for form in ("cpu-form", "webgpu-form"))
    cases = [c for c in cases if c["precision"] == precision]
    assert {c["kind"] for c in cases} == {"text", "image", "audio"}
    assert {c["adapter"] for c in cases} == {None, "vision", "speech"}
    for case in cases:
        tokens, logits = webgpu_form.greedy(case, out / "cases")
        ref_tokens, ref_logits = cpu_form.greedy(case, out / "cases")
        assert ref_tokens == case["expected"], case["name"]   # the plain loop is the Python runtime's
        assert tokens == case["expected"], case["name"]
        assert np.abs(logits - ref_logits).max() < BOUND[precision], case["name"]


def test_webgpu_form_graph(work):
    _, bundles, _ = work
    path = bundles["webgpu-form-int4"]
    graph = onnx.load(str(path / "decoder.onnx"), load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    assert "GroupQueryAttention" not in ops and "ScatterND" not in ops
    assert not any(n.op_type == "Split" and any(a.name == "num_outputs" for a in n.attribute) for n in graph.node)
    inits = {i.name for i in graph.initializer}
    lora = [i.name for i in graph.input if i.name.startswith("lora.")]
    assert lora and not inits & set(lora)   # plain inputs: onnxruntime-web feeds nothing else
    assert WEBGPU_DECODER in (path / "manifest.json").read_text()
    cpu_graph = onnx.load(str(bundles["cpu-form-int4"] / "decoder.onnx"), load_external_data=False).graph
    assert "GroupQueryAttention" in {n.op_type for n in cpu_graph.node}
    assert WEBGPU_DECODER not in (bundles["cpu-form-int4"] / "manifest.json").read_text()


def test_int8_lora_has_no_webgpu_form(tmp_path):
    with pytest.raises(CheckpointError, match="int8 has no WebGPU form"):
        export_model(EMBEDDED / "checkpoint", tmp_path / "b", adapter_precision="int8", webgpu=True, show_progress=False)
    assert not (tmp_path / "b").exists()


def test_webgpu_without_adapter_is_an_error_not_a_cpu_run(work):
    """Without a GPU (and without the opt-in to a software adapter) there is no WebGPU device: a
    one-line error naming what to do, never a session that quietly runs on the CPU."""
    _, bundles, _ = work
    code = ("import onnxruntime as ort\nfrom phi4edge.errors import BundleError\nfrom phi4edge.runtime import webgpu\n"
            f"try:\n    webgpu.session({str(bundles['webgpu-form-fp32'] / 'decoder.onnx')!r}, ort.SessionOptions())\n"
            "except BundleError as e:\n    print(e)\n")
    env = {"PATH": "/usr/bin:/bin", "VK_ICD_FILENAMES": "/nonexistent.json"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    line = out.stdout.strip()
    assert out.returncode == 0 and "\n" not in line, out.stderr
    assert line.startswith("execution provider 'webgpu' needs onnxruntime-ep-webgpu") or \
        line.startswith("WebGPU: onnxruntime lists no GPU"), line
