"""Speech against transformers' Phi4MultimodalForCausalLM on tiny random checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from phi4edge.export import export_model
from phi4edge.runtime.audio import log_mel, num_audio_tokens
from phi4edge.runtime.bundle import open_bundle
from phi4edge.runtime.speech import SpeechEncoder

from .checkpoints import make_phi4mm


@pytest.fixture(scope="module")
def mm(tmp_path_factory):
    from transformers import Phi4MultimodalForCausalLM
    root = tmp_path_factory.mktemp("phi4mm-speech")
    ck = make_phi4mm(root / "native")
    bundle = export_model(ck, root / "fp32", precision="fp32", show_progress=False)
    ref = Phi4MultimodalForCausalLM.from_pretrained(ck, dtype=torch.float32, attn_implementation="eager").eval()
    return bundle, ref


@pytest.mark.parametrize("seconds", [0.3, 2.0, 45.0])
@pytest.mark.parametrize("mode", ["speech", "vision"])
def test_audio_embeddings_match_transformers(seconds, mode, mm):
    """Same log-mel in: our speech graph equals transformers' audio embedding, for the speech and
    the vision_speech projection; 45 s exercises the reference's 500-frame chunking."""
    bundle, ref = mm
    rng = np.random.default_rng(int(seconds * 10))
    wave = (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
    feats = log_mel(wave)
    n = num_audio_tokens(len(feats))
    ids = torch.full((1, n), ref.config.audio_config.audio_token_id)
    with torch.no_grad():
        expected = ref.model.embed_tokens_extend.audio_embed(
            ids, torch.zeros(1, n, ref.config.hidden_size), audio_input_features=torch.from_numpy(feats)[None],
            audio_embed_sizes=torch.tensor([n]), audio_projection_mode=mode)[0].numpy()
    got = SpeechEncoder(open_bundle(bundle))(feats, with_image=mode == "vision")
    assert got.shape == expected.shape
    err = np.abs(got - expected).max() / max(1.0, np.abs(expected).max())
    assert err < 1e-4, f"relative error {err:.2e}"
    print(f"{seconds}s {mode}: {n} audio tokens, max relative error {err:.1e}")
