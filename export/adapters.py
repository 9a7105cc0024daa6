"""LoRA adapters as `.onnx_adapter` files (onnxruntime's adapter format, read by
`onnxruntime.LoraAdapter` and onnxruntime-genai's `Adapters`).

Parameters are named after the decoder's LoRA graph inputs: A stored [in, r] and B stored [r, out]
with the scale (alpha/r, or alpha/sqrt(r) for rsLoRA) already folded in. In int8, each is stored
symmetric per column (A per rank, B per output) with NAME.scale beside it. The file's model_version
holds the base model's id, so an adapter exported for another base is refused at load.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..format import ADAPTER_FORMAT_VERSION, Adapter, DecoderNames, base_model_version
from ..models.lora import LoraAdapter
from .decoder import LORA_DTYPES


def quantize_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per column: (int8 [rows, cols], float32 scales [cols]); zero columns get scale 1."""
    scale = np.abs(w).max(axis=0) / 127
    scale[scale == 0] = 1
    return np.clip(np.rint(w / scale), -127, 127).astype(np.int8), scale.astype(np.float32)


def write_adapter(adapter: LoraAdapter, path: Path, precision: str, base_id: str) -> Adapter:
    """Write one adapter file; returns its manifest entry."""
    np_type = LORA_DTYPES[precision][1]
    params = {}
    for layer, module, a, b in adapter.tensors():
        for name, w in ((DecoderNames.lora(layer, module, "A"), a.T), (DecoderNames.lora(layer, module, "B"), b.T)):
            if np_type == np.int8:
                w, scale = quantize_columns(w)
                params[f"{name}.scale"] = ort.OrtValue.ortvalue_from_numpy(scale)
            params[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(w, dtype=np_type))
    fmt = ort.AdapterFormat()
    fmt.set_adapter_version(ADAPTER_FORMAT_VERSION)
    fmt.set_model_version(base_model_version(base_id))
    fmt.set_parameters(params)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt.export_adapter(str(path))
    return Adapter(file=path.parent.name + "/" + path.name, precision=precision, ranks=adapter.ranks,  # type: ignore[arg-type]
                   alpha=adapter.alpha, rslora=adapter.rslora, modules=adapter.modules,
                   layers=len({layer for layer, _ in adapter.pairs}), source=adapter.source, base_model=base_id)
