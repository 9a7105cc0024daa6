"""Static-shapes bundles (`phi4edge export --target static`) on the CPU provider: fp32 logits and
greedy tokens against transformers (chunked prefill with padding, single-row decode, the LongRoPE
switch) and against peft with adapters; the embedded model's int4 static bundle against its dynamic
bundle on text, image and audio; the graphs' fixed shapes and operators; manifest and CLI refusals."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from phi4edge import load
from phi4edge.cli import main
from phi4edge.errors import BundleError, RequestError
from phi4edge.export import export_model
from phi4edge.export.static import StaticShapes, export_static
from phi4edge.format import Manifest, base_model_version
from phi4edge.models import EMBEDDED

from .checkpoints import load_reference
from .compare import assert_greedy_matches, hf_greedy
from .conftest import SHAPES
from .test_text_parity import check

SMALL = StaticShapes(context=96, prefill_chunk=16)
# Operators QNN's HTP backend took from these graphs on its simulator (tests/test_qnn.py runs them there);
# the dynamic graphs' GroupQueryAttention, SkipSimplifiedLayerNormalization, NonZero, ScatterND and
# GatherBlockQuantized, which it refuses, must not appear.
HTP_OPS = {"Add", "Cast", "Concat", "Gather", "MatMul", "MatMulNBits", "Mul", "Reshape", "RotaryEmbedding", "Sigmoid",
           "SimplifiedLayerNormalization", "Slice", "Softmax", "Split", "Transpose", "Identity", "Gemm", "Unsqueeze"}


@pytest.fixture(scope="module")
def static_bundles(checkpoints, tmp_path_factory):
    """(shape, precision) -> static bundle of a test checkpoint, built on first use."""
    root = tmp_path_factory.mktemp("static")

    class Lazy(dict):
        def __missing__(self, key):
            shape, precision = key
            self[key] = export_static(checkpoints[shape], root / f"{shape}-{precision}", precision=precision,
                                      show_progress=False, shapes=SMALL)
            return self[key]
    return Lazy()


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """The embedded model's int4 bundles: dynamic (as `make demo`) and static (context 256)."""
    root = tmp_path_factory.mktemp("embedded-static")
    return (export_model(EMBEDDED / "checkpoint", root / "dynamic", show_progress=False),
            export_static(EMBEDDED / "checkpoint", root / "static", show_progress=False, shapes=StaticShapes(context=256)))


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_fp32_static_matches_transformers(shape, checkpoints, static_bundles):
    """Prompts of 1, 7 and 60 tokens: one padded chunk, and four chunks of 16 (the last padded),
    then single-row decode; logits along transformers' greedy answer within 1e-4."""
    ref = load_reference(checkpoints[shape])
    model = load(static_bundles[shape, "fp32"])
    rng = np.random.default_rng(0)
    for length in (1, 7, 60):
        err, n = check(model, ref, rng.integers(10, 390, size=length).tolist(), max_new=24)
        print(f"{shape} prompt={length}: greedy equal over {n} confident steps, max relative logit error {err:.1e}")


def test_long_rope_switch_in_a_static_window(checkpoints, tmp_path):
    """A window past original_max_position (4096): the graphs carry both rotary sets, and an answer
    that crosses the switch re-runs the sequence with the long factors (partly in single rows, as
    fewer than a chunk's slots are left), as transformers recomputes it."""
    bundle = export_static(checkpoints["phi4mini"], tmp_path / "long", precision="fp32", show_progress=False,
                           shapes=StaticShapes(context=4128, prefill_chunk=64))
    prompt = np.random.default_rng(1).integers(10, 390, size=4090).tolist()
    err, n = check(load(bundle), load_reference(checkpoints["phi4mini"]), prompt, max_new=12)
    print(f"long prompt: greedy equal over {n} confident steps, max relative logit error {err:.1e}")


