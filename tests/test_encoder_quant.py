"""--encoder-quant / --encoder-block-size on the embedded model: the encoder graphs hold the chosen
weights, the manifest says so, and the features stay within the error measured against fp32
encoders (bench/media_quant.py has the whole held-out sets)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from phi4edge.errors import Phi4EdgeError
from phi4edge.export import export_model
from phi4edge.models import EMBEDDED
from phi4edge.quant import DEFAULT_BLOCK, QuantConfig
from phi4edge.runtime.evaluate import read_set
from phi4edge.runtime.generate import Model

ITEMS = 4
# relative RMS of the features against fp32 encoders, vision / speech, on the first ITEMS held-out
# images and clips. Measured with AVX-512 VNNI: int8 0.56% / 0.41%, int4 hqq block 32 5.2% / 3.2%,
# rtn block 64 6.2% / 3.8%; bounds about 2x that (MatMulNBits' int8 compute differs by ISA)
BOUNDS = {("int8", 32): 0.012, ("hqq", 32): 0.10, ("rtn", 64): 0.12}


def features(bundle) -> dict[str, np.ndarray]:
    model = Model(bundle, threads=1)
    folder = EMBEDDED / "eval"
    images = [model.prepare_image(i["file"]) for i in read_set(folder, "image", ITEMS)]
    audios = [model.prepare_audio(i["file"]) for i in read_set(folder, "speech", ITEMS)]
    return {"vision": np.concatenate([model.image_features([i]) for i in images]),
            "speech": np.concatenate([model.audio_features([a], False) for a in audios])}


@pytest.fixture(scope="module")
def fp32_encoders(tmp_path_factory):
    out = export_model(EMBEDDED / "checkpoint", tmp_path_factory.mktemp("enc") / "fp32", encoder_quant="fp32",
                       show_progress=False)
    return out, features(out)


@pytest.mark.parametrize("method,block", sorted(BOUNDS))
def test_encoder_choice_reaches_the_graphs_and_bounds_the_feature_error(method, block, fp32_encoders, tmp_path):
    ref_bundle, ref = fp32_encoders
    out = export_model(EMBEDDED / "checkpoint", tmp_path / "b", encoder_quant=method, encoder_block_size=block,
                       show_progress=False)
    bits = 8 if method == "int8" else 4
    for kind in ("vision", "speech"):
        nodes = [n for n in onnx.load(out / f"{kind}.onnx", load_external_data=False).graph.node
                 if n.op_type == "MatMulNBits"]
        attrs = [{a.name: a.i for a in n.attribute} for n in nodes]
        assert nodes and all(a["bits"] == bits and a["block_size"] == block for a in attrs)
        assert all((len(n.input) > 3) == (method == "hqq") for n in nodes)   # zero points: hqq only
    assert not any(n.op_type == "MatMulNBits"
                   for n in onnx.load(ref_bundle / "vision.onnx", load_external_data=False).graph.node)
    manifest = json.loads((out / "manifest.json").read_text())["quantization"]
    assert manifest["encoders"] == f"int{bits} {'rtn' if method == 'int8' else method} (block {block})"
    assert manifest["block_size"] == DEFAULT_BLOCK   # the decoder keeps its own setting
    got = features(out)
    for kind, want in ref.items():
        err = float(np.sqrt(((got[kind] - want) ** 2).mean() / (want ** 2).mean()))
        print(f"{method} b{block} {kind}: relative RMS {err:.4f}")
        assert 0 < err < BOUNDS[method, block], f"{kind} features of {method} b{block}: relative RMS {err:.4f}"


def test_bad_encoder_settings_are_refused():
    with pytest.raises(Phi4EdgeError, match="--encoder-quant 'gptq'"):
        QuantConfig(encoder="gptq")
    with pytest.raises(Phi4EdgeError, match="--encoder-block-size"):
        QuantConfig(encoder_block_size=48)
