"""`phi4edge bench` measures what it says on a bundle (figures are not asserted: machines differ)."""
from __future__ import annotations

import json

from click.testing import CliRunner

from phi4edge.bundle import open_bundle
from phi4edge.cli import main
from phi4edge.runtime.benchmark import decode_bytes_per_token


def test_bench_text_bundle(bundles, tmp_path):
    out = tmp_path / "bench.json"
    chart = tmp_path / "bench.png"
    result = CliRunner().invoke(main, ["bench", str(bundles["phi4mini", "int4"]), "--repeats", "1",
                                       "--new-tokens", "4", "-o", str(out), "--chart", str(chart)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 10_000
    assert set(data["prefill_tokens_per_s"]) == {"16", "128", "512"}
    assert data["decode_tokens_per_s"] > 0 and data["time_to_first_token_ms"] > 0 and data["peak_rss_mb"] > 0
    assert data["read_bandwidth_gbs"] > 0 and 0 < data["fraction_of_roofline"]
    # the tied int4 embedding is the LM head: read whole every token, rotary caches excluded
    data_file = (bundles["phi4mini", "int4"] / "decoder.onnx.data").stat().st_size
    assert data["decode_bytes_per_token"] < data_file


def test_bench_multimodal_bundle_with_adapters(mm_with_adapters):
    from phi4edge import load
    from phi4edge.runtime.benchmark import bench
    _, bundle = mm_with_adapters
    data = bench(load(bundle), prompt_lengths=(16,), new_tokens=4, repeats=1)
    assert data["adapter"]["name"] == "speech" and data["adapter"]["switch_latency_ms"] < 5
    assert data["image_encode_ms"] > 0 and data["audio_encode_ms"] > 0


def test_untied_embedding_is_not_counted_as_read_per_token(bundles):
    untied = open_bundle(bundles["phi3mini", "int4"])   # untied: the embedding is only gathered
    assert decode_bytes_per_token(untied) < (bundles["phi3mini", "int4"] / "decoder.onnx.data").stat().st_size
