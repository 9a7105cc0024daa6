"""Phi-3 family config.json, read into one typed object.

Both spellings of the rotary settings are accepted: transformers 4.x writes `rope_scaling` and a
top-level `rope_theta`; 5.x writes `rope_parameters` holding theta, partial factor and scaling.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CheckpointError

SUPPORTED_ARCHITECTURES = {"Phi3ForCausalLM", "Phi4MMForCausalLM", "Phi4MultimodalForCausalLM"}
LONGROPE_ALIASES = {"longrope", "su", "yarn"}


@dataclass(frozen=True)
class RopeConfig:
    theta: float
    rotary_dim: int                       # dims rotated per head (partial rotary)
    kind: str                             # "default" or "longrope"
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()
    original_max_position: int = 0        # long factors apply beyond this many positions
    attention_factor: float = 1.0         # LongRoPE magnitude scale on cos/sin


@dataclass(frozen=True)
class DecoderConfig:
    model_type: str
    architecture: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    max_position: int
    rope: RopeConfig
    tie_word_embeddings: bool
    sliding_window: int | None
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    @property
    def qkv_size(self) -> int:
        return (self.num_heads + 2 * self.num_kv_heads) * self.head_dim

    def to_json(self) -> dict:
        """The fields the runtime needs, for the bundle manifest."""
        return {
            "model_type": self.model_type, "architecture": self.architecture,
            "hidden_size": self.hidden_size, "num_layers": self.num_layers,
            "num_heads": self.num_heads, "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim, "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size, "max_position": self.max_position,
            "tie_word_embeddings": self.tie_word_embeddings, "rope_kind": self.rope.kind,
            "rotary_dim": self.rope.rotary_dim,
            "original_max_position": self.rope.original_max_position,
            "bos_token_id": self.bos_token_id, "eos_token_ids": list(self.eos_token_ids),
            "pad_token_id": self.pad_token_id,
        }


def _ids(value) -> tuple[int, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, list) else (int(value),)


def _require(cfg: dict, key: str, path: Path):
    if key not in cfg or cfg[key] is None:
        raise CheckpointError(f"{path}: required field '{key}' is missing")
    return cfg[key]


def _count(cfg: dict, key: str, path: Path, default: int | None = None) -> int:
    """A positive integer field (sizes, counts): anything else names the field."""
    value = cfg.get(key) if cfg.get(key) is not None else default
    if value is None:
        raise CheckpointError(f"{path}: required field '{key}' is missing")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value <= 0:
        raise CheckpointError(f"{path}: field '{key}' is {value!r}; it must be a positive integer")
    return int(value)


def _rope(cfg: dict, head_dim: int, max_position: int, path: Path) -> RopeConfig:
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    partial = float(params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)))
    rotary_dim = int(head_dim * partial)
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if kind == "default":
        return RopeConfig(theta=theta, rotary_dim=rotary_dim, kind="default")
    if kind not in LONGROPE_ALIASES:
        raise CheckpointError(f"{path}: rope type '{kind}' is not supported (default or longrope)")
    short = tuple(float(x) for x in _require(params, "short_factor", path))
    long = tuple(float(x) for x in _require(params, "long_factor", path))
    if len(short) != rotary_dim // 2 or len(long) != rotary_dim // 2:
        raise CheckpointError(
            f"{path}: rope short_factor/long_factor have {len(short)}/{len(long)} entries, "
            f"expected rotary_dim/2 = {rotary_dim // 2}")
    original = int(params.get("original_max_position_embeddings")
                   or cfg.get("original_max_position_embeddings") or max_position)
    # Same rule as transformers: the paper's magnitude scale unless the config gives one.
    factor = params.get("factor") or max_position / original
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return RopeConfig(theta=theta, rotary_dim=rotary_dim, kind="longrope", short_factor=short,
                      long_factor=long, original_max_position=original,
                      attention_factor=float(attention_factor))


def load_config(model_dir: str | Path) -> DecoderConfig:
    """Read and validate `config.json` of a Phi-3-family checkpoint folder."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (is {model_dir} a Hugging Face checkpoint folder?)")
    try:
        cfg = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: must be a JSON object")
    archs = cfg.get("architectures") or []
    arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
    if arch is None:
        raise CheckpointError(
            f"{path}: architecture {archs or cfg.get('model_type')!r} is not supported; "
            f"phi4edge exports {sorted(SUPPORTED_ARCHITECTURES)}")
    text = cfg.get("text_config") or cfg   # transformers-native multimodal nests the LM config
    if not isinstance(text, dict):
        raise CheckpointError(f"{path}: field 'text_config' must be an object")
    hidden = _count(text, "hidden_size", path)
    heads = _count(text, "num_attention_heads", path)
    head_dim = _count(text, "head_dim", path, hidden // heads or None)
    kv_heads = _count(text, "num_key_value_heads", path, heads)
    if heads % kv_heads:
        raise CheckpointError(f"{path}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    max_position = _count(text, "max_position_embeddings", path)
    try:
        return _decoder_config(cfg, text, arch, hidden, heads, kv_heads, head_dim, max_position, path)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: malformed field ({e})") from None


def _decoder_config(cfg: dict, text: dict, arch: str, hidden: int, heads: int, kv_heads: int, head_dim: int,
                    max_position: int, path: Path) -> DecoderConfig:
    return DecoderConfig(
        model_type=str(cfg.get("model_type", "phi3")),
        architecture=arch,
        hidden_size=hidden,
        num_layers=_count(text, "num_hidden_layers", path),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=_count(text, "intermediate_size", path),
        vocab_size=_count(text, "vocab_size", path),
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-5)),
        max_position=max_position,
        rope=_rope(text, head_dim, max_position, path),
        tie_word_embeddings=bool(text.get("tie_word_embeddings", cfg.get("tie_word_embeddings", False))),
        sliding_window=text.get("sliding_window"),
        bos_token_id=text.get("bos_token_id"),
        eos_token_ids=_ids(text.get("eos_token_id")),
        pad_token_id=text.get("pad_token_id"),
        raw=cfg,
    )
