"""Speech against transformers' Phi4MultimodalForCausalLM on tiny random checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from phi4edge.bundle import open_bundle
from phi4edge.export import export_model
from phi4edge.runtime.audio import log_mel, num_audio_tokens
from phi4edge.runtime.speech import SpeechEncoder

from .compare import assert_greedy_matches, hf_greedy, int4_vs_fp32


@pytest.mark.parametrize("seconds", [0.3, 2.0, 45.0])
@pytest.mark.parametrize("mode", ["speech", "vision"])
def test_audio_embeddings_match_transformers(seconds, mode, mm):
    """Same log-mel in: our speech graph equals transformers' audio embedding, for the speech and
    the vision_speech projection; 45 s exercises the reference's 500-frame chunking."""
    _, bundle, ref = mm
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


def _wave(seconds: float, seed: int) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _check_reference(pm, adapter: str, result, **media) -> None:
    pm.set_adapter(adapter)
    assert_greedy_matches(result.token_ids, *hf_greedy(pm, result.prompt_token_ids, 10, **media))


def test_audio_prompt_greedy_matches_transformers_with_speech_adapter(mm_with_adapters):
    from phi4edge import load
    pm, bundle = mm_with_adapters
    model = load(bundle)
    for seconds in (0.7, 2.5):
        wave = _wave(seconds, int(seconds * 10))
        result = model.generate("<|audio_1|>Transcribe the audio.", audios=[wave], max_new_tokens=10)
        feats = log_mel(wave)
        n = num_audio_tokens(len(feats))
        assert result.adapter == "speech" and result.prompt_token_ids.count(8) == n
        _check_reference(pm, "speech", result, audio_input_features=torch.from_numpy(feats)[None],
                         audio_embed_sizes=torch.tensor([n]))


def test_image_and_audio_prompt_uses_vision_adapter_and_vision_speech_projection(mm_with_adapters):
    from PIL import Image
    from transformers import Phi4MultimodalImageProcessor

    from phi4edge import load
    from phi4edge.runtime.image import PreparedImage, preprocess
    pm, bundle = mm_with_adapters
    model = load(bundle)
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (300, 500, 3), dtype=np.uint8))
    pixels = Phi4MultimodalImageProcessor()(image, return_tensors="pt")
    ours = preprocess(image)
    same = PreparedImage(pixels["image_pixel_values"][0].numpy(), pixels["image_attention_mask"][0].numpy() > 0,
                         ours.grid, ours.num_tokens)
    wave = _wave(1.2, 3)
    result = model.generate("<|image_1|><|audio_1|>What do you see and hear?", images=[same], audios=[wave],
                            max_new_tokens=10)
    assert result.adapter == "vision"
    feats = log_mel(wave)
    _check_reference(
        pm, "vision", result, image_pixel_values=pixels["image_pixel_values"],
        image_sizes=pixels["image_sizes"], image_attention_mask=pixels["image_attention_mask"],
        audio_input_features=torch.from_numpy(feats)[None], audio_embed_sizes=torch.tensor([num_audio_tokens(len(feats))]))


def test_cli_audio_option_at_48k_stereo(mm_with_adapters, tmp_path):
    import json

    import soundfile
    from click.testing import CliRunner

    from phi4edge.cli import main
    _, bundle = mm_with_adapters
    t = np.arange(48000) / 48000
    soundfile.write(tmp_path / "clip.wav", np.stack([np.sin(2 * np.pi * 300 * t)] * 2, axis=1) * 0.3, 48000)
    result = CliRunner().invoke(main, ["run", str(bundle), "--audio", str(tmp_path / "clip.wav"), "--json",
                                       "--prompt", "Transcribe the audio.", "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["adapter"] == "speech" and out["prompt_token_ids"].count(8) == 13 and out["timings"]["audio_encode_ms"] > 0
    (tmp_path / "bad.wav").write_bytes(b"RIFF nonsense")
    bad = CliRunner().invoke(main, ["run", str(bundle), "--audio", str(tmp_path / "bad.wav"), "--prompt", "hi"])
    assert bad.exit_code != 0 and "not a readable audio file" in bad.output and "Traceback" not in bad.output


def test_int4_bundle_answers_an_audio_prompt(mm_with_adapters, tmp_path):
    from phi4edge import load
    _, fp32_bundle = mm_with_adapters
    int4 = load(export_model(fp32_bundle.parent / "native", tmp_path / "int4", show_progress=False))
    fp32 = load(fp32_bundle)
    mels = [fp32.prepare_audio(_wave(0.5 + seed * 0.4, seed)) for seed in range(6)]
    agree, err = int4_vs_fp32(fp32, int4, mels, lambda m, mel: m.audio_features([mel], False),
                              "<|audio_1|>Transcribe the audio.", "audios")
    print(f"\nint4 vs fp32 audio prompts: first-token agreement {agree:.0%} over {len(mels)} clips, "
          f"mean relative audio-embedding error {err:.3f}")
    assert err < 0.35   # catches a broken quantised graph; the figure itself is reported
    assert int4.generate("<|audio_1|>Hi", audios=[_wave(1.0, 9)], max_new_tokens=3).adapter == "speech"


def test_short_clip_and_silence_end_to_end(mm_with_adapters):
    from phi4edge import load
    _, bundle = mm_with_adapters
    model = load(bundle)
    for wave in (_wave(0.05, 1), np.zeros(16000, np.float32)):
        result = model.generate("<|audio_1|>Transcribe the audio.", audios=[wave], max_new_tokens=3)
        assert result.adapter == "speech" and result.prompt_token_ids.count(8) == num_audio_tokens(len(log_mel(wave)))
        assert 1 <= len(result.token_ids) <= 3
