"""LoRA adapters read into one form, whatever their source:

- a PEFT folder (adapter_config.json + adapter_model.safetensors), keys with or without the
  `base_model.model.` prefix, target modules as a list or a regex;
- the original Phi-4-multimodal checkpoint, whose `vision` and `speech` LoRAs sit in the shards
  (`...qkv_proj.lora_A.vision.weight`) with r and alpha in config.json's `vision_lora`/`speech_lora`.

Each adapter becomes, per (layer, module), A [r, in] and B [out, r] with the scale folded into B.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint
from .config import DecoderConfig
from .errors import CheckpointError
from .phi3 import LAYER_LINEARS, linear_shapes

KEY = re.compile(r"(?:.*\.)?layers\.(\d+)\.(self_attn\.\w+|mlp\.\w+)\.lora_([AB])(?:\.(\w+))?\.weight$")
PHI4MM_ADAPTERS = {"vision": "vision_lora", "speech": "speech_lora"}


@dataclass
class LoraAdapter:
    name: str
    source: str
    weights: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = field(repr=False)   # A [r,in], scaled B [out,r]
    alpha: float = 0.0
    rslora: bool = False

    @property
    def ranks(self) -> set[int]:
        return {a.shape[0] for a, _ in self.weights.values()}

    @property
    def modules(self) -> list[str]:
        return sorted({m for _, m in self.weights})


def _scale(alpha: float, rank: int, rslora: bool) -> float:
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def _pattern_value(patterns: dict, module_key: str, default):
    """PEFT's rank_pattern / alpha_pattern: a key matches a module name ending in it (or as regex)."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?{key}$", module_key):
            return value
    return default


def check_fits(adapter: LoraAdapter, cfg: DecoderConfig) -> None:
    """Refuse an adapter whose modules or shapes do not fit the base model, naming the culprit."""
    shapes = linear_shapes(cfg)
    for (layer, module), (a, b) in adapter.weights.items():
        where = f"adapter '{adapter.name}' ({adapter.source}): layers.{layer}.{module}"
        if layer >= cfg.num_layers:
            raise CheckpointError(f"{where}: the base model has only {cfg.num_layers} layers")
        out_dim, in_dim = shapes[module]
        if a.shape[1] != in_dim or b.shape[0] != out_dim or a.shape[0] != b.shape[1]:
            raise CheckpointError(f"{where}: lora_A {list(a.shape)} / lora_B {list(b.shape)} do not fit the base "
                                  f"module [out {out_dim}, in {in_dim}]")


def _collect(pairs: dict[tuple[int, str], dict[str, np.ndarray]], name: str, source: str,
             scale_for) -> dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]:
    weights = {}
    for (layer, module), ab in sorted(pairs.items()):
        if module not in LAYER_LINEARS:
            raise CheckpointError(f"adapter '{name}' ({source}): targets '{module}', but phi4edge applies LoRA to "
                                  f"{', '.join(LAYER_LINEARS)} only")
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"adapter '{name}' ({source}): layers.{layer}.{module} has lora_{''.join(ab)} "
                                  f"but not its pair")
        a, b = ab["A"], ab["B"]
        weights[layer, module] = (a, b * np.float32(scale_for(layer, module, a.shape[0])))
    if not weights:
        raise CheckpointError(f"adapter '{name}' ({source}): no LoRA weights found")
    return weights


def read_peft(name: str, folder: str | Path) -> LoraAdapter:
    """A PEFT LoRA adapter folder."""
    folder = Path(folder)
    cfg_path, weights_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: not found (is {folder} a PEFT adapter folder?)")
    if not weights_path.is_file():
        hint = " (adapter_model.bin: re-save it with safe_serialization=True)" if (folder / "adapter_model.bin").exists() else ""
        raise CheckpointError(f"{weights_path}: not found{hint}")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r} is not LoRA")
    for flag in ("use_dora", "lora_bias"):
        if cfg.get(flag):
            raise CheckpointError(f"{cfg_path}: {flag}=true is not supported (plain LoRA only)")
    ckpt = Checkpoint(weights_path)
    pairs: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for key in ckpt.keys():
        m = KEY.match(key)
        if m is None:
            raise CheckpointError(f"{weights_path}: tensor '{key}' is not a LoRA weight of a decoder layer "
                                  f"(phi4edge applies LoRA to {', '.join(LAYER_LINEARS)} only)")
        layer, module, which, _ = m.groups()
        pairs.setdefault((int(layer), module), {})[which] = ckpt.get(key)
    alpha, rslora = float(cfg.get("lora_alpha", cfg.get("r", 8))), bool(cfg.get("use_rslora"))

    def scale_for(layer: int, module: str, rank: int) -> float:
        key = f"model.layers.{layer}.{module}"
        return _scale(float(_pattern_value(cfg.get("alpha_pattern"), key, alpha)), rank, rslora)
    return LoraAdapter(name, str(folder), _collect(pairs, name, str(folder), scale_for), alpha, rslora)


def read_phi4mm(ckpt: Checkpoint, raw_config: dict) -> list[LoraAdapter]:
    """The `vision` and `speech` LoRAs stored inside an original Phi-4-multimodal checkpoint."""
    adapters = []
    for name, field_name in PHI4MM_ADAPTERS.items():
        pairs: dict[tuple[int, str], dict[str, np.ndarray]] = {}
        for key in ckpt.keys():
            m = KEY.match(key)
            if m and m.group(4) == name:
                pairs.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = key
        if not pairs:
            continue
        settings = raw_config.get(field_name)
        if not settings or "lora_alpha" not in settings:
            raise CheckpointError(f"{ckpt.dir / 'config.json'}: '{field_name}' with lora_alpha is required for "
                                  f"the {name} LoRA found in the shards")
        alpha = float(settings["lora_alpha"])
        loaded = {k: {w: ckpt.get(key) for w, key in ab.items()} for k, ab in pairs.items()}
        adapters.append(LoraAdapter(name, f"{ckpt.dir} ({field_name})",
                                    _collect(loaded, name, str(ckpt.dir), lambda l, m, r: _scale(alpha, r, False)),
                                    alpha))
    return adapters
