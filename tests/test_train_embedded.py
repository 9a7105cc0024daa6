"""The embedded model's training script: speech batches of like lengths, and a clear error for a
training pool too small to draw them from (training itself takes ~37 minutes: see
models/embedded/README.md)."""
from __future__ import annotations

import random

from click.testing import CliRunner

from scripts.train_embedded import draw_similar, main


def test_draw_similar_picks_neighbours_in_length():
    pool = sorted(range(3000))   # stands in for clips sorted by length
    rng = random.Random(0)
    for size in (1, 4, 12, 16):
        picked = draw_similar(pool, rng, size)
        assert len(set(picked)) == size   # distinct clips
        assert max(picked) - min(picked) < 4 * size   # from one window of four batches
    assert draw_similar([7], rng, 1) == [7]   # the training-time report draws from one clip


def test_small_speech_pool_is_refused(tmp_path):
    result = CliRunner().invoke(main, ["-o", str(tmp_path / "out"), "--speech-pool", "10"])
    assert result.exit_code == 2
    assert "--speech-pool" in result.output and "10" in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()