def test_adapters_padded_to_the_static_rank_match_peft(checkpoints, two_adapters, tmp_path):
    """Adapters of rank 8 and 16 as LoRA inputs of rank 16 (the first zero-padded): peft's tokens
    with each, the base model's without, switched per request."""
    pm, dirs, _ = two_adapters
    bundle = export_static(checkpoints["phi4mini"], tmp_path / "b", precision="fp32",
                           show_progress=False, shapes=SMALL, adapters={k: str(v) for k, v in dirs.items()})
    assert json.loads((bundle / "manifest.json").read_text())["static"]["lora_rank"] == 16
    model = load(bundle)
    for name in ("style", None, "terse", "style"):
        ids = model.encode("Count from two.")
        if name:
            pm.set_adapter(name)
            tokens, logits = hf_greedy(pm, ids, 12)
        else:
            with pm.disable_adapter():
                tokens, logits = hf_greedy(pm, ids, 12)
        assert_greedy_matches(model.generate(ids, max_new_tokens=12, adapter=name).token_ids, tokens, logits)


def test_embedded_int4_static_answers_as_the_dynamic_bundle(embedded):
    """The demo's text, image and audio samples and the first held-out items: the same greedy
    tokens (the vision graph's int4 blocks are 16 rather than 32, as SigLIP's sizes need)."""
    dynamic, static = (load(b) for b in embedded)
    samples = json.loads((EMBEDDED / "samples" / "samples.json").read_text())
    requests = [("Count from three to seven.", {}),
                (samples["image"]["prompt"], {"images": [str(EMBEDDED / "samples" / samples["image"]["file"])]}),
                (samples["audio"]["prompt"], {"audios": [str(EMBEDDED / "samples" / samples["audio"]["file"])]})]
    for kind, name in (("images", "image.jsonl"), ("audios", "speech.jsonl"), (None, "text.jsonl")):
        for line in (EMBEDDED / "eval" / name).read_text().splitlines()[:3]:
            item = json.loads(line)
            requests.append((item["prompt"], {kind: [str(EMBEDDED / "eval" / item["file"])]} if kind else {}))
    for prompt, media in requests:
        want, got = (m.generate(prompt, max_new_tokens=16, **media) for m in (dynamic, static))
        assert got.token_ids == want.token_ids and got.adapter == want.adapter, (prompt, got.text, want.text)


def test_static_graphs_have_fixed_shapes_and_htp_operators(embedded):
    static = embedded[1]
    manifest = Manifest.read(static)
    assert manifest.requires == ["static-shapes"] and manifest.static is not None
    assert (manifest.static.context, manifest.static.prefill_chunk, manifest.static.lora_rank) == (256, 32, 40)
    for kind, name in manifest.graphs.items():
        model = onnx.load(static / name, load_external_data=False)
        for value in [*model.graph.input, *model.graph.output]:
            dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]
            assert all(isinstance(d, int) and d > 0 for d in dims), f"{kind}: {value.name} {dims}"
        ops = {n.op_type for n in model.graph.node}
        if kind in ("decoder", "prefill"):
            assert ops <= HTP_OPS, f"{kind}: {sorted(ops - HTP_OPS)}"
            rows = 1 if kind == "decoder" else 32
            inputs = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
            assert inputs["past_key_values.0.key"] == [1, 2, 256 - rows, 64] and inputs["input_ids"] == [1, rows]
        external = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
        assert external == {"decoder.onnx.data" if kind in ("decoder", "prefill") else f"{kind}.onnx.data"}
        assert not ops & {"GroupQueryAttention", "SkipSimplifiedLayerNormalization", "NonZero", "ScatterND",
                          "GatherBlockQuantized"}


