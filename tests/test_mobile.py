"""ORT-format bundles (export --format ort, phi4edge mobile): the same logits as the ONNX bundle for
text, image and audio prompts with their adapters, fp32 and int4; required_operators.config; the
manifest's feature gate; tampered and oversized graphs refused."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from phi4edge import format as fmt
from phi4edge import load
from phi4edge.cli import main
from phi4edge.errors import BundleError, Phi4EdgeError
from phi4edge.export import export_model
from phi4edge.export import mobile as mobile_mod
from phi4edge.export.mobile import mobile_bundle
from phi4edge.format import Manifest
from phi4edge.models import EMBEDDED
from phi4edge.runtime.speech import key_bias
from phi4edge.runtime.vision import NEG, position_ids, token_index

from .compare import assert_greedy_matches
from .independent_reader import Reader, Refused

SAMPLES, EVAL = EMBEDDED / "samples", EMBEDDED / "eval"
# (kind, prompt, media): the demo's samples and a held-out 2x3-crop image and a longer clip
REQUESTS = [("text", "Count from three to seven.", {}),
            ("text", "Repeat after me: nine square four five nine.", {}),
            ("image", "What shape is this?", {"images": [SAMPLES / "shape.jpg"]}),
            ("image", "What color is the shape?", {"images": [EVAL / "images/001.jpg"]}),
            ("audio", "Transcribe the audio.", {"audios": [SAMPLES / "speech.ogg"]}),
            ("audio", "Transcribe the audio.", {"audios": [EVAL / "audio/000.ogg"]})]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """precision -> (ONNX bundle, ORT bundle): int4 through export --format ort, fp32 through
    phi4edge mobile from the ONNX bundle (both ways in)."""
    root = tmp_path_factory.mktemp("mobile")
    out = {}
    for precision in ("fp32", "int4"):
        onnx_bundle = export_model(EMBEDDED / "checkpoint", root / precision, precision=precision, show_progress=False)
        ort_bundle = (mobile_bundle(onnx_bundle, root / f"{precision}-ort") if precision == "fp32" else
                      export_model(EMBEDDED / "checkpoint", root / f"{precision}-ort", precision=precision,
                                   show_progress=False, graph_format="ort"))
        out[precision] = (onnx_bundle, ort_bundle)
    return out


def features(model, media: dict) -> dict[str, np.ndarray] | None:
    if "images" in media:
        return {"image_features": model.image_features([model.prepare_image(p) for p in media["images"]])}
    if "audios" in media:
        return {"audio_features": model.audio_features([model.prepare_audio(p) for p in media["audios"]], False)}
    return None


def plain_session(path: Path) -> ort.InferenceSession:
    """An encoder graph at the optimisation the ORT bundle has: basic (no NCHWc, which onnxruntime
    applies to ONNX graphs at load on x86 only)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_ort_bundle_gives_the_onnx_bundles_logits(pairs, precision):
    onnx_bundle, ort_bundle = pairs[precision]
    ref, mob = load(onnx_bundle), load(ort_bundle)
    assert mob.bundle.manifest.graph_format == "ort" and ref.bundle.manifest.graph_format == "onnx"
    adapters = set()
    for kind, prompt, media in REQUESTS:
        answer = ref.generate(prompt, max_new_tokens=12, **media)
        adapters.add(answer.adapter)
        ids, tokens, adapter = answer.prompt_token_ids, answer.token_ids, answer.adapter
        # the decoder (with the request's adapter): bit for bit, given the same features
        ref_media = features(ref, media)
        expected = ref.score(ids, tokens, adapter=adapter, media=ref_media)
        assert np.array_equal(mob.score(ids, tokens, adapter=adapter, media=ref_media), expected), (kind, prompt)
        if kind == "text":
            assert mob.generate(prompt, max_new_tokens=12).token_ids == tokens
            continue
        # the encoders: equal to the ONNX graph at the same optimisation level, bit for bit
        mob_media = features(mob, media)
        name = "image_features" if kind == "image" else "audio_features"
        assert np.array_equal(mob_media[name], onnx_encoder(ref, kind, media)), (kind, prompt)
        # end to end: the ONNX bundle's x86 encoders use NCHWc convolutions (ARM has none), a rounding
        # difference: features within 1e-5 (fp32) / 1% (int4, whose int8 activations amplify it),
        # greedy tokens equal wherever the ONNX bundle's choice is confident
        err = np.linalg.norm(mob_media[name] - ref_media[name]) / np.linalg.norm(ref_media[name])
        assert err < (1e-5 if precision == "fp32" else 1e-2), (kind, prompt, err)
        got = mob.generate(prompt, max_new_tokens=12, **media)
        assert got.adapter == adapter
        assert_greedy_matches(got.token_ids, tokens, expected, relative=2e-4 if precision == "fp32" else 0.05)
    assert adapters == {None, "vision", "speech"}


