"""The Phi-3 decoder over a fixed context window, from operators Qualcomm's QNN HTP backend takes.

Written once with the row count free, then saved twice with it fixed (export/static.py): the
prefill graph (`prefill_chunk` rows per call) and the decoder graph (one row), both reading one
weight file. Per layer: SimplifiedLayerNormalization -> qkv (MatMulNBits) -> ONNX RotaryEmbedding
(opset 23) over in-graph cos/sin tables picked by position_ids -> attention from MatMul/Softmax over
[cache ; this call's rows] with an additive bias -> o_proj -> residual Add -> MLP. The runtime
keeps the KV cache; the graph returns only the rows it adds (runtime/static.py).

Measured on QNN's HTP simulator (onnxruntime-qnn 2.7.0, soc_model 60) with the embedded model, each
choice against what it replaces:
- GroupQueryAttention is not an HTP operator (refused; the probe before this work forced it and
  found its fused partial rotary wrong); ONNX's RotaryEmbedding (opset 23) is taken (the probe
  found com.microsoft's refused); SkipSimplifiedLayerNormalization, NonZero and ScatterND (the
  dynamic graph's media merge) are refused; GatherBlockQuantized is GPU-only; a node with any
  dynamic dimension ("Cannot get shape") stays on the CPU. The dynamic decoder put 5 of its 120
  nodes on QNN; these graphs put all of theirs (docs/qnn.md).
- Grouped-query attention without a GQA operator: q [1, heads, S, d] reshaped to [1, kv, G*S, d]
  meets its KV head's keys in one MatMul (the bias repeated G times), so keys and values are never
  copied per query head.
- Reshapes say 0 (copy) and -1 (infer) rather than S, so both graphs have the same nodes.
- The embedding is an fp16 table under a plain Gather (the int4 table feeds the LM head only).
- LoRA A/B are plain inputs of one rank (zeros without an adapter): static shapes rule out the
  dynamic bundle's rank-0 defaults, and a context binary with a graph per adapter would not load.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
from onnx import TensorProto

from ..errors import CheckpointError
from ..format import DecoderNames, StaticDecoderNames
from ..models.config import DecoderConfig
from ..models.phi3 import Phi3Weights, linear_shapes
from ..quant import QuantConfig
from .decoder import VOCAB_CHUNK_ROWS, DecoderBuilder, DecoderOptions, Table
from .graph import Graph
from .linear import linear
from .rope import cos_sin

FLOAT = TensorProto.FLOAT
ROWS, PAST = "rows", "past"   # the free dimensions, fixed per saved graph


class StaticDecoderBuilder:
    """Inputs and outputs per phi4edge.format.StaticDecoderNames (see the module docstring)."""

    def __init__(self, g: Graph, cfg: DecoderConfig, weights: Phi3Weights, quant: QuantConfig | None,
                 context: int, lora_rank: int, media: bool):
        self.g, self.cfg, self.w, self.quant = g, cfg, weights, quant
        self.context, self.lora_rank, self.media = context, lora_rank, media
        sizes = {k for _, k in linear_shapes(cfg).values()}
        if quant is not None and any(k % quant.block_size for k in sizes):
            fits = [b for b in (64, 32, 16) if not any(k % b for k in sizes)]
            raise CheckpointError(f"input sizes {sorted(k for k in sizes if k % quant.block_size)} are not multiples of "
                                  f"block size {quant.block_size}, and QNN takes whole blocks only: " +
                                  (f"use --block-size {fits[0]}" if fits else "use --precision fp32"))
        # the dynamic decoder's vocabulary writer and LM head (int4/int8, or the fp32 table); a screened
        # head is a plain int8 one here (QNN has neither TopK nor GatherBlockQuantized)
        plain = replace(quant, head="int8") if quant is not None and quant.screened else quant
        self.vocab = DecoderBuilder(g, cfg, weights, DecoderOptions(quant=plain))

    def linear(self, layer: int, module: str, x: str) -> str:
        """A layer linear, plus (x @ A) @ B when the graph has LoRA inputs."""
        g, w = self.g, self.w.linear(layer, module)
        y = linear(g, f"layers.{layer}.{module.split('.')[-1]}", x, w, self.quant)
        if not self.lora_rank:
            return y
        a = g.input(DecoderNames.lora(layer, module, "A"), FLOAT, [w.shape[1], self.lora_rank])
        b = g.input(DecoderNames.lora(layer, module, "B"), FLOAT, [self.lora_rank, w.shape[0]])
        return g.op("Add", [y, g.op("MatMul", [g.op("MatMul", [x, a]), b])])

    def rope_tables(self) -> tuple[str, str]:
        """[C, rotary_dim/2] cos/sin rows by position; with LongRoPE and C past its switch point, the
        long set follows as rows C..2C-1 (the runtime adds C to position_ids once the sequence passes it)."""
        rope, c = self.cfg.rope, self.context
        if rope.kind == "default":
            cos, sin = cos_sin(rope, c)
        else:
            cos, sin = cos_sin(rope, c, rope.short_factor)
            if c > rope.original_max_position:
                long_cos, long_sin = cos_sin(rope, c, rope.long_factor)
                cos, sin = np.concatenate([cos, long_cos]), np.concatenate([sin, long_sin])
        return self.g.weight("cos_table", cos), self.g.weight("sin_table", sin)

    def embed(self, ids: str, table: Table) -> str:
        """Token rows (an fp16 copy of the table when the LM head is int4: QNN has no int4 gather),
        with image/audio rows put in place by text_mask and media_features."""
        g, cfg = self.g, self.cfg
        if table.scales is None:   # fp32: the LM head's own table
            x = g.op("Gather", [table.data, ids], name="embed_tokens")
        else:
            fp16 = np.empty((cfg.vocab_size, cfg.hidden_size), np.float16)
            for lo in range(0, cfg.vocab_size, VOCAB_CHUNK_ROWS):
                chunk = slice(lo, min(cfg.vocab_size, lo + VOCAB_CHUNK_ROWS))
                fp16[chunk] = self.w.vocab_matrix(self.w.embed_key, chunk)
            x = g.op("Cast", [g.op("Gather", [g.weight("embed_tokens.fp16", fp16), ids], name="embed_tokens")], to=FLOAT)
        if not self.media:
            return x
        mask = g.input(StaticDecoderNames.TEXT_MASK, FLOAT, [1, ROWS, 1])
        rows = g.input(StaticDecoderNames.MEDIA_FEATURES, FLOAT, [1, ROWS, cfg.hidden_size])
        return g.op("Add", [g.op("Mul", [x, mask]), rows], name="merge_media")

    def attention(self, layer: int, x: str, cos: str, sin: str, positions: str, bias: str) -> str:
        g, c = self.g, self.cfg
        heads, kv, d = c.num_heads, c.num_kv_heads, c.head_dim
        qkv = self.linear(layer, "self_attn.qkv_proj", x)
        q, k, v = g.ops("Split", [qkv, g.const("qkv_split", np.array([heads * d, kv * d, kv * d]))], 3, axis=-1)
        q, k = (g.op("RotaryEmbedding", [t, cos, sin, positions], num_heads=n, rotary_embedding_dim=c.rope.rotary_dim,
                     interleaved=0) for t, n in ((q, heads), (k, kv)))
        to_heads = lambda t, n: g.op("Transpose", [g.op("Reshape", [t, g.const(f"heads{n}", np.array([0, 0, n, d]))])],
                                     perm=[0, 2, 1, 3])
        added = {kind: g.op("Identity", [to_heads(t, kv)], [StaticDecoderNames.new(layer, kind)])
                 for kind, t in (("key", k), ("value", v))}
        for kind in added:
            g.output(StaticDecoderNames.new(layer, kind), FLOAT, [1, kv, ROWS, d])
        keys, values = (g.op("Concat", [g.input(DecoderNames.past(layer, kind), FLOAT, [1, kv, PAST, d]), added[kind]], axis=2)
                        for kind in ("key", "value"))
        grouped = g.op("Reshape", [to_heads(q, heads), g.const("grouped", np.array([0, kv, -1, d]))])   # [1, kv, G*S, d]
        scores = g.op("MatMul", [grouped, g.op("Transpose", [keys], perm=[0, 1, 3, 2])])
        scores = g.op("Add", [g.op("Mul", [scores, g.const("attn_scale", np.array(d ** -0.5, np.float32))]), bias])
        out = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), values])
        out = g.op("Transpose", [g.op("Reshape", [out, g.const("ungrouped", np.array([0, heads, -1, d]))])], perm=[0, 2, 1, 3])
        merged = g.op("Reshape", [out, g.const("merged", np.array([0, 0, heads * d]))])
        return self.linear(layer, "self_attn.o_proj", merged)

    def norm(self, x: str, name: str, weight: np.ndarray) -> str:
        return self.g.op("SimplifiedLayerNormalization", [x, self.g.weight(name, weight)], epsilon=self.cfg.rms_norm_eps,
                         axis=-1, stash_type=1)

    def build(self, progress: Callable[[int], None] = lambda _: None) -> None:
        g, cfg, w, names = self.g, self.cfg, self.w, StaticDecoderNames
        ids = g.input(names.INPUT_IDS, TensorProto.INT64, [1, ROWS])
        positions = g.input(names.POSITION_IDS, TensorProto.INT64, [1, ROWS])
        bias = g.input(names.ATTENTION_BIAS, FLOAT, [1, 1, ROWS, self.context])
        groups = cfg.num_heads // cfg.num_kv_heads
        bias = g.op("Concat", [bias] * groups, axis=2) if groups > 1 else bias   # the rows of [1, kv, G*S, C]
        cos, sin = self.rope_tables()
        table = self.vocab.vocab_weight("embed_tokens", w.embed_key)
        residual = self.embed(ids, table)
        for i in range(cfg.num_layers):
            x = self.norm(residual, f"layers.{i}.input_layernorm", w.norm(i))
            residual = g.op("Add", [residual, self.attention(i, x, cos, sin, positions, bias)])
            x = self.norm(residual, f"layers.{i}.post_attention_layernorm", w.norm(i, "post_attention_layernorm"))
            gate, up = g.ops("Split", [self.linear(i, "mlp.gate_up_proj", x)], 2, axis=-1, num_outputs=2)
            act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])
            residual = g.op("Add", [residual, self.linear(i, "mlp.down_proj", act)])
            progress(i)
        last = g.op("Slice", [residual, g.const("last_start", np.array([-1])),
                              g.const("last_end", np.array([np.iinfo(np.int64).max])), g.const("seq_axis", np.array([1]))])
        head = table if w.lm_head_key is None else self.vocab.vocab_weight("lm_head", w.lm_head_key)
        self.vocab.lm_head(self.norm(last, "norm", w.norm(None)), head)
        g.output(names.LOGITS, FLOAT, [1, 1, cfg.vocab_size])
