"""Runtime behaviour: context limits, stop tokens, sampling, streaming, the CLI contract, no torch."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from phi4edge import load
from phi4edge.cli import main
from phi4edge.errors import BundleError, RequestError
from phi4edge.quant import DEFAULT_BLOCK, DEFAULT_METHOD
from phi4edge.runtime.sampling import SamplingParams

from .conftest import PYTHON


def test_prompt_longer_than_context_is_refused(bundles):
    model = load(bundles["phi3mini", "fp32"])   # context 4096
    with pytest.raises(RequestError, match="4096"):
        model.generate(list(range(5, 405)) * 11)
    result = CliRunner().invoke(main, ["run", str(bundles["phi3mini", "fp32"]), "--no-chat-template",
                                       "--prompt", "one two " * 3000])
    assert result.exit_code != 0 and "context is 4096 tokens" in result.output and "Traceback" not in result.output


def test_answer_is_cut_at_the_context_end(bundles):
    model = load(bundles["phi3mini", "fp32"])
    result = model.generate(list(np.arange(4090) % 390 + 5), max_new_tokens=50, stop_token_ids=set())
    assert len(result.token_ids) == 6 and result.finish_reason == "length"


def test_ids_beyond_the_tokenizer_do_not_break_decoding(bundles):
    """The model's vocabulary (1031) is larger than its tokenizer's (400), as with Phi-4's padding."""
    model = load(bundles["phi4mini", "fp32"])
    pieces = []
    hot = SamplingParams(temperature=50.0, seed=0)   # near-uniform: most draws land past id 400
    result = model.generate(list(range(20, 60)), max_new_tokens=40, sampling=hot, on_text=pieces.append,
                            stop_token_ids=set())
    assert any(t >= model.tokenizer.vocab_size for t in result.token_ids)
    assert "".join(pieces) == result.text


def test_stops_on_an_end_token(bundles):
    model = load(bundles["phi4mini", "fp32"])
    free = model.generate(list(range(20, 60)), max_new_tokens=10).token_ids
    result = model.generate(list(range(20, 60)), max_new_tokens=10, stop_token_ids={free[2]})
    assert result.token_ids == free[:free.index(free[2]) + 1] and result.finish_reason == "stop"


def test_end_tokens_come_from_config_generation_config_and_chat_tokens(bundles):
    manifest = json.loads((bundles["phi4mini", "int4"] / "manifest.json").read_text())
    assert manifest["generation"]["eos_token_ids"] == [0, 4]   # <|endoftext|> and <|end|>


def test_sampling_is_seeded_and_top_k_1_is_greedy(bundles):
    model = load(bundles["phi4mini", "fp32"])
    prompt = list(range(30, 50))
    sample = lambda **kw: model.generate(prompt, max_new_tokens=20, sampling=SamplingParams(**kw)).token_ids
    assert sample(temperature=1.0, seed=1) == sample(temperature=1.0, seed=1)
    assert sample(temperature=1.0, seed=1) != sample(temperature=1.0, seed=2)
    assert sample(temperature=0.7, top_k=1, seed=5) == sample()
    assert sample(temperature=1.0, top_p=1e-6, seed=5) == sample()


def test_cli_run_json_contract(bundles):
    result = subprocess.run([*PYTHON, "-m", "phi4edge.cli", "run", str(bundles["phi4mini", "int4"]),
                             "--prompt", "Explain GQA in one paragraph.", "--max-new-tokens", "5", "--json"],
                            capture_output=True, text=True, check=True)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"text", "token_ids", "prompt_token_ids", "finish_reason", "timings"} <= set(out)
    assert len(out["token_ids"]) <= 5 and out["finish_reason"] in ("stop", "length")
    assert out["timings"]["prefill_ms"] > 0


def test_cli_streams_text(bundles):
    result = CliRunner().invoke(main, ["run", str(bundles["phi4mini", "fp32"]), "--prompt", "hello", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output


def test_inspect_verifies_hashes(bundles, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundles["phi4mini", "int4"], copy)
    ok = CliRunner().invoke(main, ["inspect", str(copy)])
    assert ok.exit_code == 0 and f"int4 ({DEFAULT_METHOD}), block {DEFAULT_BLOCK}" in ok.output and "FAILED" not in ok.output
    with open(copy / "decoder.onnx.data", "r+b") as f:
        f.seek(5000)
        byte = f.read(1)
        f.seek(5000)
        f.write(bytes([byte[0] ^ 0xFF]))
    bad = CliRunner().invoke(main, ["inspect", str(copy)])
    assert bad.exit_code != 0 and "decoder.onnx.data" in bad.output and "sha256 differs" in bad.output


def test_runtime_runs_without_torch(bundles):
    """The runtime must import and generate with torch and transformers unavailable."""
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "from phi4edge import load\n"
        f"r = load({str(bundles['phi4mini', 'int4'])!r}).generate('hi', max_new_tokens=3)\n"
        "assert len(r.token_ids) >= 1 and 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')\n")
    assert subprocess.run([*PYTHON, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "ok"


def test_execution_provider_choice(bundles):
    from phi4edge.runtime.session import resolve_providers
    assert resolve_providers(None) == ["CPUExecutionProvider"]
    assert resolve_providers(["cpu"]) == ["CPUExecutionProvider"]
    with pytest.raises(BundleError, match=r"'nnapi' is not in this onnxruntime build \(available: .*cpu"):
        resolve_providers(["nnapi"])   # Android's: in no desktop build
    result = CliRunner().invoke(main, ["run", str(bundles["phi4mini", "int4"]), "--prompt", "hi", "--provider", "cuda"])
    assert result.exit_code != 0 and "'cuda' is not in this onnxruntime build" in result.output


def test_sessions_do_not_spin_idle_threads():
    """Spinning intra-op threads fight other load on a 2-core laptop or phone (bench/RESULTS.md)."""
    from phi4edge.runtime.session import session_options
    assert session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_stream_steps_carry_token_text_and_logprob(bundles):
    model = load(bundles["phi4mini", "fp32"])
    request: dict = {}
    steps = list(model.stream("Count from three.", max_new_tokens=8, request=request))
    result = model.generate("Count from three.", max_new_tokens=8)
    assert [s.token_id for s in steps] == result.token_ids and "".join(s.text for s in steps) == result.text
    assert [s.finish_reason for s in steps[:-1]] == [None] * (len(steps) - 1) and steps[-1].finish_reason == result.finish_reason
    assert request["prompt_token_ids"] == result.prompt_token_ids and request["adapter"] is None
    rows = model.score(result.prompt_token_ids, result.token_ids).astype(np.float64)
    expected = [row[t] - np.log(np.exp(row - row.max()).sum()) - row.max() for row, t in zip(rows, result.token_ids)]
    assert np.allclose([s.logprob for s in steps], expected, atol=1e-5)
    assert all(s.logprob is None for s in model.stream("Count from three.", max_new_tokens=3, logprobs=False))
