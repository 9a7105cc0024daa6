"""Audio input for Phi-4-multimodal with numpy (no torch): decoding (soundfile), downmix, resampling
to 16 kHz (soxr), and log-mel features equal to transformers' Phi4MultimodalFeatureExtractor."""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

from ..errors import Phi4EdgeError

SAMPLE_RATE = 16000


class AudioError(Phi4EdgeError):
    """An input audio file that cannot be used."""


@dataclass(frozen=True)
class AudioSettings:
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 80
    preemphasis: float = 0.97
    mel_min: float = 0.0
    mel_max: float = 7690.0
    compression_rate: int = 8     # encoder frames per feature frame (conv subsampling)
    downsample_rate: int = 1


@dataclass
class PreparedAudio:
    features: np.ndarray   # [frames, n_mels] log-mel

    @property
    def num_tokens(self) -> int:
        return num_audio_tokens(len(self.features))


def load_audio(source: str | Path | bytes, max_seconds: float | None = None) -> np.ndarray:
    """Decode wav/flac/ogg/mp3 (any integer or float format), average the channels, resample to
    16 kHz. With `max_seconds`, a longer file is refused from its header, before it is decoded."""
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise AudioError(f"{name}: no such file")
    opened = (lambda: io.BytesIO(source)) if isinstance(source, bytes) else (lambda: source)
    try:
        with soundfile.SoundFile(opened()) as f:
            rate, frames = f.samplerate, f.frames
            if rate <= 0:
                raise AudioError(f"{name}: invalid sample rate {rate}")
            if max_seconds is not None and frames / rate > max_seconds:
                raise AudioError(f"{name}: {frames / rate:.1f} s of audio is longer than this model's context "
                                 f"allows ({max_seconds:.1f} s)")
            data = f.read(dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError, OverflowError) as e:
        raise AudioError(f"{name}: not a readable audio file ({e})") from None
    if data.size == 0:
        raise AudioError(f"{name}: the file holds no audio samples")
    if not np.isfinite(data).all():
        raise AudioError(f"{name}: the audio contains NaN or infinite samples")
    return to_16k(data.mean(axis=1, dtype=np.float32), rate)


def to_16k(mono: np.ndarray, rate: int) -> np.ndarray:
    """A mono float32 waveform at the encoder's 16 kHz."""
    if rate == SAMPLE_RATE:
        return mono
    # a windowed-sinc resampler (libsoxr), not interpolation
    return soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)


def mel_filters(s: AudioSettings = AudioSettings()) -> np.ndarray:
    """[n_fft/2 + 1, n_mels] triangular filters on the Kaldi mel scale, triangles in mel space."""
    mel = lambda hz: 1127.0 * np.log(1.0 + hz / 700.0)
    edges = np.linspace(mel(s.mel_min), mel(s.mel_max), s.n_mels + 2)
    bins = mel(SAMPLE_RATE / s.n_fft * np.arange(s.n_fft // 2 + 1))
    slopes = edges[None, :] - bins[:, None]
    down = -slopes[:, :-2] / np.diff(edges)[:-1]
    up = slopes[:, 2:] / np.diff(edges)[1:]
    return np.maximum(0.0, np.minimum(down, up))


def log_mel(wave: np.ndarray, s: AudioSettings = AudioSettings()) -> np.ndarray:
    """[frames, n_mels] log-mel features; frames = (samples - 400) // 160 + 1."""
    if len(wave) < s.win_length:
        raise AudioError(f"audio of {len(wave) / SAMPLE_RATE * 1000:.0f} ms is too short: "
                         f"at least {s.win_length / SAMPLE_RATE * 1000:.0f} ms is needed")
    frames = np.lib.stride_tricks.sliding_window_view(wave.astype(np.float32), s.win_length)[::s.hop_length]
    previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)   # first sample pre-emphasised by itself
    emphasised = (frames - np.float32(s.preemphasis) * previous) * np.float32(32768)
    spectrum = np.fft.rfft(np.hamming(s.win_length) * emphasised, n=s.n_fft, axis=1).astype(np.complex64)
    power = np.abs(spectrum) ** 2
    return np.log(np.maximum(power @ mel_filters(s).astype(np.float32), 1.0)).astype(np.float32)


def num_audio_tokens(frames: int, s: AudioSettings = AudioSettings()) -> int:
    """Placeholder tokens for an audio of `frames` feature frames (about 12.5 per second)."""
    return math.ceil(math.ceil(frames / s.compression_rate) / s.downsample_rate)
