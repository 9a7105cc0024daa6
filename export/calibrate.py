"""Calibration for activation-aware methods and mixed precision: the inputs' second moments
H = E[x x^T] of every decoder linear, from a float32 numpy forward pass of the checkpoint over
calibration text.

The text ships with the package (quant/calibration.txt, written for this purpose; never an
evaluation text). One pass (`calibrate`) runs the layers in order and quantises each layer's linears
while its Hessians exist, so only one layer's activations and Hessians are held (for Phi-4-mini at
4,096 tokens 50 MB of hidden states and 0.4 GB of Hessians, whatever the depth); it also measures each
linear's output error for mixed precision and, at the end, the LM head's inputs for the table. The
32-layer Phi-4-mini took three passes before (one for the table, one for mixed precision, one for
the export: ~35 min of CPU before the first layer was written); docs/quantization.md has the time now.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import Phi4EdgeError
from ..models.config import DecoderConfig
from ..models.phi3 import LAYER_LINEARS, Phi3Weights, linear_shapes
from ..progress import progress
from ..quant import BITS_BUDGET, CALIBRATED, METHODS, QuantConfig, QuantizedWeight, mixed
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
    """The float32 forward pass: Hessians of the decoder linears by graph name (`layers.{i}.qkv_proj`,
    ...), computed layer by layer in order."""

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

    def hessian(self, name: str) -> np.ndarray | None:
        """H for the named decoder linear, or None for any other weight (or a layer already passed)."""
        m = NAME.search(name)
        if m is None:
            return None
        layer = int(m.group(1))
        while self.layer < layer:
            self.advance()
        return self.hessians.get(m.group(2)) if self.layer == layer else None

    def head_importance(self) -> np.ndarray:
        """Mean squares [hidden] of the LM head's inputs (the final norm's output) on the calibration
        text; runs the layers not yet run."""
        while self.layer < self.cfg.num_layers:
            self.advance()
        h = rms_norm(self.x, self.w.norm(None), self.cfg.rms_norm_eps)
        return (h * h).reshape(-1, h.shape[-1]).mean(0)

    @staticmethod
    def _moment(x: np.ndarray) -> np.ndarray:
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

    def advance(self) -> None:
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



@dataclass
class Calibrated:
    """What the calibration pass leaves for the export: each decoder linear quantised by the configured
    method (with its Hessian for a calibrated one), its inputs' mean squares, the LM head's inputs'
    mean squares and the mixed-precision choice. The exporter takes each linear once."""

    weights: dict[str, QuantizedWeight]
    diagonals: dict[str, np.ndarray]
    head: np.ndarray
    plan: mixed.Plan | None = None
    taken: set[str] = field(default_factory=set)

    def weight(self, name: str) -> QuantizedWeight | None:
        """The linear's quantised weight from the pass (None for a weight the pass did not see)."""
        if name in self.taken:   # freed once written: a second request would quietly lose the calibration
            raise Phi4EdgeError(f"{name}: quantised twice in one export (internal error)")
        q = self.weights.pop(name, None)
        if q is not None:
            self.taken.add(name)
        return q

    def diagonal(self, name: str) -> np.ndarray | None:
        """The linear's inputs' mean squares (H's diagonal), for re-quantising it in int8."""
        return self.diagonals.get(name)

    def head_importance(self) -> np.ndarray:
        return self.head


def calibrate(cfg: DecoderConfig, weights: Phi3Weights, ids: np.ndarray, quant: QuantConfig,
              show_progress: bool = True) -> Calibrated:
    """One calibration pass: every decoder linear quantised by quant's method at quant's bits and block
    (with its Hessian if the method is calibrated), and, with a bits budget, the int8 choice from each
    one's measured output error tr(E H E^T) (quant/mixed.py)."""
    cal = Calibration(cfg, weights, ids)
    done, diagonals, measured = {}, {}, []
    with progress(cfg.num_layers, "calibrate", "layer", show_progress) as tick:
        for i in range(cfg.num_layers):
            cal.advance()
            for module in LAYER_LINEARS:
                key = module.split(".")[-1]
                name, w, h = f"layers.{i}.{key}", weights.linear(i, module), cal.hessians[key]
                q = METHODS[quant.method](w, quant.bits, quant.block_size, h if quant.method in CALIBRATED else None)
                done[name], diagonals[name] = q, np.diag(h).copy()
                if quant.bits_budget:
                    measured.append((name, w.shape, mixed.output_error(w, q, h)))
            tick()
    out = Calibrated(done, diagonals, cal.head_importance())
    if quant.bits_budget:
        out.plan = mixed.plan(measured, quant.block_size, quant.zero_points, *tables(cfg, quant), quant.bits_budget)
    return out


def tables(cfg: DecoderConfig, quant: QuantConfig) -> tuple[int, int]:
    """(stored bits, weights) of the vocabulary table(s): one when the embedding and head are tied."""
    count = 1 if cfg.tie_word_embeddings else 2
    return count * quant.table_bits(cfg.vocab_size, cfg.hidden_size), count * cfg.vocab_size * cfg.hidden_size


def default_budget(cfg: DecoderConfig, quant: QuantConfig) -> float:
    """--bits-budget's default: BITS_BUDGET for a calibrated method (its pass measures the sensitivity
    anyway) whose int4 linears and table leave room under it, as the defaults do (5.396 bits/weight at
    Phi-4-mini's shapes); else 0, no mixed precision (a bigger --block-size or --head can fill it)."""
    if quant.method not in CALIBRATED:
        return 0.0
    bits, params = mixed.base(list(linear_shapes(cfg).values()) * cfg.num_layers, quant.block_size, quant.zero_points,
                              *tables(cfg, quant))
    return BITS_BUDGET if bits < BITS_BUDGET * params else 0.0
