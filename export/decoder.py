"""The Phi-3 decoder as one ONNX graph on onnxruntime's fused CPU/GPU operators.

Per layer: SkipSimplifiedLayerNormalization -> qkv (MatMulNBits or MatMul) -> GroupQueryAttention
(packed QKV, fused rotary, KV cache whose past and present may share one preallocated buffer) ->
o_proj -> SkipSimplifiedLayerNormalization -> gate_up -> SiLU gate -> down_proj.

Graph interface (onnxruntime-genai's naming, so its runtime can drive our graphs too):
  inputs   input_ids [batch, seq] int64 (or inputs_embeds [batch, seq, hidden] float),
           attention_mask [batch, total] int64,
           past_key_values.{i}.key / .value [batch, kv_heads, past, head_dim]
           logits_to_keep [1] int64, default 1 (not in the WebGPU form)
  outputs  logits [batch * logits_to_keep, 1, vocab] (the last positions only: prefill never pays
           the 200K-vocab head for every prompt token), present.{i}.key / .value
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from ..errors import CheckpointError
from ..format import DecoderNames
from ..models.config import DecoderConfig
from ..models.phi3 import Phi3Weights
from ..quant import QuantConfig, screen
from ..quant.blocks import QuantizedWeight
from .graph import Graph
from .linear import MS, linear
from .rope import cos_sin
from .webgpu import PlainAttention, merge_rows

FLOAT = TensorProto.FLOAT
VOCAB_CHUNK_ROWS = 16384   # rows of the embedding read and quantised at a time


LORA_DTYPES = {"fp32": (TensorProto.FLOAT, np.float32), "fp16": (TensorProto.FLOAT16, np.float16),
               "int8": (TensorProto.INT8, np.int8)}


@dataclass(frozen=True)
class DecoderOptions:
    quant: QuantConfig | None = QuantConfig()   # None: fp32 weights (parity checks)
    inputs_embeds: bool = False                 # take embeddings instead of token ids
    lora: str | None = None                     # LoRA inputs on every layer linear, in this precision
    media: tuple[tuple[str, int], ...] = ()     # (features input, placeholder token id): image/audio
    webgpu: bool = False                        # the WebGPU form (export/webgpu.py): plain attention, LoRA inputs


@dataclass(frozen=True)
class Table:
    """Names of a stored vocabulary table: fp32 `data`; or int4/int8 packed `data` and its 2-D `scales`
    (MatMulNBits'); or a screened int8 table (quant/screen.py): `data` the high halves, `low` the low
    ones, `scales` the high halves' and `gather_scales` the same 3-D (GatherBlockQuantized's), made
    once because both the embedding and the head's completion gather."""

    data: str
    scales: str | None = None
    low: str | None = None
    gather_scales: str | None = None


def kv_names(layer: int) -> tuple[str, str, str, str]:
    return (DecoderNames.past(layer, "key"), DecoderNames.past(layer, "value"),
            DecoderNames.present(layer, "key"), DecoderNames.present(layer, "value"))


