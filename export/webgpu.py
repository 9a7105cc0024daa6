"""The decoder's WebGPU form (`DecoderOptions(webgpu=True)`, `phi4edge export --target webgpu`): the same
model as the CPU graph, written so that onnxruntime's WebGPU EP, native and in onnxruntime-web,
computes it right. What differs, and why (measured on SwiftShader's WebGPU adapter, docs/webgpu.md):

- Attention from plain operators (rotary as Mul/Add on the first rotary_dim dims, the KV cache grown
  by Concat, MatMul/Softmax under a causal mask) instead of GroupQueryAttention. The WebGPU EP's
  prefill kernel for 32 or more new rows (flash attention) reads 8 keys per step but loads only
  `subgroup size` of them, so on adapters with subgroups of 4 (SwiftShader) every row past the 4th
  was wrong by up to 0.5 (rotary was right: the present keys matched CPU to 2e-7).
  Consequence: past and present are distinct tensors (present = past then the new rows); a runtime
  must not bind one buffer to both, as it may with GroupQueryAttention.
- LoRA A/B are plain inputs with no defaults: onnxruntime-web's API feeds graph inputs only, never
  initializers (its `inputNames` leave them out), so adapters could not be fed at all. A runtime
  feeds them on every call; for the base model rank-1 zeros, since the WebGPU EP crashed
  (natively: segmentation fault) on the rank-0 MatMul whose inner dimension is 0.
- Image/audio rows merge by Gather and Where instead of ScatterND, which onnxruntime-web's WebGPU EP
  refused with the empty updates of text prompts and decode steps.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ..models.config import DecoderConfig
from .graph import Graph

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64
MASKED = float(np.finfo(np.float32).min)   # additive score of a key a row may not see


class PlainAttention:
    """Causal grouped-query attention with partial rotary from plain ONNX operators, sharing the
    position-dependent pieces (rotary rows, mask) between layers."""

    def __init__(self, g: Graph, cfg: DecoderConfig, ids: str, total_len: str, cos: str, sin: str):
        self.g, self.cfg = g, cfg
        rep = cfg.num_heads // cfg.num_kv_heads
        axis0 = g.const("axis0", np.array([0], np.int64))
        total = g.op("Cast", [g.op("Unsqueeze", [total_len, axis0])], to=INT64)                       # [1]
        seq = g.op("Gather", [g.op("Shape", [ids]), g.const("idx1_1d", np.array([1]))])              # [1]
        past = g.op("Sub", [total, seq])
        # rotary rows of the new positions, [S, rotary_dim/2]
        self.cos, self.sin = (g.op("Slice", [table, past, total, axis0]) for table in (cos, sin))
        # queries are grouped as [batch, kv_heads, rep * S, head_dim] (rows r*S + s), keys as
        # [batch, kv_heads, T, head_dim]: one MatMul per layer, no repeated keys
        zero, one = g.const("zero_i64", np.array([0], np.int64)), g.const("one_i64", np.array(1, np.int64))
        rows = g.op("Add", [g.op("Range", [g.const("zero_scalar", np.array(0, np.int64)),
                                           g.op("Squeeze", [seq, axis0]), one]), past])              # [S]
        cols = g.op("Range", [g.const("zero_scalar", np.array(0, np.int64)), g.op("Squeeze", [total, axis0]), one])
        blocked = g.op("Greater", [g.op("Unsqueeze", [cols, zero]), g.op("Unsqueeze", [rows, g.const("axis1", np.array([1]))])])
        mask = g.op("Where", [blocked, g.const("masked", np.array(MASKED, np.float32)),
                              g.const("zero_f32", np.array(0.0, np.float32))])                       # [S, T]
        self.mask = g.op("Tile", [mask, g.const("mask_reps", np.array([rep, 1], np.int64))])        # [rep*S, T]
        self.scale = g.const("attn_scale", np.array(cfg.head_dim ** -0.5, np.float32))

    def heads(self, x: str, n: int) -> str:
        """[batch, S, n * head_dim] -> [batch, n, S, head_dim]"""
        g = self.g
        split = g.op("Reshape", [x, g.const(f"heads_{n}", np.array([0, 0, n, self.cfg.head_dim], np.int64))])
        return g.op("Transpose", [split], perm=[0, 2, 1, 3])

    def rotate(self, x: str, name: str) -> str:
        """Non-interleaved rotary on the first rotary_dim dims of [batch, heads, S, head_dim]."""
        g, cfg = self.g, self.cfg
        half = cfg.rope.rotary_dim // 2
        rest = cfg.head_dim - 2 * half
        x1, x2, *tail = g.split(x, [half, half, rest] if rest else [half, half], axis=-1, name=f"{name}.rotary_split")
        a = g.op("Sub", [g.op("Mul", [x1, self.cos]), g.op("Mul", [x2, self.sin])])
        b = g.op("Add", [g.op("Mul", [x2, self.cos]), g.op("Mul", [x1, self.sin])])
        return g.op("Concat", [a, b, *tail], axis=-1, name=f"{name}.rotary")

    def __call__(self, layer: int, qkv: str, past_k: str, past_v: str, present_k: str, present_v: str) -> str:
        """Attention output [batch, S, hidden] of packed qkv; writes the present key/value outputs."""
        g, cfg = self.g, self.cfg
        h, kv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q, k, v = g.split(qkv, [h * d, kv * d, kv * d], axis=-1, name=f"layers.{layer}.qkv_split")
        q = self.rotate(self.heads(q, h), f"layers.{layer}.q")
        k = self.rotate(self.heads(k, kv), f"layers.{layer}.k")
        keys = g.op("Concat", [past_k, k], [present_k], axis=2)
        values = g.op("Concat", [past_v, self.heads(v, kv)], [present_v], axis=2)
        grouped = g.op("Reshape", [g.op("Mul", [q, self.scale]), g.const("grouped", np.array([0, kv, -1, d], np.int64))])
        scores = g.op("Add", [g.op("MatMul", [grouped, g.op("Transpose", [keys], perm=[0, 1, 3, 2])]), self.mask])
        ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), values])                      # [B, kv, rep*S, d]
        ctx = g.op("Reshape", [ctx, g.const("ungrouped", np.array([0, h, -1, d], np.int64))])
        return g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]),
                                g.const("merged", np.array([0, 0, h * d], np.int64))], name=f"layers.{layer}.attn")


def merge_rows(g: Graph, embeds: str, ids: str, name: str, token_id: int, hidden: int) -> str:
    """Put the rows of `name` ([n, hidden], in order) at the positions holding `token_id`, by
    Gather and Where: a zero row is appended so that the index table is never empty."""
    is_media = g.op("Equal", [ids, g.const(f"{name}_token_id", np.array(token_id, np.int64))])       # [B, S]
    count = g.op("Gather", [g.op("Shape", [name]), g.const("idx0_1d", np.array([0]))])              # [1] = n
    nth = g.op("Sub", [g.op("CumSum", [g.op("Cast", [is_media], to=INT64), g.const("axis1_scalar", np.array(1, np.int64))]),
                       g.const("one_i64", np.array(1, np.int64))])
    index = g.op("Where", [is_media, nth, count])                                                  # row n: the zero row
    table = g.op("Concat", [name, g.const(f"zero_row_{hidden}", np.zeros((1, hidden), np.float32))], axis=0)
    rows = g.op("Gather", [table, index])                                                          # [B, S, hidden]
    return g.op("Where", [g.op("Unsqueeze", [is_media, g.const("axis_last", np.array([-1], np.int64))]), rows, embeds],
                name=f"merge_{name}")
