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

from phi4edge import load
from phi4edge.errors import BundleError, CheckpointError
from phi4edge.export import export_model
from phi4edge.format import WEBGPU_DECODER
from phi4edge.models import EMBEDDED
from phi4edge.runtime.plain_decoder import PlainDecoder
from scripts.webgpu_check import Runner, export_bundles, prepare

from .conftest import PYTHON
from .independent_reader import Reader
from .serving import AUDIO, IMAGE, SPEC, TEXT_ANSWER, TEXT_PROMPT

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


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_runtime_runs_the_webgpu_form(work, precision):
    """phi4edge's own runtime (PlainDecoder: present fed back as past, LoRA fed every call) gives
    the CPU form's answers on text, image and audio, and the prompt cache's rewind to a shorter
    shared prefix gives a fresh prefill's answer."""
    _, bundles, _ = work
    cpu, plain = load(bundles[f"cpu-form-{precision}"]), load(bundles[f"webgpu-form-{precision}"])
    assert isinstance(plain.decoder, PlainDecoder) and not isinstance(cpu.decoder, PlainDecoder)
    asks = [{"prompt": TEXT_PROMPT},
            {"prompt": SPEC["image"]["prompt"], "images": [IMAGE]},
            {"prompt": SPEC["audio"]["prompt"], "audios": [AUDIO]}]
    for ask in asks:
        ours, theirs = plain.generate(max_new_tokens=24, **ask), cpu.generate(max_new_tokens=24, **ask)
        assert ours.token_ids == theirs.token_ids and ours.adapter == theirs.adapter, ask
    assert plain.generate(TEXT_PROMPT, 24).text == TEXT_ANSWER

    def turn(prompt: str, reuse: bool) -> tuple[list[int], int]:
        info: dict = {}
        steps = list(plain.stream(None, 12, messages=[{"role": "user", "content": prompt}], reuse_prefix=reuse,
                                  request=info, logprobs=False))
        return [s.token_id for s in steps], info["timings"]["cached_tokens"]

    turn("Count from three to nine.", reuse=True)
    rewound, cached = turn(TEXT_PROMPT, reuse=True)   # shares "Count from three to" and is cut back to it
    assert 0 < cached < len(plain.encode(TEXT_PROMPT))
    assert rewound == turn(TEXT_PROMPT, reuse=False)[0] == cpu.generate(TEXT_PROMPT, 12).token_ids
    with pytest.raises(BundleError, match="last position's logits only"):   # no logits_to_keep in this form
        plain.generate(TEXT_PROMPT, 4, prompt_lookup=2)


def test_independent_reader_runs_the_webgpu_form(work):
    """docs/bundle-format.md's rules for `webgpu-decoder` are enough for a reader written from it."""
    _, bundles, _ = work
    path = bundles["webgpu-form-fp32"]
    ours, theirs = load(path), Reader(path)
    ids = ours.encode(TEXT_PROMPT)
    for adapter in (None, "vision", "speech"):
        assert theirs.generate(ids, 12, adapter) == ours.generate(ids, max_new_tokens=12, adapter=adapter).token_ids


@pytest.mark.parametrize("provider", ["openvino", "webgpu"])
def test_providers_that_miscompute_the_cpu_form_are_refused(work, provider):
    """OpenVINO (NaN logits) and the WebGPU EP (a crash, wrong prefill attention) compute the CPU
    form wrongly: the runtime refuses them for it in one line naming the fix, whether or not the
    provider is installed, and exits non-zero from the CLI."""
    _, bundles, _ = work
    with pytest.raises(BundleError, match=f"execution provider '{provider}' cannot run this bundle's decoder: .*"
                                          "export with --target webgpu"):
        load(bundles["cpu-form-int4"], providers=[provider])
    out = subprocess.run([*PYTHON, "-m", "phi4edge.cli", "run", str(bundles["cpu-form-int4"]), "--prompt", "hi",
                          "--provider", provider], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and out.stdout == ""
    assert f"execution provider '{provider}' cannot run this bundle's decoder" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


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


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_int8_lora_has_no_webgpu_form(tmp_path, precision):
    with pytest.raises(CheckpointError, match=f"--adapter-precision {precision} has no WebGPU form"):
        export_model(EMBEDDED / "checkpoint", tmp_path / "b", adapter_precision=precision, webgpu=True, show_progress=False)
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
