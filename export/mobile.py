"""ORT-format bundles: the graphs converted to onnxruntime's ORT format (`.ort`), which phones and
reduced ("minimal") onnxruntime builds load, plus `required_operators.config`, the operators of
all the bundle's graphs, for building such a reduced onnxruntime (`--include_ops_by_config`).

The conversion is onnxruntime's own (what `python -m onnxruntime.tools.convert_onnx_models_to_ort`
does): a session with the ONNX graph saves the optimised graph in ORT format, and the operator
list comes from `onnxruntime.tools.ort_format_model`. Graph optimisation level "basic" only:
- basic rewrites (constant folding, redundant-node removal) are plain ONNX and apply to every
  execution provider, so the graph stays claimable by NNAPI, XNNPACK, QNN or CoreML on a phone;
  "extended" fuses nodes into CPU-provider operators (FusedConv, QuickGelu, ...) that those cannot take;
- nothing at basic depends on the converting machine: at "all" onnxruntime bakes in x86's NCHWc
  convolution layout (AVX blocked kernels, none on ARM; onnxruntime's tool leaves it out for ARM);
- the fusions that matter for speed are already explicit in the exported graphs
  (GroupQueryAttention, MatMulNBits, SkipSimplifiedLayerNormalization), so the decoder's logits are
  identical to the ONNX bundle's at any level. ORT-format graphs load without further optimisation.

ORT format keeps every weight inside one FlatBuffers file, and FlatBuffers address at most 2 GiB:
onnxruntime (1.32) cannot write a larger graph (it fails and leaves an empty file), so a graph
whose weights exceed that is refused before converting (Phi-4-multimodal's int4 decoder, ~2.5 GB,
is one; its ONNX bundle, with external data, has no such limit).
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path
from typing import Literal

from ..bundle import external_data, file_table, open_bundle
from ..errors import Phi4EdgeError
from ..format import ORT_GRAPHS, ORT_SUFFIX, Manifest, OrtGraphs
from .staging import staging

OPTIMIZATION: Literal["basic"] = "basic"
REQUIRED_OPERATORS = "required_operators.config"
GENAI_CONFIG = "genai_config.json"
MAX_ORT_BYTES = 2 ** 31 - 1            # FlatBuffers' limit, for the whole file
_HEADROOM = 16 << 20                   # graph structure and alignment besides the weights


def ort_name(name: str) -> str:
    """decoder.onnx -> decoder.ort"""
    return str(Path(name).with_suffix(ORT_SUFFIX).as_posix())


def convert_graph(src: Path, dst: Path, data_bytes: int) -> None:
    """One ONNX graph (its external data beside it) to an ORT-format file."""
    import onnxruntime as ort
    if data_bytes + src.stat().st_size + _HEADROOM > MAX_ORT_BYTES:
        raise Phi4EdgeError(f"{src.name}: {(data_bytes + src.stat().st_size) / 2 ** 30:.2f} GiB of graph and weights; "
                            "an ORT-format file holds everything in one FlatBuffer of at most 2 GiB, so this graph "
                            "cannot be ORT format (use the ONNX bundle, whose weights stay in external data)")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    so.add_session_config_entry("session.save_model_format", "ORT")
    so.log_severity_level = 3
    try:
        ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    except Exception as e:   # onnxruntime raises its own exception types; report them as ours
        dst.unlink(missing_ok=True)   # a failed save leaves an empty or partial file
        raise Phi4EdgeError(f"{src.name}: onnxruntime could not convert it to ORT format ({str(e).strip()[:300]})") from None


def write_required_operators(graphs: list[Path], out: Path) -> None:
    """The operators (domain;opset;ops) of all `graphs`, combined, as onnxruntime's reduced-build
    config; the header names the graphs by file name, not by the (temporary) path they had."""
    handlers = logging.root.handlers[:]
    from onnxruntime.tools.ort_format_model import create_config_from_models
    logging.root.handlers[:] = handlers   # importing it calls logging.basicConfig: undo that
    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)   # and its "Created config" line
    create_config_from_models(graphs, out, False)
    body = [line for line in out.read_text().splitlines() if line and not line.startswith("#")]
    header = ["# Operators of the bundle's ORT-format graphs, for a reduced onnxruntime build:",
              "#   build.sh --minimal_build --include_ops_by_config required_operators.config ...",
              *(f"# - {g.name}" for g in sorted(graphs))]
    out.write_text("\n".join(header + body) + "\n")


def convert_graphs(src: Path, dst: Path, manifest: Manifest) -> Manifest:
    """Write every graph of the ONNX bundle in `src` (manifest `manifest`) to `dst` as ORT format,
    and `required_operators.config`; returns the manifest for `dst` (its files table still to fill).
    src and dst may be the same folder (export stages the ONNX graphs there first)."""
    if manifest.graph_format == "ort":
        raise Phi4EdgeError(f"{src}: the bundle's graphs are already ORT format")
    written = []
    for name in manifest.graphs.values():
        data = sum((src / d).stat().st_size for d in external_data(src / name, src))
        target = dst / ort_name(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        convert_graph(src / name, target, data)
        written.append(target)
    write_required_operators(written, dst / REQUIRED_OPERATORS)
    ort_version = version("onnxruntime")
    parts = {kind: replace(part, graph=ort_name(part.graph)) for kind, part in
             (("decoder", manifest.decoder), ("vision", manifest.vision), ("speech", manifest.speech)) if part}
    return replace(manifest, **parts,   # type: ignore[arg-type]
                   ort=OrtGraphs(optimization=OPTIMIZATION, onnxruntime=ort_version, required_operators=REQUIRED_OPERATORS),
                   requires=sorted({*manifest.requires, ORT_GRAPHS}))


def point_genai_config(folder: Path, manifest: Manifest) -> None:
    """genai_config.json names the decoder file; point it at the ORT-format one."""
    path = folder / GENAI_CONFIG
    if path.is_file():
        config = json.loads(path.read_text())
        decoder = config.get("model", {}).get("decoder", {})
        if "filename" in decoder:
            decoder["filename"] = manifest.decoder.graph
            path.write_text(json.dumps(config, indent=2))


def remove_onnx_graphs(folder: Path, manifest: Manifest) -> None:
    """The ONNX graphs of a bundle staged in `folder`, and their external data."""
    for name in manifest.graphs.values():
        for data in external_data(folder / name, folder):
            (folder / data).unlink()
        (folder / name).unlink()


def mobile_bundle(src_dir: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """`phi4edge mobile`: an ONNX bundle in, the same bundle with ORT-format graphs out (written
    atomically like an export). Every source file is checked against its sha256 first."""
    src = open_bundle(src_dir, verify=True)
    out_dir = Path(out_dir)
    with staging(out_dir, force, [src.path]) as tmp:
        manifest = convert_graphs(src.path, tmp, src.manifest)
        graph_files = {n for name in src.manifest.graphs.values() for n in [name, *external_data(src.path / name, src.path)]}
        for name in src.manifest.files:
            if name not in graph_files and not (tmp / name).exists():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src.file(name), tmp / name)
        point_genai_config(tmp, manifest)
        replace(manifest, created_by=f"phi4edge {version('phi4edge')}", files=file_table(tmp)).write(tmp)
    return out_dir
