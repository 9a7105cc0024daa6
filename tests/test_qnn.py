"""The embedded model on Qualcomm's QNN HTP backend, as onnxruntime-qnn's x86-64 simulator runs it,
with the CPU fallback disabled: `phi4edge export --target qnn` compiles every graph whole, the
static graphs load with all their nodes on QNN, the context binaries give the dynamic CPU bundle's
greedy tokens, and a graph QNN takes only in part is refused under --require-provider (and warned
about without it). A few seconds of simulator time; `make qnn-check` runs the held-out sets.

The simulator ships for x86-64 only (onnxruntime-qnn has no Linux arm64 wheel): elsewhere these
tests are skipped, saying so."""
from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
from click.testing import CliRunner

from phi4edge import load
from phi4edge.bundle import open_bundle
from phi4edge.cli import main
from phi4edge.errors import BundleError
from phi4edge.export import export_model
from phi4edge.format import Manifest
from phi4edge.models import EMBEDDED
from phi4edge.providers import QNN, node_counts, qnn_installed
from phi4edge.runtime.session import ProviderFallbackWarning, ProviderRequest, load_graph

pytestmark = pytest.mark.skipif(not (qnn_installed() and platform.machine() == "x86_64"),
                                reason="QNN's HTP simulator: onnxruntime-qnn on x86-64 (pip install 'phi4edge[qnn]')")
STRICT = ProviderRequest(["qnn"], strict=True)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """The embedded model: its dynamic int4 bundle, and `export --target qnn` (context 128)."""
    root = tmp_path_factory.mktemp("qnn")
    result = CliRunner().invoke(main, ["export", str(EMBEDDED / "checkpoint"), "-o", str(root / "qnn"), "--target", "qnn",
                                       "--context", "128"])
    assert result.exit_code == 0, result.output
    return export_model(EMBEDDED / "checkpoint", root / "dynamic", show_progress=False), root / "qnn"


def test_export_compiles_every_graph_whole(bundles):
    manifest = Manifest.read(bundles[1])
    assert manifest.qnn is not None and manifest.qnn.soc_model == 69   # the Snapdragon 8 Elite
    assert set(manifest.qnn.contexts) == {"decoder", "prefill", "vision", "speech"}
    for kind, name in manifest.qnn.contexts.items():
        assert name == f"{kind}_ctx.onnx" and f"{kind}_ctx_qnn.bin" in manifest.files
        assert manifest.qnn.nodes[kind] > 50   # compiled with the CPU fallback disabled: all of them


def test_static_graphs_run_whole_on_qnn(bundles):
    """Loading the graphs themselves (the context binaries set aside), every node goes to QNN."""
    from dataclasses import replace

    from phi4edge.bundle import Bundle
    qnn = Bundle(bundles[1], Manifest.read(bundles[1]))
    graphs = Bundle(qnn.path, replace(qnn.manifest, qnn=None))
    for kind in ("decoder", "prefill", "vision", "speech"):
        counts = node_counts(load_graph(graphs, kind, providers=STRICT))
        assert list(counts) == [QNN] and counts[QNN] == qnn.manifest.qnn.nodes[kind], (kind, counts)   # type: ignore[union-attr]


def test_context_binaries_answer_as_the_cpu_bundle(bundles):
    """Greedy tokens of a text prompt (a padded prefill chunk, then decode steps) equal the dynamic
    CPU bundle's; the graphs loaded are the EPContext graphs, one QNN node each."""
    dynamic, qnn = bundles
    want = load(dynamic).generate("Count from three to seven.", max_new_tokens=8)
    result = CliRunner().invoke(main, ["run", str(qnn), "--prompt", "Count from three to seven.", "--max-new-tokens", "8",
                                       "--provider", "qnn", "--require-provider", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)   # the simulator's own stdout line went to stderr
    assert out["token_ids"] == want.token_ids and out["text"] == "three four five six seven"
    assert out["nodes"] == {"decoder": {QNN: 1}, "prefill": {QNN: 1}}


def test_partial_assignment_is_refused_or_reported(bundles):
    """The dynamic bundle's decoder (GroupQueryAttention, dynamic shapes) is mostly not QNN's."""
    dynamic = bundles[0]
    with pytest.raises(BundleError, match=r"decoder graph: qnn takes \d+ of its \d+ nodes, the CPU runs the rest "
                                          r"\(.*GroupQueryAttention|decoder graph: qnn takes .*refused"):
        load(dynamic, providers=STRICT)
    with pytest.warns(ProviderFallbackWarning, match=r"decoder graph: qnn takes \d+ of its \d+ nodes"):
        model = load(dynamic, providers=["qnn"])
    counts = model.node_counts()["decoder"]
    assert counts["CPUExecutionProvider"] > 10 * counts.get(QNN, 0)


def test_a_context_binary_qnn_cannot_load_falls_back_to_compiling(bundles, tmp_path):
    """A binary this QNN refuses (compiled for another SoC, or damaged: here its first 4 KB zeroed)
    is set aside with a warning, and the graph itself is compiled, still wholly on QNN."""
    import shutil
    copy = Path(shutil.copytree(bundles[1], tmp_path / "b"))
    binary = copy / "decoder_ctx_qnn.bin"
    data = bytearray(binary.read_bytes())
    data[:4096] = bytes(4096)
    binary.write_bytes(bytes(data))   # same size: passes the bundle's size check (not --verify)
    with pytest.warns(ProviderFallbackWarning, match="did not load its context binary decoder_ctx.onnx .*compiling the graph"):
        session = load_graph(open_bundle(copy), "decoder", providers=STRICT)
    assert list(node_counts(session)) == [QNN] and node_counts(session)[QNN] > 1


@pytest.mark.parametrize("head", ["int8", "int8-screened"])   # screened: a plain int8 head for QNN (no TopK there)
def test_other_quantisations_compile_whole(tmp_path, head):
    """hqq's zero points and an int8 LM head (export's --quant/--head) are QNN's too: the export,
    which compiles with the CPU fallback disabled, succeeds."""
    result = CliRunner().invoke(main, ["export", str(EMBEDDED / "checkpoint"), "-o", str(tmp_path / "b"), "--target", "qnn",
                                       "--context", "64", "--quant", "hqq", "--head", head])
    assert result.exit_code == 0, result.output
    manifest = Manifest.read(tmp_path / "b")
    assert manifest.quantization.method == "hqq" and "int8 LM head" in (manifest.quantization.tied_embeddings or "")
    assert manifest.qnn is not None and min(manifest.qnn.nodes.values()) > 50
