"""A per-machine cache of a bundle's graphs with their weights already packed for this CPU.

At every load onnxruntime optimises the graph and MLAS repacks each MatMulNBits weight for the
CPU's kernels: 5.4-7.5 s of the 32-layer decoder's session creation (bench/RESULTS.md, issue 21).
onnxruntime can save the optimised graph with the packed weights in its external data
(`session.save_external_prepacked_constant_initializers`) and later map them instead of packing.
That saved graph is specific to the CPU's instruction set and to the onnxruntime version, so it
cannot ship in a bundle: `phi4edge prepack BUNDLE` writes it to a cache on this machine, keyed by
the bundle's manifest (which holds every file's sha256), the graph files' sizes and times, the
onnxruntime version and the CPU's feature flags, and the runtime uses an entry only when all of
these match. Anything else loads the bundle's own graph, as before.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
import warnings
from pathlib import Path

import onnxruntime as ort

from .. import __version__
from ..bundle import Bundle, sha256
from ..errors import BundleError
from ..format import MANIFEST

ENV = "PHI4EDGE_CACHE"   # the cache folder; default $XDG_CACHE_HOME/phi4edge or ~/.cache/phi4edge
ENTRY = "entry.json"


def cache_root() -> Path:
    """The folder holding prepacked graphs (one sub-folder per bundle graph and machine)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser() / "prepacked"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "phi4edge" / "prepacked"


def _cpu_flags() -> str:
    """The CPU's feature flags, which pick MLAS's kernels and so the packed layout."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return " ".join(sorted(set(line.split(":", 1)[1].split())))
    except OSError:
        pass
    return platform.processor()


def key(bundle: Bundle, kind: str) -> str:
    """What an entry for `kind` must match: the manifest, the graph's files as they are on disk,
    the onnxruntime and phi4edge versions and the CPU."""
    graph = bundle.manifest.graphs[kind]
    files = {name: bundle.file(name).stat() for name in bundle.manifest.files
             if name == graph or name.startswith(graph + ".")}
    parts = {"manifest": hashlib.sha256((bundle.path / MANIFEST).read_bytes()).hexdigest(), "kind": kind,
             "files": {n: [s.st_size, s.st_mtime_ns] for n, s in sorted(files.items())},
             "onnxruntime": ort.__version__, "machine": platform.machine(), "cpu": _cpu_flags(),
             "phi4edge": __version__}   # its session options shape the saved graph
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def cacheable(bundle: Bundle, kind: str, providers: list[str]) -> bool:
    """Whether `kind` loads as a plain ONNX graph on the CPU alone (what the cache holds)."""
    m = bundle.manifest
    return (providers == ["CPUExecutionProvider"] and m.graph_format == "onnx" and m.static is None
            and kind in m.graphs)


def kinds(bundle: Bundle) -> list[str]:
    """The bundle's graphs that the cache can hold (those it loads on the CPU alone)."""
    return [k for k in bundle.manifest.graphs if cacheable(bundle, k, ["CPUExecutionProvider"])]


def find(bundle: Bundle, kind: str) -> Path | None:
    """The cached graph for `kind` on this machine, or None when there is none that matches. An entry
    whose graph file was changed since it was written is ignored with a warning."""
    folder = cache_root() / key(bundle, kind)
    try:
        entry = json.loads((folder / ENTRY).read_text())
        graph = folder / entry["graph"]
        if sha256(graph) == entry["sha256"]:
            return graph
    except (OSError, ValueError, KeyError, TypeError):
        if not folder.exists():
            return None
    warnings.warn(f"{folder}: a damaged prepacked entry, ignored (phi4edge prepack --clear removes it)", stacklevel=2)
    return None


def write(bundle: Bundle, kind: str, so: ort.SessionOptions) -> tuple[Path, bool]:
    """Save `kind` optimised, with its weights packed for this CPU, into the cache, loading it with the
    runtime's session options `so` (runtime.session.session_options); returns the entry's folder and
    whether it was written now (False: it was there already). Atomic: a half-written entry is never
    used (it is built in a temporary folder and renamed)."""
    root = cache_root()
    folder = root / key(bundle, kind)
    if find(bundle, kind) is not None:
        return folder, False
    graph = bundle.manifest.graphs[kind]
    name = Path(graph).name
    tmp = root / f".{folder.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        so.optimized_model_filepath = str(tmp / name)
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", name + ".data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        so.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
        try:
            ort.InferenceSession(str(bundle.file(graph)), so, providers=["CPUExecutionProvider"])
        except Exception as e:   # onnxruntime's own error types; a full disk surfaces here too
            raise BundleError(f"{bundle.path}: {kind} graph could not be prepacked into {root} "
                              f"({str(e).strip().splitlines()[0][:200]})") from None
        entry = {"graph": name, "sha256": sha256(tmp / name), "bundle": str(bundle.path.resolve()), "kind": kind,
                 "onnxruntime": ort.__version__, "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (tmp / ENTRY).write_text(json.dumps(entry, indent=1))
        if find(bundle, kind) is not None:   # another `prepack` of this bundle finished first
            return folder, False
        shutil.rmtree(folder, ignore_errors=True)   # a damaged entry under the same key
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder, True


def clear() -> int:
    """Remove every cached entry; returns the bytes freed."""
    root = cache_root()
    freed = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0
    shutil.rmtree(root, ignore_errors=True)
    return freed