def test_requests_beyond_the_fixed_shapes_are_refused(embedded, tmp_path):
    model = load(embedded[1])
    with pytest.raises(RequestError, match="context is 256 tokens"):
        model.generate(list(range(10, 300)), max_new_tokens=4)
    long_audio = np.zeros(16000 * 11, np.float32)   # the speech graph takes 10 s
    with pytest.raises(RequestError, match=r"speech graph takes at most 998 \(10\.0 s\)"):
        model.generate("Transcribe the audio.", audios=[long_audio], max_new_tokens=2)
    # an adapter whose rank exceeds the bundle's static LoRA rank
    big = {name: np.zeros((i.shape[0], 41) if name.endswith(".A") else (41, i.shape[1]), np.float32)
           for name, i in model.decoder.adapters.inputs.items()}
    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(base_model_version(model.bundle.manifest.model.base_id))
    adapter.set_parameters({k: ort.OrtValue.ortvalue_from_numpy(v) for k, v in big.items()})
    adapter.export_adapter(str(tmp_path / "big.onnx_adapter"))
    model.add_adapter("big", tmp_path / "big.onnx_adapter")
    with pytest.raises(BundleError, match="rank at most 40"):
        model.generate("hi", adapter="big", max_new_tokens=1)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("static"), "field 'static' must be present exactly when"),
    (lambda m: m["static"].update(prefill_chunk=256), "'static.prefill_chunk' is 256"),
    (lambda m: m["static"].update(lora_rank=0), "'static.lora_rank' is 0"),
    (lambda m: m["static"].update(audio_frames=0), "'static.audio_frames' must be positive"),
    (lambda m: m.update(qnn={"soc_model": 60, "contexts": {"decoder": "decoder_ctx.onnx"}, "onnxruntime_qnn": "2.7.0"}),
     "'qnn.contexts.decoder' names 'decoder_ctx.onnx', which is not"),
])
def test_static_manifest_checks(embedded, edit, message):
    doc = json.loads((embedded[1] / "manifest.json").read_text())
    edit(doc)
    with pytest.raises(BundleError, match=message):
        Manifest.from_json(doc)


def test_cli_static_export_and_run(checkpoints, tmp_path):
    runner = CliRunner()
    ck = str(checkpoints["gqa4"])
    for args, message in ((["--target", "static", "--format", "ort"], "--format ort does not apply to --target static"),
                          (["--target", "static", "--block-size", "64"], "are not multiples of block size 64, and QNN "
                                                                        "takes whole blocks only: use --block-size 32"),
                          (["--context", "64"], "--context does not apply to --target dynamic"),
                          (["--target", "webgpu", "--image-crops", "4"], "--image-crops does not apply to --target webgpu"),
                          (["--target", "static", "--soc-model", "60"], "--soc-model does not apply"),
                          (["--target", "static", "--context", "64", "--prefill-chunk", "64"], "--prefill-chunk 64: must be")):
        result = runner.invoke(main, ["export", ck, "-o", str(tmp_path / "x"), *args])
        assert result.exit_code != 0 and message in result.output, result.output
        assert not (tmp_path / "x").exists()
    # gqa4's FFN (416) is not a multiple of the default block 64; Phi-family models' widths are
    result = runner.invoke(main, ["export", ck, "-o", str(tmp_path / "s"), "--target", "static", "--context", "64",
                                  "--block-size", "32"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["inspect", str(tmp_path / "s")])
    assert "static      window 64 tokens, prefill chunks of 32, LoRA rank 0" in result.output, result.output
    result = runner.invoke(main, ["run", str(tmp_path / "s"), "--prompt", "Count from two.", "--max-new-tokens", "4",
                                  "--json"])
    out = json.loads(result.output)
    assert set(out["nodes"]) == {"decoder", "prefill"} and list(out["nodes"]["decoder"]) == ["CPUExecutionProvider"]
    result = runner.invoke(main, ["run", str(tmp_path / "s"), "--prompt", "hi", "--require-provider"])
    assert result.exit_code != 0 and "--require-provider needs a --provider other than cpu" in result.output


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_reader_written_from_the_format_document_gives_the_same_tokens(shape, static_bundles, embedded):
    """tests/static_reader.py, written from docs/bundle-format.md alone, against the runtime."""
    from .static_reader import StaticReader
    for bundle in (static_bundles[shape, "fp32"], embedded[1]):
        model, reader = load(bundle), StaticReader(bundle)
        rng = np.random.default_rng(2)
        for prompt in [rng.integers(10, 390, size=n).tolist() for n in (1, 7, 60)] + [model.encode("Count from two.")]:
            assert reader.greedy(prompt, 24) == model.generate(prompt, max_new_tokens=24).token_ids
