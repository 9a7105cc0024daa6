"""The vision encoder (SigLIP-style, features from the configured layer), 2x2 average pooling,
the HD layout's learned separators and the projection, as one ONNX graph.

  inputs   pixel_values [crops, 3, S, S], position_ids [crops, P] int64, attention_bias
           [crops, 1, 1, P] (0 for image patches, -inf-like for padding), token_index [T] int64
  output   image_features [T, text_hidden]

token_index (computed by the runtime from the crop grid, runtime/vision.py) picks each output
token from the table [pooled features of every crop; sub separator; global separator], so the
graph holds the weights and the arithmetic, and the runtime only the layout.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from onnx import TensorProto

from ..models.phi4mm import VisionWeights
from ..quant import QuantConfig, quantize_int4
from .decoder import MS
from .graph import Graph
from ..format import VisionNames

FLOAT = TensorProto.FLOAT


class VisionBuilder:
    prefix = "vision"           # initializer name prefix
    attention_out = "out_proj"  # the attention's output projection, as the checkpoint names it

    def __init__(self, g: Graph, w: VisionWeights, quant: QuantConfig | None):
        self.g, self.w, self.cfg, self.quant = g, w, w.cfg, quant

    def linear(self, name: str, x: str) -> str:
        """x @ W.T + b for a checkpoint Linear, int4 when quantising (and the input width allows)."""
        g, q = self.g, self.quant
        weight, bias = self.w.get(f"{name}.weight"), self.w.get(f"{name}.bias")
        if q is None:
            y = g.op("MatMul", [x, g.weight(f"{self.prefix}.{name}.weight", weight.T)])
        else:
            packed, scales = quantize_int4(weight, q.block_size)
            y = g.op("MatMulNBits", [x, g.weight(f"{self.prefix}.{name}.qweight", packed),
                                     g.weight(f"{self.prefix}.{name}.scales", scales)],
                     domain=MS, K=weight.shape[1], N=weight.shape[0], bits=q.bits, block_size=q.block_size,
                     accuracy_level=q.accuracy_level)
        return g.op("Add", [y, g.weight(f"{self.prefix}.{name}.bias", bias)])

    def layer_norm(self, name: str, x: str) -> str:
        return self.g.op("LayerNormalization", [x, self.g.weight(f"{self.prefix}.{name}.weight", self.w.get(f"{name}.weight")),
                                                self.g.weight(f"{self.prefix}.{name}.bias", self.w.get(f"{name}.bias"))],
                         epsilon=self.cfg.layer_norm_eps, axis=-1)

    def heads(self, x: str) -> str:
        """[crops, P, hidden] -> [crops, heads, P, head_dim]"""
        c = self.cfg
        split = self.g.op("Reshape", [x, self.g.const("vision_heads_shape", np.array([0, 0, c.num_heads, -1]))])
        return self.g.op("Transpose", [split], perm=[0, 2, 1, 3])

    def attention(self, prefix: str, x: str, bias: str) -> str:
        g, c = self.g, self.cfg
        q, k, v = (self.heads(self.linear(f"{prefix}.self_attn.{p}_proj", x)) for p in ("q", "k", "v"))
        scale = g.const("vision_attn_scale", np.array((c.hidden_size // c.num_heads) ** -0.5, np.float32))
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])]), scale]), bias])
        ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        merged = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]),
                                  g.const("vision_merge_shape", np.array([0, 0, c.hidden_size]))])
        return self.linear(f"{prefix}.self_attn.{self.attention_out}", merged)

    def build(self, progress: Callable[[int], None] = lambda _: None) -> None:
        g, c, w = self.g, self.cfg, self.w
        side = c.patches_per_side
        pixels = g.input(VisionNames.PIXEL_VALUES, FLOAT, ["crops", 3, c.image_size, c.image_size])
        positions = g.input(VisionNames.POSITION_IDS, TensorProto.INT64, ["crops", side * side])
        bias = g.input(VisionNames.ATTENTION_BIAS, FLOAT, ["crops", 1, 1, side * side])
        index = g.input(VisionNames.TOKEN_INDEX, TensorProto.INT64, ["tokens"])
        emb = "img_processor.embeddings"
        patches = g.op("Conv", [pixels, g.weight("vision.patch_embedding.weight", w.get(f"{emb}.patch_embedding.weight")),
                                g.weight("vision.patch_embedding.bias", w.get(f"{emb}.patch_embedding.bias"))],
                       strides=[c.patch_size, c.patch_size])
        x = g.op("Transpose", [g.op("Reshape", [patches, g.const("vision_flat", np.array([0, c.hidden_size, -1]))])],
                 perm=[0, 2, 1])
        table = g.weight("vision.position_embedding", w.get(f"{emb}.position_embedding.weight"))
        x = g.op("Add", [x, g.op("Gather", [table, positions])])
        for i in range(c.num_layers):
            p = f"img_processor.encoder.layers.{i}"
            x = g.op("Add", [x, self.attention(p, self.layer_norm(f"{p}.layer_norm1", x), bias)])
            h = self.linear(f"{p}.mlp.fc2", g.op("Gelu", [self.linear(f"{p}.mlp.fc1", self.layer_norm(f"{p}.layer_norm2", x))],
                                                    approximate="tanh"))
            x = g.op("Add", [x, h])
            progress(i)
        # 2x2 average pooling of the patch grid (the side is even for 448/14 = 32)
        grid = g.op("Transpose", [g.op("Reshape", [x, g.const("vision_grid", np.array([0, side, side, c.hidden_size]))])],
                    perm=[0, 3, 1, 2])
        pooled = g.op("AveragePool", [grid], kernel_shape=[2, 2], strides=[2, 2])
        rows = g.op("Reshape", [g.op("Transpose", [pooled], perm=[0, 2, 3, 1]),
                                g.const("vision_rows", np.array([-1, c.hidden_size]))])
        separators = np.stack([w.get("sub_img_feature_extensor").reshape(-1), w.get("global_img_feature_extensor").reshape(-1)])
        table = g.op("Concat", [rows, g.weight("vision.separators", separators)], axis=0)
        tokens = g.op("Gather", [table, index])
        up = g.op("Gelu", [self.linear("img_projection_up", tokens)])
        g.op("Identity", [self.linear("img_projection_down", up)], [VisionNames.IMAGE_FEATURES])
        g.output(VisionNames.IMAGE_FEATURES, FLOAT, ["tokens", c.text_hidden_size])
