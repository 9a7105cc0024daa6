"""Pieces both encoder graphs are made of (biased linears, LayerNorm, multi-head attention),
written for one encoder's weights and initializer prefix. Used by composition: the vision and
speech builders each hold one."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..quant import QuantConfig
from .graph import Graph
from .linear import linear


@dataclass(frozen=True)
class EncoderOps:
    g: Graph
    w: object                  # VisionWeights or SpeechWeights: .get(name) -> np.ndarray
    quant: QuantConfig | None
    prefix: str                # initializer name prefix, "vision" or "speech"
    attention_out: str         # the attention's output projection, as the checkpoint names it
    hidden_size: int
    num_heads: int
    eps: float

    def linear(self, name: str, x: str) -> str:
        """x @ W.T + b for a checkpoint Linear."""
        y = linear(self.g, f"{self.prefix}.{name}", x, self.w.get(f"{name}.weight"), self.quant)   # type: ignore[attr-defined]
        return self.g.op("Add", [y, self.g.weight(f"{self.prefix}.{name}.bias", self.w.get(f"{name}.bias"))])   # type: ignore[attr-defined]

    def layer_norm(self, name: str, x: str) -> str:
        g, w = self.g, self.w
        return g.op("LayerNormalization", [x, g.weight(f"{self.prefix}.{name}.weight", w.get(f"{name}.weight")),   # type: ignore[attr-defined]
                                           g.weight(f"{self.prefix}.{name}.bias", w.get(f"{name}.bias"))],   # type: ignore[attr-defined]
                    epsilon=self.eps, axis=-1)

    def heads(self, x: str) -> str:
        """[batch, L, hidden] -> [batch, heads, L, head_dim]"""
        split = self.g.op("Reshape", [x, self.g.const(f"{self.prefix}_heads_shape", np.array([0, 0, self.num_heads, -1]))])
        return self.g.op("Transpose", [split], perm=[0, 2, 1, 3])

    def attention(self, prefix: str, x: str, bias: str) -> str:
        """Multi-head self-attention of the checkpoint's `{prefix}.self_attn`, with an additive bias."""
        g = self.g
        q, k, v = (self.heads(self.linear(f"{prefix}.self_attn.{p}_proj", x)) for p in ("q", "k", "v"))
        scale = g.const(f"{self.prefix}_attn_scale", np.array((self.hidden_size // self.num_heads) ** -0.5, np.float32))
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])]), scale]), bias])
        ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        merged = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]),
                                  g.const(f"{self.prefix}_merge_shape", np.array([0, 0, self.hidden_size]))])
        return self.linear(f"{prefix}.self_attn.{self.attention_out}", merged)