class DecoderBuilder:
    def __init__(self, g: Graph, cfg: DecoderConfig, weights: Phi3Weights, options: DecoderOptions):
        self.g, self.cfg, self.w, self.opt = g, cfg, weights, options
        if options.webgpu and cfg.sliding_window and cfg.sliding_window < cfg.max_position:
            raise CheckpointError(f"sliding_window {cfg.sliding_window}: the WebGPU form has no sliding-window attention")

    # -- weights -------------------------------------------------------------------------------
    def linear(self, name: str, x: str, w: np.ndarray, lora: tuple[int, str] | None = None) -> str:
        """x @ w.T for an [out, in] weight, int4 (MatMulNBits) or fp32 (MatMul), plus a LoRA branch
        (x @ A) @ B when LoRA is enabled and `lora` names the (layer, module)."""
        g = self.g
        y = linear(g, name, x, w, self.opt.quant)
        if self.opt.lora is None or lora is None:
            return y
        return g.op("Add", [y, self.lora_branch(x, *lora, *w.shape)], name=f"{name}.lora_add")

    def layer_linear(self, layer: int, module: str, x: str) -> str:
        """One of the per-layer linears, with its LoRA branch when LoRA is enabled."""
        return self.linear(f"layers.{layer}.{module.split('.')[-1]}", x, self.w.linear(layer, module), (layer, module))

    def lora_branch(self, x: str, layer: int, module: str, out_dim: int, in_dim: int) -> str:
        """The adapter's A/B are graph inputs whose rank dimension is free, defaulting to empty
        [in, 0] / [0, out] initializers: with no adapter the two MatMuls have rank 0 and cost nothing."""
        g = self.g
        assert self.opt.lora is not None
        onnx_type, np_type = LORA_DTYPES[self.opt.lora]
        a, b = DecoderNames.lora(layer, module, "A"), DecoderNames.lora(layer, module, "B")
        rank = f"lora_rank_{layer}_{module.split('.')[-1]}"
        g.input(a, onnx_type, [in_dim, rank])
        g.input(b, onnx_type, [rank, out_dim])
        if np_type == np.int8:
            # Decode is bandwidth bound, and int8 weights are a quarter of fp32's bytes: DynamicQuantizeMatMul
            # quantises its (one-row) input per call and runs an int8 GEMM on weights that may be graph
            # inputs (MatMulNBits dequantises non-constant weights on every call: 30-100x slower). The
            # default is rank 1 of zeros, not rank 0: at rank 0 the second product quantises an empty
            # tensor and returns NaN.
            g.input(f"{a}.scale", FLOAT, [rank])
            g.input(f"{b}.scale", FLOAT, [out_dim])
            g.const(a, np.zeros((in_dim, 1), np.int8))
            g.const(b, np.zeros((1, out_dim), np.int8))
            g.const(f"{a}.scale", np.ones(1, np.float32))
            g.const(f"{b}.scale", np.ones(out_dim, np.float32))
            low = g.op("DynamicQuantizeMatMul", [x, a, f"{a}.scale"], domain=MS)
            return g.op("DynamicQuantizeMatMul", [low, b, f"{b}.scale"], domain=MS)
        if not self.opt.webgpu:   # the WebGPU form's A/B have no defaults (export/webgpu.py)
            g.const(a, np.zeros((in_dim, 0), np_type))
            g.const(b, np.zeros((0, out_dim), np_type))
        if np_type == np.float32:
            return g.op("MatMul", [g.op("MatMul", [x, a]), b])
        low = g.op("MatMul", [g.op("MatMul", [g.op("Cast", [x], to=onnx_type), a]), b])
        return g.op("Cast", [low], to=TensorProto.FLOAT)

    def vocab_weight(self, name: str, key: str) -> Table:
        """A [vocab, hidden] matrix written once: int4/int8 packed data and scales, a screened int8
        table's halves (quant/screen.py), or fp32 data.

        Read and quantised in row chunks so a 200K x 3072 matrix never sits in memory as float32.
        """
        g, q, cfg = self.g, self.opt.quant, self.cfg
        read: Callable[[slice], np.ndarray] = lambda rows: self.w.vocab_matrix(key, rows)
        if q is None:
            return Table(g.weight(f"{name}.weight", read(slice(None))))
        screened = q.screened
        q = q.table   # the head's own precision and block (a last partial block is zero padded)
        blocks = -(-cfg.hidden_size // q.block_size)
        halves = 2 if screened else 1
        packed = np.empty((halves, cfg.vocab_size, blocks, q.block_size * q.bits // 8 // halves), np.uint8)
        scales = np.empty((cfg.vocab_size, blocks), np.float32)
        for lo in range(0, cfg.vocab_size, VOCAB_CHUNK_ROWS):
            rows = slice(lo, min(cfg.vocab_size, lo + VOCAB_CHUNK_ROWS))
            w = read(rows)
            data, scales[rows] = q.quantize(w)
            if screened:
                t = screen.split(w, QuantizedWeight(data, scales[rows], None, 8, q.block_size))
                packed[0, rows], packed[1, rows], scales[rows] = t.high, t.low, t.scales
            else:
                packed[0, rows] = data
        if not screened:
            return Table(g.weight(f"{name}.qweight", packed[0]), g.weight(f"{name}.scales", scales))
        # One scale tensor, the high halves' (16x), read 3-D by the gathers as for a plain table.
        high_scales = g.weight(f"{name}.scales", scales * 16)
        return Table(g.weight(f"{name}.high", packed[0]), high_scales, g.weight(f"{name}.low", packed[1]),
                     self.scales3(high_scales))

    def scales3(self, scales: str) -> str:
        """A table's scales in GatherBlockQuantized's 3-D shape; MatMulNBits reads them 2-D. The Reshape
        is folded at load: only the (small) scales are duplicated, never the packed data."""
        return self.g.op("Reshape", [scales, self.g.const("scales3_shape", np.array([self.cfg.vocab_size, -1, 1]))])

    def gather_rows(self, table: Table, ids: str, name: str) -> str:
        """The table's dequantised rows at `ids` ([..., hidden] float32)."""
        g, cfg, t = self.g, self.cfg, self.opt.quant
        assert t is not None and table.scales is not None
        t = t.table
        if table.low is None:
            rows = g.op("GatherBlockQuantized", [table.data, ids, self.scales3(table.scales)], domain=MS, name=name,
                        gather_axis=0, quantize_axis=2, block_size=t.block_size, bits=t.bits)
        else:   # screened: high + low / 16 at the high halves' scales, the int8 rows exactly
            scales3 = table.gather_scales
            assert scales3 is not None
            high, low = (g.op("GatherBlockQuantized", [data, ids, scales3], domain=MS, name=f"{name}.{half}",
                              gather_axis=0, quantize_axis=2, block_size=t.block_size, bits=4)
                         for half, data in (("high", table.data), ("low", table.low)))
            rows = g.op("Add", [high, g.op("Mul", [low, g.const("one_sixteenth", np.array(1 / 16, np.float32))])])
        rows = g.op("Reshape", [rows, g.const("rows_flat_shape", np.array([0, 0, -1]))])   # [a, b, blocks * block]
        if cfg.hidden_size % t.block_size:   # drop the padding of the last block
            rows = g.op("Slice", [rows, g.const("zero1", np.array([0])), g.const("hidden1", np.array([cfg.hidden_size])),
                                  g.const("axis2", np.array([2]))])
        return rows

    # -- pieces --------------------------------------------------------------------------------
    def embed(self, table: Table) -> str:
        g, cfg, q = self.g, self.cfg, self.opt.quant
        if self.opt.inputs_embeds:
            return g.input("inputs_embeds", FLOAT, ["batch", "seq", cfg.hidden_size])
        ids = g.input(DecoderNames.INPUT_IDS, TensorProto.INT64, ["batch", "seq"])
        embeds = g.op("Gather", [table.data, ids], name="embed_tokens") if q is None else \
            self.gather_rows(table, ids, "embed_tokens")
        for name, token_id in self.opt.media:
            embeds = self.merge(embeds, ids, name, token_id)
        return embeds

    def merge(self, embeds: str, ids: str, name: str, token_id: int) -> str:
        """Put the rows of `name` ([n, hidden], in order) at the positions holding `token_id`.
        A plain input without a default (the bundle `requires` "media-inputs"): onnxruntime's Java
        API can feed inputs only, not initializers. Text and decode steps feed an empty [0, hidden]
        tensor and scatter nothing."""
        g, hidden = self.g, self.cfg.hidden_size
        g.input(name, FLOAT, [f"{name}_tokens", hidden])
        if self.opt.webgpu:
            return merge_rows(g, embeds, ids, name, token_id, hidden)
        where = g.op("Equal", [ids, g.const(f"{name}_token_id", np.array(token_id, np.int64))])
        positions = g.op("Transpose", [g.op("NonZero", [where])], perm=[1, 0])
        return g.op("ScatterND", [embeds, positions, name], name=f"merge_{name}")

    def lm_head(self, x: str, table: Table) -> str:
        """Logits [rows, 1, vocab] of x [rows, 1, hidden]."""
        g, cfg, q = self.g, self.cfg, self.opt.quant
        if q is None or table.scales is None:   # Gemm with transB reads the [vocab, hidden] table as stored
            flat = g.op("Reshape", [x, g.const("flat_shape", np.array([-1, cfg.hidden_size]))])
            logits = g.op("Gemm", [flat, table.data], name="lm_head", transB=1)
            logits = g.op("Unsqueeze", [logits, g.const("axis1", np.array([1]))])
        else:   # int4/int8 MatMulNBits; over a screened table's high halves it is the int4 screen
            logits = g.op("MatMulNBits", [x, table.data, table.scales], domain=MS, name="lm_head", K=cfg.hidden_size,
                          N=cfg.vocab_size, bits=4 if table.low else q.table.bits, block_size=q.table.block_size,
                          accuracy_level=q.accuracy_level)
            if table.low is not None:
                logits = self.complete(x, logits, table)
        return g.op("Identity", [logits], [DecoderNames.LOGITS])

    def complete(self, x: str, rough: str, table: Table) -> str:
        """A screened head: the screen's (`rough`) top SCREEN_TOP logits per row completed with the low
        halves' share and scattered back (quant/screen.py)."""
        g, cfg = self.g, self.cfg
        top = min(screen.SCREEN_TOP, cfg.vocab_size)
        values, ids = g.ops("TopK", [rough, g.const("screen_top", np.array([top], np.int64))], 2, name="lm_head.top", axis=-1)
        # One row at a time (Scan), so the gathered rows take SCREEN_TOP x hidden floats however many
        # rows there are: scoring 2,000 tokens at once would otherwise gather 6 GB at Phi-4-mini's width.
        rows = g.op("Reshape", [ids, g.const("screen_ids_shape", np.array([-1, top]))])
        column = g.op("Reshape", [x, g.const("hidden_rows_shape", np.array([-1, cfg.hidden_size]))])
        share = g.op("Scan", [rows, column], name="lm_head.low", body=self.low_share(table, top), num_scan_inputs=2)
        share = g.op("Reshape", [share, g.const("screen_exact_shape", np.array([-1, 1, top]))])
        exact = g.op("Add", [values, g.op("Mul", [share, g.const("one_sixteenth", np.array(1 / 16, np.float32))])])
        return g.op("ScatterElements", [rough, ids, exact], name="lm_head.exact", axis=2)

    def low_share(self, table: Table, top: int) -> onnx.GraphProto:
        """Scan body: the low halves' dot products (times 16) for one row's top ids [top] and input [hidden]."""
        cfg, t = self.cfg, self.opt.quant
        assert t is not None and table.low is not None and table.gather_scales is not None
        body = Graph("low_share", self.g.weights)
        ids, x = body.input("ids", TensorProto.INT64, [top]), body.input("x", FLOAT, [cfg.hidden_size])
        low = body.op("GatherBlockQuantized", [table.low, ids, table.gather_scales], domain=MS, name="lm_head.low.rows",
                      gather_axis=0, quantize_axis=2, block_size=t.table.block_size, bits=4)      # [top, blocks, block]
        low = body.op("Reshape", [low, body.const("share_rows_shape", np.array([top, -1]))])
        if cfg.hidden_size % t.table.block_size:   # the last block's padding, zero in the table
            low = body.op("Slice", [low, body.const("zero1", np.array([0])), body.const("hidden1", np.array([cfg.hidden_size])),
                                    body.const("axis1", np.array([1]))])
        body.op("MatMul", [low, x], ["share"], name="lm_head.low.dot")   # named for profiles: the head's time
        body.output("share", FLOAT, [top])
        return body.graph()

    def rotary_caches(self, total_len: str) -> tuple[str, str]:
        """cos/sin caches; LongRoPE picks the long set once the sequence passes the original
        context, as transformers does (max position + 1 > original_max_position_embeddings)."""
        g, rope, length = self.g, self.cfg.rope, self.cfg.max_position
        if rope.kind == "default":
            cos, sin = cos_sin(rope, length)
            return g.weight("cos_cache", cos), g.weight("sin_cache", sin)
        # Each set is sliced to the current length, then Where picks one. (An If whose branches
        # return the caches copies both full sets, 2 x 25 MB at 131072 positions, on every step.)
        axis0 = g.const("axis0", np.array([0], np.int64))
        end = g.op("Unsqueeze", [g.op("Cast", [total_len], to=TensorProto.INT64), axis0])
        is_long = g.op("Greater", [total_len, g.const("original_max_position", np.array(rope.original_max_position, np.int32))])
        sets = {}
        for label, factors in (("long", rope.long_factor), ("short", rope.short_factor)):
            cos, sin = cos_sin(rope, length, factors)
            sets[label] = [g.op("Slice", [g.weight(f"{kind}_cache_{label}", table), g.const("zero_i64", np.array([0], np.int64)),
                                          end, axis0]) for kind, table in (("cos", cos), ("sin", sin))]
        cos_cache, sin_cache = (g.op("Where", [is_long, long, short], [f"{kind}_cache"])
                                for kind, long, short in zip(("cos", "sin"), sets["long"], sets["short"]))
        return cos_cache, sin_cache

    # -- whole graph ---------------------------------------------------------------------------
    def build(self, progress: Callable[[int], None] = lambda _: None) -> None:
        g, cfg, w = self.g, self.cfg, self.w
        mask = g.input(DecoderNames.ATTENTION_MASK, TensorProto.INT64, ["batch", "total_seq"])
        seqlens = g.op("Cast", [g.op("Sub", [g.op("ReduceSum", [mask, g.const("axes1", np.array([1]))], keepdims=0),
                                              g.const("one", np.array(1, np.int64))])], to=TensorProto.INT32)
        total_len = g.op("Cast", [g.op("Gather", [g.op("Shape", [mask]), g.const("idx1", np.array(1))])],
                         to=TensorProto.INT32)
        cos, sin = self.rotary_caches(total_len)

        embed_table = self.vocab_weight("embed_tokens", w.embed_key)
        residual = self.embed(embed_table)
        x = g.op("SimplifiedLayerNormalization", [residual, g.weight("layers.0.input_layernorm", w.norm(0))],
                 epsilon=cfg.rms_norm_eps, axis=-1, stash_type=1)
        window = cfg.sliding_window if cfg.sliding_window and cfg.sliding_window < cfg.max_position else -1
        rows = "inputs_embeds" if self.opt.inputs_embeds else DecoderNames.INPUT_IDS
        plain = PlainAttention(g, cfg, rows, total_len, cos, sin) if self.opt.webgpu else None
        for i in range(cfg.num_layers):
            past_k, past_v, present_k, present_v = kv_names(i)
            kv_shape = ["batch", cfg.num_kv_heads, "past_seq", cfg.head_dim]
            g.input(past_k, FLOAT, kv_shape)
            g.input(past_v, FLOAT, kv_shape)
            qkv = self.layer_linear(i, "self_attn.qkv_proj", x)
            if plain is not None:
                attn = plain(i, qkv, past_k, past_v, present_k, present_v)
            else:
                attn = g.ops("GroupQueryAttention", [qkv, "", "", past_k, past_v, seqlens, total_len, cos, sin],
                             [f"layers.{i}.attn", present_k, present_v], domain=MS, name=f"layers.{i}.attn",
                             num_heads=cfg.num_heads, kv_num_heads=cfg.num_kv_heads, do_rotary=1,
                             rotary_interleaved=0, local_window_size=window)[0]
            for name in (present_k, present_v):
                g.output(name, FLOAT, ["batch", cfg.num_kv_heads, "total_seq", cfg.head_dim])
            o = self.layer_linear(i, "self_attn.o_proj", attn)
            x, _, _, residual = g.ops("SkipSimplifiedLayerNormalization",
                                     [o, residual, g.weight(f"layers.{i}.post_attention_layernorm",
                                                            w.norm(i, "post_attention_layernorm"))],
                                     [f"layers.{i}.attn_norm", "", "", f"layers.{i}.attn_residual"],
                                     domain=MS, epsilon=cfg.rms_norm_eps)
            gate_up = self.layer_linear(i, "mlp.gate_up_proj", x)
            gate, up = g.split(gate_up, [cfg.intermediate_size, cfg.intermediate_size], axis=-1)
            act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])
            down = self.layer_linear(i, "mlp.down_proj", act)
            last = i == cfg.num_layers - 1
            norm = w.norm(None) if last else w.norm(i + 1)
            x, _, _, residual = g.ops("SkipSimplifiedLayerNormalization",
                                     [down, residual, g.weight("norm" if last else f"layers.{i + 1}.input_layernorm", norm)],
                                     [f"layers.{i}.mlp_norm", "", "", f"layers.{i}.mlp_residual"],
                                     domain=MS, epsilon=cfg.rms_norm_eps)
            progress(i)
        head = embed_table if w.lm_head_key is None else self.vocab_weight("lm_head", w.lm_head_key)
        self.lm_head(self.last_rows(x), head)
        g.output(DecoderNames.LOGITS, FLOAT, ["rows", 1, cfg.vocab_size])

    def last_rows(self, x: str) -> str:
        """The rows that get logits: the last position (a prefill never pays the 200K-vocab head for
        every prompt token), or the last `logits_to_keep` (an input, default 1) moved to the first
        axis, [batch * k, 1, hidden]: prompt lookup checks k - 1 drafted tokens in one call, and the
        output keeps the [., 1, vocab] shape onnxruntime-genai sizes its buffer from (with a
        symbolic middle axis it expects a row per input token; its run failed so). The WebGPU
        form keeps the constant (onnxruntime-web cannot feed initializer-backed inputs)."""
        g, end = self.g, self.g.const("last_end", np.array([np.iinfo(np.int64).max]))
        if self.opt.webgpu:
            return g.op("Slice", [x, g.const("last_start", np.array([-1])), end, g.const("seq_axis", np.array([1]))])
        keep = g.input(DecoderNames.LOGITS_TO_KEEP, TensorProto.INT64, [1])
        g.const(keep, np.array([1], np.int64))
        rows = g.op("Slice", [x, g.op("Neg", [keep], name="logits_start"), end, g.const("seq_axis", np.array([1]))])
        return g.op("Reshape", [rows, g.const("rows_shape", np.array([-1, 1, self.cfg.hidden_size]))])
