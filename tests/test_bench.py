"""`phi4edge bench` measures what it says on a bundle (figures are not asserted: machines differ)."""
from __future__ import annotations

import json
import os
import platform
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from phi4edge.bundle import open_bundle
from phi4edge.cli import main
from phi4edge.runtime import prepacked
from phi4edge.runtime.benchmark import (
    KERNEL_FLAGS,
    _initializer_bytes,
    cpu_name,
    decode_bytes_per_token,
    last_level_cache_bytes,
    read_bandwidth,
)
from phi4edge.runtime.session import session_options

from .test_quant_peers import bench_module


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
    memory = data["memory_after_load"]
    assert memory["rss_bytes"] >= memory["anon_bytes"] > 0 and memory["file_bytes"] > 0
    weights = _initializer_bytes(open_bundle(bundles["phi4mini", "int4"]))
    assert memory["decoder_weight_bytes"] == sum(length for _, length in weights)
    # the tied int4 embedding is the LM head: read whole every token, rotary caches excluded
    data_file = (bundles["phi4mini", "int4"] / "decoder.onnx.data").stat().st_size
    assert data["decode_bytes_per_token"] < data_file


def test_bench_multimodal_bundle_with_adapters(mm_with_adapters):
    from phi4edge import load
    from phi4edge.runtime.benchmark import bench
    _, bundle = mm_with_adapters
    data = bench(load(bundle), prompt_lengths=(16,), new_tokens=4, repeats=1)
    assert data["adapter"]["name"] == "speech" and data["adapter"]["switch_latency_ms"] < 5
    assert data["adapter"]["ratio_to_text_only"] > 0 and data["adapter"]["own_session"] is False   # fp32 files, no entry
    assert data["image_encode_ms"] > 0 and data["audio_encode_ms"] > 0


def test_untied_embedding_is_not_counted_as_read_per_token(bundles):
    untied = open_bundle(bundles["phi3mini", "int4"])   # untied: the embedding is only gathered
    assert decode_bytes_per_token(untied) < (bundles["phi3mini", "int4"] / "decoder.onnx.data").stat().st_size


def test_bandwidth_probe_reads_far_more_than_the_last_level_cache():
    probe = read_bandwidth(repeats=1)
    assert probe.gbs > 0 and probe.best_gbs >= probe.gbs
    assert probe.llc_bytes == last_level_cache_bytes() and probe.buffer_bytes >= 8 * (probe.llc_bytes or 0)
    assert probe.buffer_bytes >= 512 << 20 and probe.threads == len(os.sched_getaffinity(0))


def test_load_hands_back_the_weight_pages_only_prepacking_read(bundles):
    """onnxruntime maps the external data and prepacking reads it whole; what stays mapped (scales,
    the tied embedding) leaves RSS after load and comes back a page at a time as decode reads it."""
    from phi4edge.runtime.memory import file_mappings
    from phi4edge.runtime.session import DecoderSession
    path = bundles["phi4mini", "int4"]
    decoder = DecoderSession(open_bundle(path))
    mapped = file_mappings(path)
    assert mapped and _resident(path) == 0
    decoder.reserve(8)
    logits = decoder.forward(np.array([5, 6, 7], np.int64)).copy()
    assert 0 < _resident(path) < (path / "decoder.onnx.data").stat().st_size
    decoder.reserve(8)
    np.testing.assert_array_equal(decoder.forward(np.array([5, 6, 7], np.int64)), logits)


def _resident(folder) -> int:
    """Resident bytes of this process's mappings of files under `folder`."""
    prefix, total, inside = str(folder.resolve()) + "/", 0, False
    for line in open("/proc/self/smaps"):
        first = line.split()[0]
        if "-" in first and not first.endswith(":"):
            inside = line.rstrip().split(maxsplit=5)[-1].startswith(prefix)
        elif inside and first == "Rss:":
            total += int(line.split()[1]) * 1024
    return total


def test_peers_script_measures_each_runtime_in_its_own_process(bundles, tmp_path, monkeypatch):
    """bench/peers.py: the phi4edge workers (one loading its graphs from a `phi4edge prepack` cache)
    and the onnxruntime-genai one (which reads our bundle's genai_config.json) answer every
    measurement over the pipe; ratios are per-round, to phi4edge."""
    peers = bench_module("peers")
    bundle = str(bundles["phi4mini", "int4"])
    env = os.environ | {"PHI4EDGE_CACHE": str(tmp_path / "none")}
    monkeypatch.setenv("PHI4EDGE_CACHE", str(tmp_path / "cache"))
    prepacked.write(open_bundle(bundle), "decoder", session_options())
    runtimes = {"phi4edge": (sys.executable, "phi4edge", bundle, env),
                "phi4edge prepacked": (sys.executable, "phi4edge", bundle, os.environ.copy()),
                "onnxruntime-genai": (sys.executable, "genai", bundle, env)}
    out = peers.measure(runtimes, threads=1, tokens=4, prefills=[8], repeats=1)
    assert set(out) == {"decode", "prefill 8", "memory"}
    for what in ("decode", "prefill 8"):
        assert set(out[what]) == set(runtimes) and out[what]["phi4edge"]["ours_over_this"] == 1.0
        assert all(v["tokens_per_s"] > 0 for v in out[what].values())
    for m in out["memory"].values():
        assert m["peak"] >= m["after_load"]["rss"] >= m["after_load"]["anon"] > 0 and m["load_s"] > 0 and m["kernels"]
    assert peers.cold_ttft_s(sys.executable, "phi4edge", bundle, 1, env) > 0


def test_peers_script_names_a_worker_that_dies(tmp_path):
    """A runtime that cannot load its model ends the run with one line naming the worker, not a JSON error."""
    peers = bench_module("peers")
    with pytest.raises(SystemExit, match=r"phi4edge worker for .*missing died while loading"):
        peers.Worker(sys.executable, "phi4edge", str(tmp_path / "missing"), 1, os.environ.copy())


def test_cpu_name_reports_the_machine_and_its_kernel_extensions():
    name = cpu_name()
    assert f"{platform.machine()}, {os.cpu_count()} cores;" in name
    if platform.machine() == "x86_64":   # every x86 CI machine here has AVX2 at least
        listed = name.rsplit(";", 1)[1]
        assert "avx2" in listed and all(f in KERNEL_FLAGS for f in listed.replace(")", "").replace(",", " ").split())
