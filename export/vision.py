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

from collections.abc import Callable

import numpy as np
from onnx import TensorProto

from ..format import VisionNames
from ..models.phi4mm import VisionWeights
from ..quant import QuantConfig
from .encoder_ops import EncoderOps
from .graph import Graph

FLOAT = TensorProto.FLOAT


class VisionBuilder:
    def __init__(self, g: Graph, w: VisionWeights, quant: QuantConfig | None):
        self.g, self.w, self.cfg = g, w, w.cfg
        self.ops = EncoderOps(g, w, quant, "vision", "out_proj", w.cfg.hidden_size, w.cfg.num_heads, w.cfg.layer_norm_eps)

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
            x = g.op("Add", [x, self.ops.attention(p, self.ops.layer_norm(f"{p}.layer_norm1", x), bias)])
            up = self.ops.linear(f"{p}.mlp.fc1", self.ops.layer_norm(f"{p}.layer_norm2", x))
            h = self.ops.linear(f"{p}.mlp.fc2", g.op("Gelu", [up], approximate="tanh"))
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
        up = g.op("Gelu", [self.ops.linear("img_projection_up", tokens)])
        g.op("Identity", [self.ops.linear("img_projection_down", up)], [VisionNames.IMAGE_FEATURES])
        g.output(VisionNames.IMAGE_FEATURES, FLOAT, ["tokens", c.text_hidden_size])
