"""Audio input: decoding, resampling, and log-mel features against transformers' extractor."""
from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from phi4edge.runtime.audio import AudioError, load_audio, log_mel, mel_filters, num_audio_tokens


def _file(wave: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, wave, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def test_mel_filters_equal_transformers():
    from transformers.audio_utils import mel_filter_bank
    ref = mel_filter_bank(num_frequency_bins=257, num_mel_filters=80, min_frequency=0, max_frequency=7690,
                          sampling_rate=16000, triangularize_in_mel_space=True, mel_scale="kaldi")
    np.testing.assert_allclose(mel_filters(), ref, atol=1e-12)


@pytest.mark.parametrize("seconds", [0.05, 1.0, 3.7])
def test_log_mel_equals_transformers(seconds):
    from transformers import Phi4MultimodalFeatureExtractor
    rng = np.random.default_rng(int(seconds * 100))
    t = np.arange(int(seconds * 16000)) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    ref = Phi4MultimodalFeatureExtractor()(wave, sampling_rate=16000, return_tensors="np")
    ours = log_mel(wave)
    assert ours.shape == ref["audio_input_features"][0].shape
    err = np.abs(ours - ref["audio_input_features"][0]).max()
    assert err < 1e-4, err
    assert num_audio_tokens(len(ours)) == int(ref["audio_embed_sizes"][0])
    print(f"{seconds}s: {len(ours)} frames, {num_audio_tokens(len(ours))} tokens, max |error| {err:.1e}")


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_any_rate_and_stereo_becomes_16k_mono(rate):
    t = np.arange(int(rate * 0.5)) / rate
    tone = 0.5 * np.sin(2 * np.pi * 300 * t)
    stereo = np.stack([tone, tone], axis=1)
    wave = load_audio(_file(stereo, rate, subtype="PCM_16"))
    assert abs(len(wave) - 8000) <= 1 and wave.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    assert abs(np.argmax(spectrum) * 16000 / len(wave) - 300) < 4   # the tone survives resampling
    assert np.abs(wave).max() < 0.55


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_32"), ("WAV", "FLOAT"), ("FLAC", "PCM_24"), ("OGG", "VORBIS")])
def test_formats(fmt, subtype):
    t = np.arange(16000) / 16000
    wave = load_audio(_file(0.3 * np.sin(2 * np.pi * 500 * t), 16000, fmt, subtype))
    assert len(wave) == 16000 and 0.25 < np.abs(wave).max() < 0.35


def test_silence_and_short_clip():
    assert np.isfinite(log_mel(np.zeros(16000, np.float32))).all()
    assert log_mel(np.zeros(800, np.float32)).shape == (3, 80)   # 0.05 s: 3 frames, 1 token
    with pytest.raises(AudioError, match="too short"):
        log_mel(np.zeros(100, np.float32))


def test_bad_audio_gives_clear_errors(tmp_path):
    with pytest.raises(AudioError, match="not a readable audio file"):
        load_audio(b"definitely not audio")
    with pytest.raises(AudioError, match="not a readable audio file"):
        load_audio(b"")
    with pytest.raises(AudioError, match="no audio samples"):
        load_audio(_file(np.zeros((0, 1)), 16000))
    nan = np.zeros(1000)
    nan[10] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        load_audio(_file(nan, 16000, subtype="FLOAT"))
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "missing.flac")
