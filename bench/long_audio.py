"""A long audio file through a Phi-4-multimodal bundle: peak resident memory and real-time factor.

    python bench/long_audio.py BUNDLE --minutes 10

Writes a 44.1 kHz stereo FLAC of the given length (tones and noise), then runs one audio prompt
(decoding, resampling, log-mel, chunked speech encoder, prefill and a few tokens) and reports.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

from phi4edge import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--minutes", type=float, default=10.0)
    a = ap.parse_args()
    rate, seconds = 44100, a.minutes * 60
    path = Path(tempfile.mkdtemp()) / "long.flac"
    with soundfile.SoundFile(path, "w", rate, 2, format="FLAC") as f:   # written a minute at a time
        rng = np.random.default_rng(0)
        for start in range(0, int(seconds), 60):
            t = np.arange(int(min(60, seconds - start) * rate)) / rate + start
            tone = 0.2 * np.sin(2 * np.pi * (200 + 50 * np.sin(t / 7)) * t) + 0.02 * rng.standard_normal(t.size)
            f.write(np.stack([tone, tone], axis=1))
    model = load(a.bundle)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    result = model.generate("<|audio_1|>Transcribe the audio.", audios=[path], max_new_tokens=4)
    total = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = result.timings
    print(f"{a.minutes:g} min of 44.1 kHz stereo FLAC ({path.stat().st_size / 2**20:.1f} MiB), "
          f"{result.prompt_token_ids.count(model.audio_token_id)} audio tokens")
    print(f"  audio encode {t['audio_encode_ms'] / 1e3:.1f} s, prefill {t['prefill_ms'] / 1e3:.1f} s, total {total:.1f} s; "
          f"real-time factor {total / seconds:.4f} (encode only {t['audio_encode_ms'] / 1e3 / seconds:.4f})")
    print(f"  peak RSS {peak:.0f} MiB (after loading the bundle: {before:.0f} MiB)")


if __name__ == "__main__":
    main()
