"""config.json spellings and graph options that the checkpoint reader and graph builder must handle."""
from __future__ import annotations

import json
import shutil

import numpy as np
import torch

from phi4edge import load
from phi4edge.export import export_model
from phi4edge.export.decoder import DecoderBuilder, DecoderOptions
from phi4edge.export.graph import Graph, WeightFile
from phi4edge.models.checkpoint import Checkpoint
from phi4edge.models.config import load_config
from phi4edge.models.phi3 import Phi3Weights

from .checkpoints import load_reference


def to_transformers_4x_spelling(cfg: dict) -> dict:
    """Phi-4-mini's published config.json: `rope_scaling` with `type`, theta and partial factor on top."""
    rope = cfg.pop("rope_parameters")
    out = {**cfg, "rope_theta": rope["rope_theta"], "partial_rotary_factor": rope["partial_rotary_factor"],
           "original_max_position_embeddings": rope["original_max_position_embeddings"],
           "rope_scaling": {"type": rope["rope_type"], "short_factor": rope["short_factor"],
                            "long_factor": rope["long_factor"]}}
    return out


def test_rope_scaling_spelling_of_transformers_4(checkpoints, bundles, tmp_path):
    ck = tmp_path / "ck4x"
    shutil.copytree(checkpoints["phi4mini"], ck)
    cfg = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps(to_transformers_4x_spelling(cfg)))
    old, new = load_config(checkpoints["phi4mini"]), load_config(ck)
    assert old.rope == new.rope and new.rope.kind == "longrope" and new.rope.rotary_dim == 48
    assert abs(new.rope.attention_factor - np.sqrt(1 + np.log(16384 / 4096) / np.log(4096))) < 1e-12
    bundle = export_model(ck, tmp_path / "b", precision="fp32", show_progress=False)
    prompt = list(range(30, 90))
    assert load(bundle).generate(prompt, max_new_tokens=10).token_ids == \
        load(bundles["phi4mini", "fp32"]).generate(prompt, max_new_tokens=10).token_ids


def test_decoder_takes_inputs_embeds(checkpoints, tmp_path):
    """The graph option multimodal prompts use: embeddings in (image/audio features merged there)."""
    import onnxruntime as ort
    ck = checkpoints["phi4mini"]
    cfg = load_config(ck)
    weights = WeightFile(tmp_path / "d.onnx.data")
    g = Graph("d", weights)
    DecoderBuilder(g, cfg, Phi3Weights(Checkpoint(ck), cfg), DecoderOptions(quant=None, inputs_embeds=True)).build()
    weights.close()
    import onnx
    onnx.save_model(g.model(), tmp_path / "d.onnx")
    ref = load_reference(ck)
    ids = torch.arange(40, 75)[None]
    with torch.no_grad():
        embeds = ref.model.embed_tokens(ids).numpy()
        expected = ref(ids).logits[0, -1].numpy()
    sess = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
    empty = np.zeros((1, cfg.num_kv_heads, 0, cfg.head_dim), np.float32)
    feeds = {"inputs_embeds": embeds, "attention_mask": np.ones((1, ids.shape[1]), np.int64)}
    feeds |= {f"past_key_values.{i}.{k}": empty for i in range(cfg.num_layers) for k in ("key", "value")}
    logits = sess.run(["logits"], feeds)[0][0, 0]
    assert np.abs(logits - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())
