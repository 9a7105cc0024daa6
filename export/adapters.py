"""LoRA adapters as `.onnx_adapter` files (onnxruntime's adapter format, read by
`onnxruntime.LoraAdapter` and onnxruntime-genai's `Adapters`).

Parameters are named after the decoder's LoRA graph inputs: A stored [in, r] and B stored [r, out]
with the scale (alpha/r, or alpha/sqrt(r) for rsLoRA) already folded in; int8 and int4 as
phi4edge/lora_codec.py describes. The file's model_version holds the base model's id, so an adapter
exported for another base is refused at load.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..format import ADAPTER_FORMAT_VERSION, Adapter, DecoderNames, base_model_version
from ..lora_codec import INT4_BLOCK, quantize_columns
from ..models.lora import LoraAdapter
from ..quant.blocks import symmetric
from .decoder import LORA_DTYPES

PRECISIONS = (*LORA_DTYPES, "int4")   # int4 files run on the int8 decoder's LoRA inputs


def graph_precision(precision: str) -> str:
    """The decoder's LoRA input precision for adapter files of `precision`."""
    return "int8" if precision == "int4" else precision


def _arrays(w: np.ndarray, precision: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(stored tensor, its scales or None) for one LoRA input's weight [rows, cols]."""
    if precision == "int4":   # a rank below the block makes one (even) block per column: no padding
        q = symmetric(w.T, 4, min(INT4_BLOCK, len(w) + len(w) % 2))
        return q.packed, q.scales
    if precision == "int8":
        return quantize_columns(w)
    return np.ascontiguousarray(w, dtype=LORA_DTYPES[precision][1]), None


def write_adapter(adapter: LoraAdapter, path: Path, precision: str, base_id: str) -> Adapter:
    """Write one adapter file; returns its manifest entry."""
    params = {}
    for layer, module, a, b in adapter.tensors():
        for name, w in ((DecoderNames.lora(layer, module, "A"), a.T), (DecoderNames.lora(layer, module, "B"), b.T)):
            stored, scale = _arrays(w, precision)
            params[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(stored))
            if scale is not None:
                params[f"{name}.scale"] = ort.OrtValue.ortvalue_from_numpy(scale)
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(ADAPTER_FORMAT_VERSION)
    fmt.set_model_version(base_model_version(base_id))
    fmt.set_parameters(params)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt.export_adapter(str(path))
    return Adapter(file=path.parent.name + "/" + path.name, precision=precision, ranks=adapter.ranks,  # type: ignore[arg-type]
                   alpha=adapter.alpha, rslora=adapter.rslora, modules=adapter.modules,
                   layers=len({layer for layer, _ in adapter.pairs}), source=adapter.source, base_model=base_id)
