"""bench/quant_peers.py's onnxruntime peers and bench/quality.py's scoring of them (issue 20)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import onnx
import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"bench_{name}"] = module   # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_onnxruntime_peer_swaps_every_layer_linear_and_keeps_the_bundles_table(bundles, tmp_path):
    peers, quality = bench_module("quant_peers"), bench_module("quality")
    fp32, int4 = bundles["gqa4", "fp32"], bundles["gqa4", "int4"]
    out = tmp_path / "ort-default-asym-b32"
    peers.ort_peer(fp32, int4, out, peers.ort_configs()["default-asym-b32"])
    graph = onnx.load(str(out / "decoder.onnx"), load_external_data=False).graph
    linears = [n for n in graph.node if n.op_type == "MatMulNBits" and n.name.startswith("layers.")]
    assert len(linears) == 4 * 3 and all(n.name.endswith("_Q4") and len(n.input) == 4 for n in linears)
    assert all(next(a.i for a in n.attribute if a.name == "accuracy_level") == 4 for n in linears)
    table = onnx.load(str(int4 / "decoder.onnx"), load_external_data=False).graph
    assert [n.input for n in graph.node if n.name in ("embed_tokens", "lm_head")] == \
        [n.input for n in table.node if n.name in ("embed_tokens", "lm_head")]
    ref, peer = quality.score([out], fp32, BENCH / "texts" / "licenses.txt", 300, 1)
    # asymmetric blocks of 32: 4 bits + a float32 scale + a 4-bit zero point per 32 weights (a row
    # of 13 blocks, down_proj's 416 inputs, pads its zero points to 7 bytes: 5.127 here)
    assert peer.bits_linears == pytest.approx(4 + 1 + 0.125, abs=0.003) and ref.ppl_change == 0
    assert 0 < peer.kl < 0.5 and peer.top1_agreement > 0.5 and abs(peer.ppl_change) < 0.5
