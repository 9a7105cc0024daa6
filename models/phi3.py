"""Phi-3 family checkpoint layout: where each decoder weight lives, with its expected shape.

Covers Phi-3/3.5/4-mini (`Phi3ForCausalLM`) and the language model inside Phi-4-multimodal, whose
original checkpoint wraps LoRA-targeted layers PEFT-style (`...qkv_proj.base_layer.weight`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError
from .checkpoint import Checkpoint
from .config import DecoderConfig

LAYER_LINEARS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


def linear_shapes(c: DecoderConfig) -> dict[str, tuple[int, int]]:
    """[out, in] of each per-layer linear."""
    return {
        "self_attn.qkv_proj": (c.qkv_size, c.hidden_size),
        "self_attn.o_proj": (c.hidden_size, c.num_heads * c.head_dim),
        "mlp.gate_up_proj": (2 * c.intermediate_size, c.hidden_size),
        "mlp.down_proj": (c.hidden_size, c.intermediate_size),
    }


@dataclass
class Phi3Weights:
    """Reads the decoder's weights from a checkpoint, checking each shape against the config."""

    ckpt: Checkpoint
    cfg: DecoderConfig
    prefix: str = "model."

    def _key(self, name: str) -> str:
        key = self.prefix + name
        if key in self.ckpt:
            return key
        wrapped = key.replace(".weight", ".base_layer.weight")   # original phi4mm layout
        return wrapped if wrapped in self.ckpt else key

    def _check(self, key: str, shape: tuple[int, ...]) -> None:
        found = self.ckpt.shape(key)
        if found != shape:
            raise CheckpointError(f"{self.ckpt.dir}: tensor '{key}' has shape {list(found)}, "
                                  f"config.json implies {list(shape)}")

    def _read(self, key: str, shape: tuple[int, ...], rows: slice | None = None) -> np.ndarray:
        self._check(key, shape)
        return self.ckpt.get(key, rows)

    def linear(self, layer: int, module: str) -> np.ndarray:
        """[out, in] weight of one of LAYER_LINEARS."""
        return self._read(self._key(f"layers.{layer}.{module}.weight"), linear_shapes(self.cfg)[module])

    def norm(self, layer: int | None, which: str = "input_layernorm") -> np.ndarray:
        name = "norm.weight" if layer is None else f"layers.{layer}.{which}.weight"
        return self._read(self._key(name), (self.cfg.hidden_size,))

    @property
    def embed_key(self) -> str:
        return self._key("embed_tokens.weight")

    @property
    def lm_head_key(self) -> str | None:
        """None when the LM head is the tied embedding (no `lm_head.weight` in the shards)."""
        if self.cfg.tie_word_embeddings:
            return None
        if "lm_head.weight" not in self.ckpt:
            raise CheckpointError(f"{self.ckpt.dir}: 'lm_head.weight' missing and tie_word_embeddings is false")
        return "lm_head.weight"

    def vocab_matrix(self, key: str, rows: slice | None = None) -> np.ndarray:
        """Rows of the [vocab, hidden] embedding or LM head."""
        return self._read(key, (self.cfg.vocab_size, self.cfg.hidden_size), rows)

    def check(self) -> None:
        """Fail early, before any writing, if a tensor is missing or misshapen."""
        for key in filter(None, (self.embed_key, self.lm_head_key)):
            self._check(key, (self.cfg.vocab_size, self.cfg.hidden_size))
        self._check(self._key("norm.weight"), (self.cfg.hidden_size,))
        for i in range(self.cfg.num_layers):
            for module, shape in linear_shapes(self.cfg).items():
                self._check(self._key(f"layers.{i}.{module}.weight"), shape)
            for which in ("input_layernorm", "post_attention_layernorm"):
                self._check(self._key(f"layers.{i}.{which}.weight"), (self.cfg.hidden_size,))
