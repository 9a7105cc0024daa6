"""Execution providers as onnxruntime offers them: short names, plugin libraries, and which
provider a session gave each node. Shared by the runtime (loading graphs) and export (compiling
QNN context binaries).

Qualcomm's QNN comes as the onnxruntime-qnn package: a plugin library that onnxruntime 1.32
registers at run time, selected per session with `add_provider_for_devices`. (A session given
`providers=["QNNExecutionProvider"]` instead ran every node on the CPU without a word, even once the
plugin was registered.) On x86-64 its HTP (NPU) backend is a simulator, which needs the target SoC
named: without `soc_model` it refused every MatMulNBits (QNN error 3110), and with it the HTP
computes in fp16 even in fp32 graphs. QNN's backend is one per process: one SoC setting per process.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import sys
from collections import Counter
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version

import onnxruntime as ort

from .errors import BundleError

CPU = "CPUExecutionProvider"
QNN = "QNNExecutionProvider"
WEBGPU = "WebGpuExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
PROVIDERS = {"cpu": CPU, "cuda": "CUDAExecutionProvider", "dml": "DmlExecutionProvider",
             "coreml": "CoreMLExecutionProvider", "qnn": QNN, "nnapi": "NnapiExecutionProvider",
             "xnnpack": "XnnpackExecutionProvider", "webgpu": WEBGPU, "openvino": OPENVINO}
# plugin libraries: provider -> (Python module with get_library_path(), phi4edge extra that installs it)
PLUGINS = {QNN: ("onnxruntime_qnn", "qnn"), WEBGPU: ("onnxruntime_ep_webgpu", "webgpu")}
SHORT = {v: k for k, v in PROVIDERS.items()}
# QNN's soc_model id compiled for by default: 69, the Snapdragon 8 Elite (SM8750, HTP v79); others: 57 = 8 Gen 3
# (SM8650, v75), 43 = 8 Gen 2 (SM8550, v73), 60 = X Elite (SC8380XP, v73). The simulator took each.
DEFAULT_SOC = 69
SIMULATED = platform.machine().lower() in ("x86_64", "amd64")   # no Snapdragon here: the HTP simulator


def short(provider: str) -> str:
    """'QNNExecutionProvider' -> 'qnn' (unknown names unchanged)."""
    return SHORT.get(provider, provider)


def qnn_installed() -> bool:
    """Whether the onnxruntime-qnn plugin (the `onnxruntime_qnn` module) is importable."""
    return QNN in plugins()


def qnn_version() -> str | None:
    """The installed onnxruntime-qnn, or None."""
    try:
        return version("onnxruntime-qnn") if qnn_installed() else None
    except PackageNotFoundError:
        return None


def plugins() -> set[str]:
    """Installed providers that come as plugin libraries rather than inside the onnxruntime build."""
    return {p for p, (module, _) in PLUGINS.items() if importlib.util.find_spec(module) is not None}


def plugin_devices(provider: str) -> list:
    """The devices of an execution provider that comes as a plugin library (PLUGINS), registering
    it on first use; empty when the plugin finds no device."""
    found = [d for d in ort.get_ep_devices() if d.ep_name == provider]
    if found:
        return found
    module, extra = PLUGINS[provider]
    if importlib.util.find_spec(module) is None:
        raise BundleError(f"execution provider '{short(provider)}' needs {module.replace('_', '-')} "
                          f"(pip install 'phi4edge[{extra}]')")
    ort.register_execution_provider_library(provider, importlib.import_module(module).get_library_path())
    return [d for d in ort.get_ep_devices() if d.ep_name == provider]


def qnn_devices() -> list:
    """The QNN devices of the onnxruntime-qnn plugin."""
    found = plugin_devices(QNN)
    if not found:
        raise BundleError("onnxruntime-qnn is installed but offers no QNN device to this onnxruntime")
    return found


def add_qnn(so: ort.SessionOptions, soc_model: int | None) -> None:
    """Select QNN's HTP backend for sessions made with `so` (the CPU stays the fallback unless
    `session.disable_cpu_ep_fallback` is set). The SoC is named only to the simulator: a device
    knows its own."""
    import onnxruntime_qnn
    options = {"backend_path": onnxruntime_qnn.get_qnn_htp_path()}
    if SIMULATED:
        options["soc_model"] = str(soc_model or DEFAULT_SOC)
        # libsndfile loaded after the simulator's first session misbehaved (its version string came
        # back as garbage, and reading an .ogg file killed the process): load it before
        import soundfile  # noqa: F401
    so.add_provider_for_devices(qnn_devices(), options)


def record_assignment(so: ort.SessionOptions) -> None:
    """Make sessions from `so` remember which provider runs each node (for `node_counts`)."""
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")


def node_counts(session: ort.InferenceSession) -> dict[str, int]:
    """{execution provider: nodes it runs} for a session made with `record_assignment` (empty from
    onnxruntime before 1.32, which cannot say)."""
    counts: Counter[str] = Counter()
    for sub in getattr(session, "get_provider_graph_assignment_info", lambda: [])():
        counts[sub.ep_name] += len(sub.get_nodes())
    return dict(counts)


def fallback_ops(session: ort.InferenceSession, accelerators: list[str]) -> Counter[str]:
    """Operator types of the nodes that none of `accelerators` runs, by count."""
    return Counter(node.op_type for sub in getattr(session, "get_provider_graph_assignment_info", lambda: [])()
                   if sub.ep_name not in accelerators for node in sub.get_nodes())


@contextmanager
def stdout_to_stderr():
    """Send this process's file descriptor 1 to stderr for the duration: the HTP simulator prints a
    line ("# LIBNATIVE: ...") to stdout when its first session is made, which would corrupt output
    such as `phi4edge run --json`."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
