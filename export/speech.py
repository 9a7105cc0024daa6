"""The speech encoder (global mean/invstd normalisation, NeMo conv subsampling x8, conformer blocks
with T5 relative position bias, chunked like the reference) and both projections, as one graph.

  inputs   audio_features [1, frames, mels] (log-mel), key_bias [chunks, 1, 1, L] (0 for real
           frames; the runtime builds it, see runtime/speech.py: it also fixes the chunk length L)
  outputs  speech_features, vision_speech_features [T, text_hidden] (T = ceil(frames / 8))
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import TensorProto

from ..format import SpeechNames
from ..models.phi4mm import SpeechWeights
from ..quant import QuantConfig
from .encoder_ops import EncoderOps
from .graph import Graph

FLOAT = TensorProto.FLOAT


class SpeechBuilder:
    def __init__(self, g: Graph, w: SpeechWeights, quant: QuantConfig | None):
        self.g, self.w, self.cfg = g, w, w.cfg
        self.ops = EncoderOps(g, w, quant, "speech", "o_proj", w.cfg.hidden_size, w.cfg.num_heads, w.cfg.layer_norm_eps)

    def conv(self, name: str, x: str, **attrs) -> str:
        return self.g.op("Conv", [x, self.g.weight(f"speech.{name}.weight", self.w.get(f"{name}.weight")),
                                  self.g.weight(f"speech.{name}.bias", self.w.get(f"{name}.bias"))], **attrs)

    def swish(self, x: str) -> str:
        return self.g.op("Mul", [x, self.g.op("Sigmoid", [x])])

    def mlp(self, p: str, x: str) -> str:
        g = self.g
        up_gate = self.ops.linear(f"{p}.gate_up_proj", self.ops.layer_norm(f"{p}.layer_norm", x))
        half = self.w.get(f"{p}.gate_up_proj.weight").shape[0] // 2
        up, gate = g.split(up_gate, [half, half], axis=-1)
        return self.ops.linear(f"{p}.down_proj", g.op("Mul", [up, self.swish(gate)]))

    def conv_module(self, p: str, x: str) -> str:
        g, c = self.g, self.cfg
        h = g.op("Transpose", [self.ops.layer_norm(f"{p}.layer_norm", x)], perm=[0, 2, 1])    # [B, D, L]
        h = self.conv(f"{p}.glu.ext_pw_conv_1d", h)
        half = self.w.get(f"{p}.glu.ext_pw_conv_1d.weight").shape[0] // 2
        lin, gate = g.split(h, [half, half], axis=1)
        b1 = g.weight(f"speech.{p}.glu.b1", self.w.get(f"{p}.glu.b1"))
        b2 = g.weight(f"speech.{p}.glu.b2", self.w.get(f"{p}.glu.b2"))
        h = g.op("Mul", [g.op("Add", [lin, b1]), self.swish(g.op("Add", [gate, b2]))])
        # depthwise conv padded by kernel-1 on both sides, then the last kernel-1 steps dropped:
        # a causal convolution
        h = self.conv(f"{p}.dw_sep_conv_1d.dw_conv", h, group=c.hidden_size, pads=[c.kernel_size - 1, c.kernel_size - 1])
        h = self.conv(f"{p}.dw_sep_conv_1d.pw_conv", h)
        if c.kernel_size > 1:
            h = g.op("Slice", [h, g.const("speech_trim_start", np.array([0])),
                               g.const("speech_trim_end", np.array([-(c.kernel_size - 1)])), g.const("axis2", np.array([2]))])
        h = self.conv(f"{p}.ext_pw_conv_1d", self.swish(h))
        return g.op("Transpose", [h], perm=[0, 2, 1])

    def relative_bias(self, length: str) -> str:
        """[1, heads, L, L] T5-style bias: bucket = clip(j - i, -max, max - 1) + max."""
        g, c = self.g, self.cfg
        pos = g.op("Range", [g.const("i64_0", np.array(0)), length, g.const("i64_1", np.array(1))])
        rel = g.op("Sub", [g.op("Unsqueeze", [pos, g.const("axis0", np.array([0]))]),
                           g.op("Unsqueeze", [pos, g.const("axis1_", np.array([1]))])])
        bucket = g.op("Add", [g.op("Clip", [rel, g.const("bias_min", np.array(-c.bias_max_distance)),
                                            g.const("bias_max", np.array(c.bias_max_distance - 1))]),
                              g.const("bias_offset", np.array(c.bias_max_distance))])
        table = g.weight("speech.relative_bias", self.w.get("encoder.relative_attention_bias_layer.bias_values.weight"))
        return g.op("Unsqueeze", [g.op("Transpose", [g.op("Gather", [table, bucket])], perm=[2, 0, 1]),
                                  g.const("axis0", np.array([0]))])

    def build(self, progress: Callable[[int], None] = lambda _: None) -> None:
        g, c, w = self.g, self.cfg, self.w
        feats = g.input(SpeechNames.AUDIO_FEATURES, FLOAT, [1, "frames", c.input_size])
        key_bias = g.input(SpeechNames.KEY_BIAS, FLOAT, ["chunks", 1, 1, "chunk_len"])
        x = g.op("Mul", [g.op("Sub", [feats, g.weight("speech.global_mean", w.get("encoder.encoder_embedding.global_mean"))]),
                         g.weight("speech.global_invstd", w.get("encoder.encoder_embedding.global_invstd"))])
        x = g.op("Unsqueeze", [x, g.const("axis1", np.array([1]))])                       # [1, 1, frames, mels]
        for layer in w.subsampling_layers():
            x = self.conv(f"encoder.embed.conv.{layer.index}", x, strides=layer.strides, pads=layer.pads, group=layer.group)
            if layer.relu_after:
                x = g.op("Relu", [x])
        x = g.op("Reshape", [g.op("Transpose", [x], perm=[0, 2, 1, 3]), g.const("speech_flat", np.array([1, 0, -1]))])
        x = self.ops.linear("encoder.embed.out", x)                                           # [1, T, D]
        # chunks of L frames (the reference unfolds inputs longer than 500 frames), padded at the end
        shape = g.op("Shape", [key_bias])
        chunks, chunk_len = (g.op("Gather", [shape, g.const(f"dim{k}", np.array(k))]) for k in (0, 3))
        total = g.op("Gather", [g.op("Shape", [x]), g.const("dim1", np.array(1))])
        pad = g.op("Sub", [g.op("Mul", [chunks, chunk_len]), total])
        axis0 = g.const("axis0", np.array([0]))
        pads = g.op("Concat", [g.const("zeros4", np.zeros(4, np.int64)), g.op("Unsqueeze", [pad, axis0]),
                               g.const("zero1", np.zeros(1, np.int64))], axis=0)
        x = g.op("Pad", [x, pads])
        x = g.op("Reshape", [x, g.op("Concat", [g.op("Unsqueeze", [chunks, g.const("axis0", np.array([0]))]),
                                                g.op("Unsqueeze", [chunk_len, g.const("axis0", np.array([0]))]),
                                                g.const("hidden_dim", np.array([c.hidden_size]))], axis=0)])
        bias = g.op("Add", [self.relative_bias(chunk_len), key_bias])
        for i in range(c.num_blocks):
            p = f"encoder.encoders.{i}"
            half = g.const("half", np.array(0.5, np.float32))
            residual = g.op("Add", [x, g.op("Mul", [self.mlp(f"{p}.feed_forward_in", x), half])])
            x = g.op("Add", [residual, self.ops.attention(p, self.ops.layer_norm(f"{p}.layer_norm_att", residual), bias)])
            x = g.op("Add", [x, self.conv_module(f"{p}.conv", x)])
            x = g.op("Add", [x, g.op("Mul", [self.mlp(f"{p}.feed_forward_out", x), g.const("half", np.array(0.5, np.float32))])])
            x = self.ops.layer_norm(f"{p}.layer_norm", x)
            progress(i)
        flat = g.op("Reshape", [x, g.const("speech_rows", np.array([-1, c.hidden_size]))])
        rows = g.op("Slice", [flat, g.const("i64_0_1d", np.array([0])), g.op("Unsqueeze", [total, axis0]),
                              g.const("axis0", np.array([0]))])
        for mode, output in (("speech", SpeechNames.SPEECH_FEATURES), ("vision_speech", SpeechNames.VISION_SPEECH_FEATURES)):
            up = g.op("Gelu", [self.ops.linear(f"up_proj_for_{mode}", rows)])
            g.op("Identity", [self.ops.linear(f"down_proj_for_{mode}", up)], [output])
            g.output(output, FLOAT, ["tokens", c.text_hidden_size])