def onnx_encoder(model, kind: str, media: dict) -> np.ndarray:
    """The ONNX bundle's encoder graph run by plain onnxruntime at basic optimisation (the feeds as
    docs/bundle-format.md describes them)."""
    bundle = model.bundle
    if kind == "image":
        image = model.prepare_image(media["images"][0])
        bias = np.where(image.patch_mask.reshape(len(image.patch_mask), 1, 1, -1), 0.0, NEG).astype(np.float32)
        feeds = {"pixel_values": image.pixel_values, "position_ids": position_ids(image.patch_mask),
                 "attention_bias": bias, "token_index": token_index(image)}
        return plain_session(bundle.file(bundle.manifest.vision.graph)).run(["image_features"], feeds)[0]
    mel = model.prepare_audio(media["audios"][0]).features
    feeds = {"audio_features": mel[None].astype(np.float32), "key_bias": key_bias(-(-len(mel) // 8))}
    return plain_session(bundle.file(bundle.manifest.speech.graph)).run(["speech_features"], feeds)[0]


def test_ort_bundle_files_and_required_operators(pairs):
    for precision, (onnx_bundle, ort_bundle) in pairs.items():
        m = Manifest.read(ort_bundle)
        assert fmt.ORT_GRAPHS in m.requires and fmt.MEDIA_INPUTS in m.requires
        assert m.ort is not None and m.ort.optimization == "basic" and m.ort.onnxruntime == ort.__version__
        assert m.graphs == {"decoder": "decoder.ort", "vision": "vision.ort", "speech": "speech.ort"}
        names = {p.relative_to(ort_bundle).as_posix() for p in ort_bundle.rglob("*") if p.is_file()} - {"manifest.json"}
        assert names == set(m.files), "exactly the listed files, no staging leftovers"
        assert not [n for n in names if ".onnx" in n and not n.endswith(".onnx_adapter")], "no ONNX graph or data left"
        for graph in m.graphs.values():
            assert (ort_bundle / graph).read_bytes()[4:8] == b"ORTM"
        assert json.loads((ort_bundle / "genai_config.json").read_text())["model"]["decoder"]["filename"] == "decoder.ort"
        # adapters, tokenizer and the rest are the ONNX bundle's files, unchanged
        same = set(Manifest.read(onnx_bundle).files) & set(m.files) - {"genai_config.json"}
        assert {n for n in same if m.files[n] != Manifest.read(onnx_bundle).files[n]} == set()
        # required_operators.config: every graph's operators, in onnxruntime's reduced-build syntax
        text = (ort_bundle / m.ort.required_operators).read_text()
        assert "/tmp" not in text and str(ort_bundle.parent) not in text   # no staging paths leak in
        ops = {}
        for line in text.splitlines():
            if not line.startswith("#"):
                domain, opset, names_ = line.split(";")
                ops.setdefault(domain, set()).update(names_.split(","))
                assert int(opset) >= 1
        contrib = {"GroupQueryAttention", "SkipSimplifiedLayerNormalization"} | \
            ({"MatMulNBits", "GatherBlockQuantized"} if precision == "int4" else set())
        assert contrib <= ops["com.microsoft"], ops
        assert {"Conv", "ScatterND", "Gather", "Softmax", "LayerNormalization"} <= ops["ai.onnx"]


def test_independent_reader_and_older_readers(pairs, monkeypatch):
    onnx_bundle, ort_bundle = pairs["int4"]
    ours, theirs = load(ort_bundle), Reader(ort_bundle)
    ids = ours.encode("Count from three to seven.")
    for adapter in (None, "speech"):
        assert theirs.generate(ids, 8, adapter) == ours.generate(ids, max_new_tokens=8, adapter=adapter).token_ids
    # a reader without the feature refuses the bundle by its `requires`, naming it
    monkeypatch.setattr(fmt, "FEATURES", frozenset({fmt.MEDIA_INPUTS}))
    with pytest.raises(BundleError, match="'ort-graphs'.*upgrade phi4edge"):
        Manifest.read(ort_bundle)


@pytest.mark.parametrize("edit,needle", [
    (lambda m: m.pop("ort"), "field 'ort' must be present exactly when"),
    (lambda m: m.update(requires=["media-inputs"]), "field 'ort' must be present exactly when"),
    (lambda m: m["decoder"].update(graph="decoder.onnx"), "ORT-format graphs are named *.ort"),
    (lambda m: m["ort"].update(required_operators="ops.txt"), "not listed in 'files'"),
    (lambda m: m["ort"].update(optimization="max"), "field 'ort.optimization'"),
])
def test_inconsistent_ort_manifest_refused(pairs, edit, needle):
    doc = json.loads((pairs["fp32"][1] / "manifest.json").read_text())
    edit(doc)
    with pytest.raises(BundleError) as err:
        Manifest.from_json(doc)
    assert needle in str(err.value)


def test_onnx_graph_named_ort_refused(pairs):
    doc = json.loads((pairs["fp32"][0] / "manifest.json").read_text())
    doc["vision"]["graph"] = "vision.ort"
    with pytest.raises(BundleError, match="names an ORT-format graph"):
        Manifest.from_json(doc)


def test_tampered_ort_graph_refused(pairs, tmp_path):
    source = pairs["int4"][1]

    def tampered(name: str, edit) -> Path:
        b = Path(shutil.copytree(source, tmp_path / name))
        graph = b / "decoder.ort"
        graph.write_bytes(edit(graph.read_bytes()))
        return b
    size = (source / "decoder.ort").stat().st_size
    cases = {
        "identifier": lambda d: d[:4] + b"ONNX" + d[8:],                  # not ORT format: refused at open
        "tables": lambda d: d[:8] + bytes(64) + d[72:],                   # broken FlatBuffer: onnxruntime's verifier
        "onnx": lambda d: (pairs["int4"][0] / "decoder.onnx").read_bytes().ljust(size, b"\0"),   # an ONNX graph
    }
    for name, edit in cases.items():
        b = tampered(name, edit)
        with pytest.raises(BundleError, match="not an ORT-format graph|decoder graph failed to load"):
            load(b)
        if name != "tables":   # the independent reader checks the identifier; onnxruntime the rest
            with pytest.raises(Refused):
                Reader(b)
    with pytest.raises(BundleError, match="truncated or changed"):
        load(tampered("truncated", lambda d: d[:-4096]))
    # same size, weights changed: only the sha256 check sees it (as for ONNX bundles' weight files)
    weights = tampered("weights", lambda d: d[:size // 2] + bytes(1024) + d[size // 2 + 1024:])
    with pytest.raises(BundleError, match="sha256"):
        load(weights, verify=True)


def test_older_onnxruntime_refused(pairs, monkeypatch):
    """ORT format reads forwards only: a runtime older than the converter says so."""
    written = Manifest.read(pairs["int4"][1]).ort.onnxruntime   # type: ignore[union-attr]
    monkeypatch.setattr(ort, "__version__", "1.0.0")
    with pytest.raises(BundleError, match=f"written by onnxruntime {written}.*this onnxruntime is 1.0.0: upgrade"):
        load(pairs["int4"][1])
    load(pairs["int4"][0])   # the ONNX bundle has no such limit


def test_over_2_gib_graph_refused_and_nothing_left(monkeypatch, tmp_path):
    """FlatBuffers stop at 2 GiB (onnxruntime fails to save larger graphs, leaving an empty file):
    such a graph is refused before converting, and the export leaves nothing behind."""
    monkeypatch.setattr(mobile_mod, "MAX_ORT_BYTES", 4 << 20)   # the embedded fp32 decoder is ~19 MB
    with pytest.raises(Phi4EdgeError, match="2 GiB"):
        export_model(EMBEDDED / "checkpoint", tmp_path / "big", precision="fp32", show_progress=False, graph_format="ort")
    assert list(tmp_path.iterdir()) == []


def test_mobile_cli(pairs, tmp_path):
    onnx_bundle, ort_bundle = pairs["fp32"]
    runner = CliRunner()
    result = runner.invoke(main, ["mobile", str(ort_bundle), "-o", str(tmp_path / "again")])
    assert result.exit_code == 1 and "already ORT format" in result.output
    result = runner.invoke(main, ["mobile", str(onnx_bundle), "-o", str(ort_bundle)])
    assert result.exit_code == 1 and "already exists" in result.output
    result = runner.invoke(main, ["inspect", str(ort_bundle)])
    assert result.exit_code == 0 and "ORT format (optimisation basic" in result.output, result.output
