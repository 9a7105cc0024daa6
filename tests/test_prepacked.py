"""`phi4edge prepack`: the bundle's graphs saved with their weights packed for this CPU load in place
of the bundle's own and compute the same logits; an entry is used only for the bundle, onnxruntime
and CPU it was written for, and a damaged one is ignored with a warning."""
from __future__ import annotations

import json
import os
import shutil
import sys
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from phi4edge import load
from phi4edge.bundle import open_bundle
from phi4edge.cli import main
from phi4edge.runtime import prepacked
from phi4edge.runtime.benchmark import bench
from phi4edge.runtime.session import DecoderSession

from .serving import SPEC, embedded_bundle  # noqa: F401


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(prepacked.ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "prepacked"


@pytest.fixture
def bundle(embedded_bundle, tmp_path):  # noqa: F811
    return shutil.copytree(embedded_bundle, tmp_path / "bundle")   # tests below change its files' times


def logits(bundle, adapter: str | None) -> tuple[str, np.ndarray]:
    """The decoder's graph file and its logits for a prompt and three greedy steps."""
    b = open_bundle(bundle)
    decoder = DecoderSession(b)
    decoder.reserve(64)
    decoder.use_adapter(adapter)
    out = [decoder.forward(np.arange(10, 47, dtype=np.int64))]
    media = list(b.manifest.decoder.media.values())   # placeholder ids would want features
    for _ in range(3):
        scores = out[-1].copy()
        scores[media] = -np.inf
        out.append(decoder.forward(np.array([int(scores.argmax())], np.int64)))
    return decoder.session._model_path, np.stack(out)


def test_prepacked_graphs_load_instead_and_compute_the_same(bundle, cache):
    assert "prepacked   none for this CPU" in CliRunner().invoke(main, ["inspect", str(bundle)]).output
    plain = {a: logits(bundle, a) for a in (None, "speech")}
    result = CliRunner().invoke(main, ["prepack", str(bundle)])
    assert result.exit_code == 0, result.output
    assert [line.split()[:2] for line in result.output.splitlines()] == [["decoder", "wrote"], ["vision", "wrote"],
                                                                        ["speech", "wrote"]]
    assert len(list(cache.iterdir())) == 3
    for adapter, (path, expected) in plain.items():
        cached_path, got = logits(bundle, adapter)
        assert path.startswith(str(bundle)) and cached_path.startswith(str(cache))
        # the same kernels on the same packed bytes: measured bit-equal
        np.testing.assert_array_equal(got, expected)
    model = load(bundle)
    assert model.generate("Count from three to seven.", max_new_tokens=8).text.strip() == "three four five six seven"
    assert bench(model, prompt_lengths=(8,), new_tokens=2, repeats=1)["prepacked"] == ["decoder"]
    assert CliRunner().invoke(main, ["prepack", str(bundle)]).output.count("already there") == 3
    assert "prepacked   decoder, vision, speech for this CPU" in CliRunner().invoke(main, ["inspect", str(bundle)]).output


def resident(folder) -> tuple[int, int]:
    """(mappings, resident bytes) of this process's mappings of files under `folder` (Linux smaps)."""
    count = rss = 0
    current = False
    prefix = str(folder.resolve()) + "/"
    for line in open("/proc/self/smaps").read().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:   # a mapping's header line
            current = len(fields) == 6 and fields[5].startswith(prefix)
            count += current
        elif current and fields[0] == "Rss:":
            rss += int(fields[1]) * 1024
    return count, rss


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_the_load_hands_back_the_entrys_pages(bundle, cache):
    """Loading maps the whole entry (the weights as exported and as packed); what decoding reads comes
    back as it is read (32-layer Phi-4-mini: 3.52 GiB resident after load before, 2.77 GiB after 16
    tokens either way; bench/RESULTS.md)."""
    assert CliRunner().invoke(main, ["prepack", str(bundle)]).exit_code == 0
    decoder = DecoderSession(open_bundle(bundle))
    count, rss = resident(cache)
    assert count > 0 and rss == 0
    decoder.reserve(16)
    decoder.forward(np.arange(10, 14, dtype=np.int64))
    assert resident(cache)[1] > 0


def test_an_entry_serves_only_the_bundle_it_was_written_for(bundle, cache):
    assert CliRunner().invoke(main, ["prepack", str(bundle)]).exit_code == 0
    b = open_bundle(bundle)
    assert prepacked.find(b, "decoder") is not None
    data = bundle / "decoder.onnx.data"
    os.utime(data, ns=(data.stat().st_atime_ns, data.stat().st_mtime_ns + 10**9))   # the weights replaced in place
    assert prepacked.find(b, "decoder") is None
    assert logits(bundle, None)[0].startswith(str(bundle))


@pytest.mark.parametrize("change", ["onnxruntime", "cpu"])
def test_an_entry_serves_only_the_onnxruntime_and_cpu_it_was_written_for(bundle, cache, monkeypatch, change):
    assert CliRunner().invoke(main, ["prepack", str(bundle), "--threads", "1"]).exit_code == 0
    b = open_bundle(bundle)
    assert prepacked.find(b, "decoder") is not None
    if change == "onnxruntime":
        monkeypatch.setattr(prepacked.ort, "__version__", prepacked.ort.__version__ + ".post1")
    else:   # the same machine without AVX-512, say (a VM that hides it)
        monkeypatch.setattr(prepacked, "_cpu_flags", lambda: "fpu sse sse2 avx avx2 fma")
    assert prepacked.find(b, "decoder") is None


def test_a_damaged_entry_is_ignored_with_a_warning(bundle, cache):
    assert CliRunner().invoke(main, ["prepack", str(bundle)]).exit_code == 0
    entry = prepacked.cache_root() / prepacked.key(open_bundle(bundle), "decoder")
    graph = entry / json.loads((entry / prepacked.ENTRY).read_text())["graph"]
    graph.write_bytes(graph.read_bytes()[:-10])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert logits(bundle, None)[0].startswith(str(bundle))
    assert any("damaged prepacked entry" in str(w.message) for w in caught)


def test_clear_and_refusals(bundle, cache, tmp_path):
    assert CliRunner().invoke(main, ["prepack", str(bundle)]).exit_code == 0
    result = CliRunner().invoke(main, ["prepack", "--clear"])
    assert result.exit_code == 0 and result.output.startswith("removed ") and not cache.exists()
    result = CliRunner().invoke(main, ["prepack"])
    assert result.exit_code == 2 and "give a BUNDLE" in result.output
    (bundle / "decoder.onnx.data").write_bytes(b"\0" * (bundle / "decoder.onnx.data").stat().st_size)
    result = CliRunner().invoke(main, ["prepack", str(bundle)])
    assert result.exit_code == 1 and "decoder.onnx.data" in result.output and not cache.exists()
