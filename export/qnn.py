"""QNN context binaries for a static-shapes bundle (`phi4edge export --target qnn`).

Each static graph is compiled by onnxruntime-qnn for one SoC with the CPU fallback disabled (so a
graph that QNN does not take whole fails the export) and saved as an EPContext graph,
`KIND_ctx.onnx`, beside its compiled binary `KIND_ctx_qnn.bin` (`ep.context_embed_mode` 0: the
binary stays a file of its own). A device then loads the binary instead of compiling the graph:
on the simulator the embedded model's decoder loaded in 0.06 s against 0.4-0.7 s to compile, with
bit-identical outputs. One binary per graph: the simulator could not load a binary holding two
graphs (it crashed, or answered QNN_COMMON_ERROR_NOT_SUPPORTED), so the prefill and decoder graphs
do not share weights inside QNN.
"""
from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from ..errors import CheckpointError
from ..format import Qnn
from ..progress import progress
from ..providers import add_qnn, node_counts, qnn_version, record_assignment, stdout_to_stderr


def check_available() -> None:
    if qnn_version() is None:
        raise CheckpointError("--target qnn compiles QNN context binaries and needs onnxruntime-qnn "
                              "(pip install 'phi4edge[qnn]'); --target static writes the graphs alone")


def compile_contexts(folder: Path, graphs: dict[str, str], soc_model: int, show_progress: bool = True) -> Qnn:
    """KIND_ctx.onnx + KIND_ctx_qnn.bin beside each graph; returns the manifest's `qnn` section."""
    contexts, nodes = {}, {}
    with progress(len(graphs), "compile for QNN", "graph", show_progress) as tick:
        for kind, name in graphs.items():
            target = Path(name).with_name(f"{Path(name).stem}_ctx.onnx").as_posix()
            so = ort.SessionOptions()
            so.log_severity_level = 4   # the refusal below says it in one line; QNN would log every node
            record_assignment(so)
            for key, value in (("session.disable_cpu_ep_fallback", "1"), ("ep.context_enable", "1"),
                               ("ep.context_file_path", str(folder / target)), ("ep.context_embed_mode", "0")):
                so.add_session_config_entry(key, value)
            add_qnn(so, soc_model)
            try:
                with stdout_to_stderr():
                    session = ort.InferenceSession(str(folder / name), so)
            except Exception as e:   # onnxruntime's own exception types
                raise CheckpointError(f"{name}: QNN did not take the whole graph for SoC {soc_model} "
                                      f"({str(e).strip().splitlines()[0][:300]})") from None
            contexts[kind], nodes[kind] = target, sum(node_counts(session).values())
            tick()
    return Qnn(soc_model=soc_model, contexts=contexts, onnxruntime_qnn=qnn_version() or "", nodes=nodes)
