"""Mixed precision (quant/mixed.py, `phi4edge export --bits-budget`): the int8 linears are those the
calibration text says are most sensitive, the bundle's stored bits match the accounting and the
budget, and the runtime and the independent reader run the result."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from phi4edge import load
from phi4edge.bundle import read_tokenizer
from phi4edge.cli import main
from phi4edge.errors import Phi4EdgeError
from phi4edge.export import export_model
from phi4edge.export.calibrate import Calibration, calibration_ids, default_budget, tables
from phi4edge.format import Manifest
from phi4edge.models.checkpoint import Checkpoint
from phi4edge.models.config import load_config
from phi4edge.models.phi3 import LAYER_LINEARS, Phi3Weights, linear_shapes
from phi4edge.quant import BITS_BUDGET, QuantConfig
from phi4edge.quant.int4 import quantize_int4
from phi4edge.quant.mixed import base, int8_block

from .checkpoints import WORDS
from .independent_reader import Reader
from .serving import embedded_bundle  # noqa: F401

BUDGET = 5.6   # the phi4mini fixture (hidden 256, vocab 1031) at rtn b32 is 5.0 bits/weight: room for a few
RTN = {"quant_method": "rtn", "block_size": 32, "head": "int4"}   # recomputed here with onnxruntime's own packer


def stored(bundle) -> tuple[dict[str, tuple[int, int, int]], int]:
    """(quantised node -> (bits, block_size, stored bytes of its initializers), bits of every quantised
    initializer counted once: the tied table's once), from the graph alone."""
    model = onnx.load(str(bundle / "decoder.onnx"))
    nbytes = {t.name: numpy_helper.to_array(t).nbytes for t in model.graph.initializer}
    out, used = {}, set()
    for node in model.graph.node:
        if node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
            attrs = {a.name: a.i for a in node.attribute}
            out[node.name] = (attrs["bits"], attrs["block_size"], sum(nbytes.get(i, 0) for i in node.input))
            used |= set(node.input) & set(nbytes)
    return out, 8 * sum(nbytes[i] for i in used)


@pytest.fixture(scope="module")
def mixed(checkpoints, tmp_path_factory):
    return export_model(checkpoints["phi4mini"], tmp_path_factory.mktemp("mixed") / "b", bits_budget=BUDGET,
                        show_progress=False, **RTN)


def test_int8_linears_are_the_most_sensitive_within_the_budget(checkpoints, mixed):
    """Recomputed here: each linear's output error tr(E H E^T) with onnxruntime's int4 packer (rtn) and
    the calibration Hessians, and its bits from the graph; greedy by error per extra bit must give
    the manifest's int8 set, and the bundle's bits per weight stay within the budget."""
    folder = checkpoints["phi4mini"]
    cfg = load_config(folder)
    weights = Phi3Weights(Checkpoint(folder), cfg)
    cal = Calibration(cfg, weights, calibration_ids(read_tokenizer(folder / "tokenizer.json", Phi4EdgeError)))
    graph, total = stored(mixed)
    overrides = Manifest.read(mixed).quantization.overrides or {}
    assert overrides, "the budget leaves room for at least one int8 linear"
    ratio, extra = {}, {}
    for i in range(cfg.num_layers):
        for module in LAYER_LINEARS:
            name = f"layers.{i}.{module.split('.')[-1]}"
            w, h = weights.linear(i, module), cal.hessian(name)
            packed, scales = quantize_int4(w, 32)
            q = ((np.stack([packed & 15, packed >> 4], -1).reshape(len(w), -1, 32) - 8.0)
                 * scales[..., None]).reshape(len(w), -1)[:, :w.shape[1]]
            e = w - q
            bits, block, nbytes = graph[name]
            assert (bits, block) == ((8, overrides[name].block_size) if name in overrides else (4, 32))
            int4_bytes = packed.nbytes + scales.nbytes
            blocks8 = math.ceil(w.shape[1] / int8_block(w.shape[1], 32))   # the documented block rule
            int8_bytes = nbytes if name in overrides else w.shape[0] * blocks8 * (int8_block(w.shape[1], 32) + 4)
            extra[name] = 8 * (int8_bytes - int4_bytes)
            ratio[name] = float(np.sum((e @ h) * e)) / extra[name]
    params = sum(math.prod(weights.linear(0, m).shape) for m in LAYER_LINEARS) * cfg.num_layers \
        + cfg.vocab_size * cfg.hidden_size
    room, chosen = BUDGET * params - (total - sum(extra[n] for n in overrides)), set()
    for name in sorted(ratio, key=ratio.__getitem__, reverse=True):
        if extra[name] <= room:
            chosen.add(name)
            room -= extra[name]
    assert chosen == set(overrides)
    assert total / params <= BUDGET and max(ratio, key=ratio.__getitem__) in overrides


def test_runtime_and_independent_reader_run_the_mixed_bundle(bundles, mixed):
    """Greedy tokens of the mixed bundle from both readers agree, and its scores track fp32's."""
    fp32, model = load(bundles["phi4mini", "fp32"]), load(mixed)
    reader = Reader(mixed)
    graph, _ = stored(mixed)
    assert reader.overrides and all(graph[n][:2] == (o["bits"], o["block_size"]) for n, o in reader.overrides.items())
    agree = []
    for word in WORDS[:3]:
        prompt = model.encode(f"Count from {word}.")
        tokens = model.generate(prompt, max_new_tokens=8).token_ids
        assert reader.generate(prompt, 8) == tokens
        a, b = fp32.score(prompt, tokens), model.score(prompt, tokens)
        agree.append(np.argmax(a, -1) == np.argmax(b, -1))
    assert np.concatenate(agree).mean() > 0.8


def test_a_budget_below_the_base_settings_is_refused(checkpoints, tmp_path):
    with pytest.raises(Phi4EdgeError, match=r"--bits-budget 4.5: the int4 linears and the table alone take 5\.0\d\d bits/weight"):
        export_model(checkpoints["phi4mini"], tmp_path / "b", bits_budget=4.5, show_progress=False, **RTN)


def test_the_default_budget_applies_where_it_leaves_room(checkpoints, embedded_bundle):  # noqa: F811
    """--bits-budget's default: 5.5 with gptq/imatrix when the int4 linears and the table leave room
    (Phi-4-mini's shapes and the embedded model at the default settings), else none and no error (rtn:
    no calibration pass; block 32 with the int8 table: more than 5.5 bits/weight before any int8)."""
    phi4_mini = replace(load_config(checkpoints["phi4mini"]), hidden_size=3072, num_layers=32, num_heads=24,
                        num_kv_heads=8, head_dim=128, intermediate_size=8192, vocab_size=200064, tie_word_embeddings=True)
    assert default_budget(phi4_mini, QuantConfig()) == BITS_BUDGET == 5.5
    assert default_budget(phi4_mini, QuantConfig("imatrix")) == 5.5
    assert default_budget(phi4_mini, QuantConfig("rtn")) == default_budget(phi4_mini, QuantConfig("hqq")) == 0
    b32 = QuantConfig(block_size=32)
    bits, params = base(list(linear_shapes(phi4_mini).values()) * 32, 32, True, *tables(phi4_mini, b32))
    assert bits / params > 5.5 and default_budget(phi4_mini, b32) == 0
    q = Manifest.read(embedded_bundle).quantization
    assert q.bits_budget == 5.5 and q.overrides
    shown = CliRunner().invoke(main, ["inspect", str(embedded_bundle), "--no-verify"]).output
    assert f"; {len(q.overrides)} linears int8 within 5.5 bits/weight" in shown
