"""`--head int8-screened` (quant/screen.py): the int8 table stored as two int4 halves, the LM head
screened by the high halves with its top logits completed exactly. Held to numpy on the bundle's
stored bytes (read by onnx), to fp32 on confident tokens, and to the plain int8 head's bytes."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from phi4edge import load
from phi4edge.bundle import open_bundle
from phi4edge.export import export_model
from phi4edge.format import Manifest
from phi4edge.quant import QuantConfig
from phi4edge.quant.blocks import symmetric
from phi4edge.quant.screen import SCREEN_TOP, split
from phi4edge.runtime.benchmark import decode_bytes_per_token

from .checkpoints import WORDS
from .compare import margins
from .test_int4 import INT4_SAFE_MARGIN


def test_split_is_the_int8_level_in_two_halves():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((40, 200)).astype(np.float32) * rng.uniform(0.01, 3, (40, 1)).astype(np.float32)
    t = split(w, symmetric(w, 8, 64))
    unpack = lambda p: np.stack([p & 15, p >> 4], -1).reshape(*p.shape[:-1], -1).astype(np.int16) - 8
    high, low = unpack(t.high), unpack(t.low)
    v = 16 * high + low
    assert -120 <= v.min() and v.max() <= 119 and (v == -120).any()
    blocks = np.concatenate([w, np.zeros((40, 56), np.float32)], 1).reshape(40, 4, 64)
    # every weight on its nearest level of the [-120, 119] grid: at most half a step away
    assert (np.abs(blocks - v * t.scales[..., None]) <= np.abs(t.scales[..., None]) * (0.5 + 1e-5)).all()


def stored_table(model: onnx.ModelProto, name: str, hidden: int) -> tuple[np.ndarray, np.ndarray]:
    """A table's int8 rows (16 * high + low) * scales / 16 [vocab, hidden] from its stored initializers,
    and the high halves' step per weight."""
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name.startswith(name)}
    halves = [np.stack([init[f"{name}.{h}"] & 15, init[f"{name}.{h}"] >> 4], -1).astype(np.float32) - 8
              for h in ("high", "low")]
    v = (16 * halves[0] + halves[1]).reshape(*halves[0].shape[:2], -1)
    scales = init[f"{name}.scales"]
    step = np.abs(np.repeat(scales, v.shape[2], axis=1))[:, :hidden]
    return (v * scales[..., None] / 16).reshape(len(v), -1)[:, :hidden], step


