"""LoRA adapters read into one form, whatever their source:

- a PEFT folder (adapter_config.json + adapter_model.safetensors), keys with or without the
  `base_model.model.` prefix, target modules as a list or a regex;
- the original Phi-4-multimodal checkpoint, whose `vision` and `speech` LoRAs sit in the shards
  (`...qkv_proj.lora_A.vision.weight`) with r and alpha in config.json's `vision_lora`/`speech_lora`.

Each adapter yields, per (layer, module), A [r, in] and B [out, r] with the scale folded into B.
"""
from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from .checkpoint import Checkpoint
from .config import DecoderConfig
from .phi3 import LAYER_LINEARS, linear_shapes

KEY = re.compile(r"(?:.*\.)?layers\.(\d+)\.(self_attn\.\w+|mlp\.\w+)\.lora_([AB])(?:\.(\w+))?\.weight$")
PHI4MM_ADAPTERS = {"vision": "vision_lora", "speech": "speech_lora"}


@dataclass
class LoraAdapter:
    """One adapter's LoRA pairs, located but not yet read: tensors are loaded when written."""

    name: str
    source: str
    ckpt: Checkpoint = field(repr=False)
    pairs: dict[tuple[int, str], tuple[str, str]] = field(repr=False)   # (layer, module) -> A key, B key
    scale: Callable[[int, str, int], float] = field(repr=False)        # (layer, module, rank) -> scale
    alpha: float = 0.0
    rslora: bool = False

    @property
    def ranks(self) -> list[int]:
        return sorted({self.ckpt.shape(a)[0] for a, _ in self.pairs.values()})

    @property
    def modules(self) -> list[str]:
        return sorted({m for _, m in self.pairs})

    def tensors(self) -> Iterator[tuple[int, str, np.ndarray, np.ndarray]]:
        """(layer, module, A [r, in], B [out, r] with the scale folded in), one pair at a time."""
        for (layer, module), (a_key, b_key) in sorted(self.pairs.items()):
            a = self.ckpt.get(a_key)
            yield layer, module, a, self.ckpt.get(b_key) * np.float32(self.scale(layer, module, a.shape[0]))


def _plain_scale(alpha: float, layer: int, module: str, rank: int) -> float:
    return _scale(alpha, rank, False)


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
    for (layer, module), (a_key, b_key) in sorted(adapter.pairs.items()):
        where = f"adapter '{adapter.name}' ({adapter.source}): layers.{layer}.{module}"
        if layer >= cfg.num_layers:
            raise CheckpointError(f"{where}: the base model has only {cfg.num_layers} layers")
        a, b = adapter.ckpt.shape(a_key), adapter.ckpt.shape(b_key)
        out_dim, in_dim = shapes[module]
        if len(a) != 2 or len(b) != 2 or a[1] != in_dim or b[0] != out_dim or a[0] != b[1]:
            raise CheckpointError(f"{where}: lora_A {list(a)} / lora_B {list(b)} do not fit the base "
                                  f"module [out {out_dim}, in {in_dim}]")


def _pairs(found: dict[tuple[int, str], dict[str, str]], name: str, source: str) -> dict[tuple[int, str], tuple[str, str]]:
    pairs = {}
    for (layer, module), ab in sorted(found.items()):
        if module not in LAYER_LINEARS:
            raise CheckpointError(f"adapter '{name}' ({source}): targets '{module}', but phi4edge applies LoRA to "
                                  f"{', '.join(LAYER_LINEARS)} only")
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"adapter '{name}' ({source}): layers.{layer}.{module} has lora_{''.join(ab)} "
                                  f"but not its pair")
        pairs[layer, module] = (ab["A"], ab["B"])
    if not pairs:
        raise CheckpointError(f"adapter '{name}' ({source}): no LoRA weights found")
    return pairs


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
    found: dict[tuple[int, str], dict[str, str]] = {}
    for key in ckpt.keys():
        m = KEY.match(key)
        if m is None:
            raise CheckpointError(f"{weights_path}: tensor '{key}' is not a LoRA weight of a decoder layer "
                                  f"(phi4edge applies LoRA to {', '.join(LAYER_LINEARS)} only)")
        layer, module, which, _ = m.groups()
        found.setdefault((int(layer), module), {})[which] = key
    alpha, rslora = float(cfg.get("lora_alpha", cfg.get("r", 8))), bool(cfg.get("use_rslora"))

    def scale_for(layer: int, module: str, rank: int) -> float:
        key = f"model.layers.{layer}.{module}"
        return _scale(float(_pattern_value(cfg.get("alpha_pattern"), key, alpha)), rank, rslora)
    return LoraAdapter(name, str(folder), ckpt, _pairs(found, name, str(folder)), scale_for, alpha, rslora)


def read_phi4mm(ckpt: Checkpoint, raw_config: dict) -> list[LoraAdapter]:
    """The `vision` and `speech` LoRAs stored inside an original Phi-4-multimodal checkpoint."""
    adapters = []
    for name, field_name in PHI4MM_ADAPTERS.items():
        found: dict[tuple[int, str], dict[str, str]] = {}
        for key in ckpt.keys():
            m = KEY.match(key)
            if m and m.group(4) == name:
                found.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = key
        if not found:
            continue
        settings = raw_config.get(field_name)
        if not settings or "lora_alpha" not in settings:
            raise CheckpointError(f"{ckpt.dir / 'config.json'}: '{field_name}' with lora_alpha is required for "
                                  f"the {name} LoRA found in the shards")
        alpha = float(settings["lora_alpha"])
        source = f"{ckpt.dir} ({field_name})"
        adapters.append(LoraAdapter(name, source, ckpt, _pairs(found, name, source),
                                    functools.partial(_plain_scale, alpha), alpha))
    return adapters


def save_peft_adapter(model, name: str, path: Path, prefix: bool = True) -> Path:
    """One adapter of a peft `PeftModel` as a PEFT folder (adapter_config.json +
    adapter_model.safetensors), keys with or without the `base_model.model.` prefix.
    Needs torch and peft (export-time only)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file
    state = get_peft_model_state_dict(model, adapter_name=name)
    if not prefix:
        state = {k.removeprefix("base_model.model."): v for k, v in state.items()}
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "adapter_model.safetensors"))
    config = model.peft_config[name].to_dict()
    if isinstance(config["target_modules"], set):
        config["target_modules"] = sorted(config["target_modules"])
    (path / "adapter_config.json").write_text(json.dumps(config, default=str, indent=2))
    return path
