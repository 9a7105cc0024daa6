"""Calibration for activation-aware methods: the inputs' second moments H = E[x x^T] of every decoder
linear, from a float32 numpy forward pass of the checkpoint over calibration text.

The text ships with the package (quant/calibration.txt, written for this purpose; never an
evaluation text). The pass runs layer by layer as the exporter asks for each layer's linears, so
only one layer's activations and Hessians are held: for Phi-4-mini at 2048 tokens that is 25 MB of
hidden states and 0.4 GB of Hessians, whatever the depth.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..models.config import DecoderConfig
from ..models.phi3 import LAYER_LINEARS, Phi3Weights
from ..quant import QuantConfig, mixed
from .rope import cos_sin

TEXT = Path(__file__).parent.parent / "quant" / "calibration.txt"   # phi4edge/quant/, package data
SEQ_LEN = 512
MAX_TOKENS = 4096
TABLE_ROWS = 16384
NAME = re.compile(r"layers\.(\d+)\.(qkv_proj|o_proj|gate_up_proj|down_proj)$")


def calibration_ids(tokenizer, max_tokens: int = MAX_TOKENS) -> np.ndarray:
    """[sequences, SEQ_LEN] token ids of the shipped calibration text (a `tokenizers` Tokenizer)."""
    ids = tokenizer.encode(TEXT.read_text()).ids[:max_tokens]
    n = max(1, len(ids) // SEQ_LEN)
    return np.array(ids[: n * SEQ_LEN] if len(ids) >= SEQ_LEN else ids, np.int64).reshape(n, -1)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


class Calibration:
    """Hessians of the decoder linears by graph name (`layers.{i}.qkv_proj`, ...), computed in order."""

    def __init__(self, cfg: DecoderConfig, weights: Phi3Weights, ids: np.ndarray):

        self.cfg, self.w = cfg, weights
        rope = cfg.rope
        cos, sin = cos_sin(rope, ids.shape[1], rope.short_factor if rope.kind == "longrope" else ())
        self.cos, self.sin = cos[None, :, None], sin[None, :, None]
        self.x = np.zeros(ids.shape + (cfg.hidden_size,), np.float32)   # residual stream
        for lo in range(0, cfg.vocab_size, TABLE_ROWS):   # Phi-4-mini's table is 2.4 GB as float32: read in slices
            rows = weights.vocab_matrix(weights.embed_key, slice(lo, min(cfg.vocab_size, lo + TABLE_ROWS)))
            hit = (ids >= lo) & (ids < lo + len(rows))
            self.x[hit] = rows[ids[hit] - lo]
        self.layer = -1
        self.hessians: dict[str, np.ndarray] = {}
        self.ids, self.moments = ids, True
        self._head: np.ndarray | None = None

    def hessian(self, name: str) -> np.ndarray | None:
        """H for the named decoder linear, or None for any other weight."""
        m = NAME.search(name)
        if m is None:
            return None
        layer = int(m.group(1))
        while self.layer < layer:
            self._advance()
        return self.hessians.get(m.group(2)) if self.layer == layer else None

    def head_importance(self) -> np.ndarray:
        """Mean squares [hidden] of the LM head's inputs (the final norm's output) on the calibration
        text: the table is written before the layers, so a pass of its own over every layer (no
        Hessians kept), computed once."""
        if self._head is None:
            probe = Calibration(self.cfg, self.w, self.ids)
            probe.moments = False
            while probe.layer < self.cfg.num_layers:
                probe._advance()
            h = rms_norm(probe.x, self.w.norm(None), self.cfg.rms_norm_eps)
            self._head = (h * h).reshape(-1, h.shape[-1]).mean(0)
        return self._head

    def _moment(self, x: np.ndarray) -> np.ndarray:
        if not self.moments:
            return np.empty((0, 0), np.float32)
        flat = x.reshape(-1, x.shape[-1])
        return (flat.T @ flat) / len(flat)

    def _rotate(self, t: np.ndarray) -> np.ndarray:
        r = self.cfg.rope.rotary_dim // 2
        a, b = t[..., :r], t[..., r:2 * r]
        return np.concatenate([a * self.cos - b * self.sin, b * self.cos + a * self.sin, t[..., 2 * r:]], -1)

    def _attention(self, qkv: np.ndarray) -> np.ndarray:
        c = self.cfg
        s, t, _ = qkv.shape
        d, hq, hk = c.head_dim, c.num_heads, c.num_kv_heads
        q = self._rotate(qkv[..., :hq * d].reshape(s, t, hq, d))
        k = self._rotate(qkv[..., hq * d:(hq + hk) * d].reshape(s, t, hk, d))
        v = qkv[..., (hq + hk) * d:].reshape(s, t, hk, d)
        # heads first and batched matmul (BLAS), not einsum's loops: 3.2 s -> 0.2 s of the embedded
        # model's 4-layer pass
        q = q.transpose(0, 2, 1, 3)                                        # [s, hq, t, d]
        k = np.repeat(k.transpose(0, 2, 3, 1), hq // hk, axis=1)          # [s, hq, d, t]
        v = np.repeat(v.transpose(0, 2, 1, 3), hq // hk, axis=1)          # [s, hq, t, d]
        scores = q @ k / np.float32(np.sqrt(d))
        scores += np.triu(np.full((t, t), -np.inf, np.float32), 1)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        return (scores @ v).transpose(0, 2, 1, 3).reshape(s, t, hq * d)

    def _advance(self) -> None:
        """Run the next layer on the calibration batch, recording its linears' Hessians."""
        self.layer += 1
        i, c, w = self.layer, self.cfg, self.w
        if i >= c.num_layers:
            return
        h = rms_norm(self.x, w.norm(i), c.rms_norm_eps)
        qkv_w = w.linear(i, "self_attn.qkv_proj")
        attn = self._attention(h @ qkv_w.T)
        o_w = w.linear(i, "self_attn.o_proj")
        self.hessians = {"qkv_proj": self._moment(h), "o_proj": self._moment(attn)}
        self.x = self.x + attn @ o_w.T
        h = rms_norm(self.x, w.norm(i, "post_attention_layernorm"), c.rms_norm_eps)
        gate, up = np.split(h @ w.linear(i, "mlp.gate_up_proj").T, 2, axis=-1)
        act = gate / (1 + np.exp(-gate)) * up
        self.hessians |= {"gate_up_proj": self._moment(h), "down_proj": self._moment(act)}
        self.x = self.x + act @ w.linear(i, "mlp.down_proj").T


def mixed_plan(cfg: DecoderConfig, weights: Phi3Weights, ids: np.ndarray, quant: QuantConfig) -> mixed.Plan:
    """Which decoder linears mixed precision stores in int8 under quant.bits_budget: a calibration
    pass of its own over every layer (the export's pass then starts afresh), measuring each linear."""
    cal = Calibration(cfg, weights, ids)

    def linears() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for i in range(cfg.num_layers):
            for module in LAYER_LINEARS:
                name = f"layers.{i}.{module.split('.')[-1]}"
                hessian = cal.hessian(name)
                assert hessian is not None   # every decoder linear has one
                yield name, weights.linear(i, module), hessian
    tables = 1 if cfg.tie_word_embeddings else 2
    return mixed.plan(linears(), quant.estimate, quant.block_size, quant.zero_points,
                      tables * quant.table_bits(cfg.vocab_size, cfg.hidden_size), tables * cfg.vocab_size * cfg.hidden_size,
                      quant.bits_budget)