def with_outputs(model: onnx.ModelProto, names: list[str]) -> ort.InferenceSession:
    """A session of the graph that also outputs the named intermediate tensors."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    so = ort.SessionOptions()
    so.log_severity_level = 3   # logits_to_keep is an input with a default, as the runtime feeds it
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


# phi3mini: an untied LM head (a screened table of its own), hidden 128 in one zero-padded block of 256
@pytest.mark.parametrize("shape,head_block", [("phi4mini", 0), ("phi3mini", 256)])
def test_screened_head_is_the_int8_table(checkpoints, tmp_path, shape, head_block):
    bundle = export_model(checkpoints[shape], tmp_path / "s", head="int8-screened", head_block_size=head_block,
                          quant_method="rtn", show_progress=False)
    cfg = Manifest.read(bundle).model.config
    model = onnx.load(str(bundle / "decoder.onnx"))
    embedding, _ = stored_table(model, "embed_tokens", cfg.hidden_size)
    table, per_weight = stored_table(model, "embed_tokens" if cfg.tie_word_embeddings else "lm_head", cfg.hidden_size)
    head = next(n for n in model.graph.node if n.name == "lm_head")
    high = next(n for n in model.graph.node if n.name == "embed_tokens.high")
    embed = next(n for n in model.graph.node if n.op_type == "Add" and high.output[0] in n.input)
    top_ids = next(n for n in model.graph.node if n.op_type == "TopK").output[1]
    session = with_outputs(model, [head.input[0], embed.output[0], top_ids])
    m = load(bundle)
    top = min(SCREEN_TOP, cfg.vocab_size)
    for word in WORDS[:6]:
        ids = np.array([m.encode(f"Count from {word}.")], np.int64)
        feeds = {i.name: np.zeros([1, cfg.num_kv_heads, 0, cfg.head_dim], np.float32)
                 for i in session.get_inputs() if i.name.startswith("past_key_values")}
        feeds.update(input_ids=ids, attention_mask=np.ones_like(ids), logits_to_keep=np.array([ids.shape[1]]))
        out = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        logits, x, screened = out["logits"][:, 0], out[head.input[0]][:, 0], out[top_ids][:, 0]
        embeds = out[embed.output[0]].reshape(ids.shape[1], -1)[:, :cfg.hidden_size]
        np.testing.assert_allclose(embeds, embedding[ids[0]], rtol=0, atol=1e-6)    # the embedding: the int8 rows
        reference = x.astype(np.float64) @ table.T.astype(np.float64)
        assert screened.shape[-1] == top
        for row, ref, xr, exact in zip(logits, reference, x, screened):
            scale = np.abs(ref).max()
            # the screen's top logits are the int8 table's (up to int8 compute on x: accuracy level 4)
            np.testing.assert_allclose(row[exact], ref[exact], atol=0.01 * scale)
            assert np.isin(np.argsort(-ref)[:3], exact).all()
            # the tail's error is the low halves' share: at most half of the high halves' step per weight
            tail = np.setdiff1d(np.arange(cfg.vocab_size), exact)
            bound = 0.5 * per_weight[tail] @ np.abs(xr)
            assert (np.abs(row[tail] - ref[tail]) <= bound + 0.01 * scale).all()


def test_screened_agrees_with_fp32_where_confident(bundles, checkpoints, tmp_path):
    fp32 = load(bundles["phi4mini", "fp32"])
    screened = load(export_model(checkpoints["phi4mini"], tmp_path / "s", head="int8-screened", show_progress=False))
    confident, errors = [], []
    for word in WORDS[:8]:
        prompt = fp32.encode(f"Count from {word}.")
        answer = fp32.generate(prompt, max_new_tokens=16).token_ids
        a, b = fp32.score(prompt, answer), screened.score(prompt, answer)
        confident.append((np.argmax(a, -1) == np.argmax(b, -1))[margins(a) > INT4_SAFE_MARGIN])
        errors.append(np.abs(a - b).max())
    confident = np.concatenate(confident)
    print(f"\nscreened vs fp32: {confident.size} confident steps, max |logit error| {max(errors):.3f}")
    assert confident.size >= 32 and confident.all()
    assert max(errors) < INT4_SAFE_MARGIN / 2


def test_screened_reads_half_the_table_and_stores_the_same(checkpoints, tmp_path):
    kw = dict(quant_method="rtn", show_progress=False)
    plain = export_model(checkpoints["phi4mini"], tmp_path / "p", head="int8", **kw)
    screened = export_model(checkpoints["phi4mini"], tmp_path / "s", head="int8-screened", **kw)
    cfg = Manifest.read(plain).model.config
    table = cfg.vocab_size * cfg.hidden_size
    assert decode_bytes_per_token(open_bundle(plain)) - decode_bytes_per_token(open_bundle(screened)) == table // 2
    sizes = [sum(p.stat().st_size for p in b.glob("decoder.onnx*")) for b in (plain, screened)]
    assert abs(sizes[0] - sizes[1]) < 3 * 4096   # the same bytes, page-aligned tensors apart
    assert "top 256 exact" in Manifest.read(screened).quantization.tied_embeddings
    assert QuantConfig(head="int8-screened").table_bits(1000, 256) == QuantConfig(head="int8").table_bits(1000, 256)


def test_webgpu_form_gets_the_plain_int8_head(checkpoints, tmp_path):
    """The WebGPU form has no screen (its EP lacks TopK/Scan kernels worth using): a plain int8 head, said so."""
    bundle = export_model(checkpoints["phi4mini"], tmp_path / "w", head="int8-screened", webgpu=True, quant_method="rtn",
                          show_progress=False)
    ops = {n.op_type for n in onnx.load(str(bundle / "decoder.onnx"), load_external_data=False).graph.node}
    assert "TopK" not in ops and "Scan" not in ops
    assert Manifest.read(bundle).quantization.tied_embeddings.startswith("one int8 tensor")
