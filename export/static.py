"""Static-shapes bundles (`phi4edge export --target static|qnn`): every graph with fixed input shapes
and only operators Qualcomm's QNN HTP backend takes, so that an NPU runs all of it; with
`--target qnn`, also QNN context binaries of each graph (export/qnn.py).

The decoder (export/static_decoder.py) is saved twice from one template: `prefill.onnx`
(`prefill_chunk` rows per call) and `decoder.onnx` (one row), reading one `decoder.onnx.data`.
The encoders are the dynamic bundle's graphs with every input dimension fixed (the global image
plus `image_crops` crops; `audio_seconds` of log-mel frames), and two changes the HTP needs,
measured on its simulator: int4 blocks that divide every input size (SigLIP's FFN has K = 4304 =
16 x 269; a partial block was refused), and MatMulNBits on 2-D inputs lifted to 3-D (rank 2 was
refused).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from ..bundle import file_table
from ..errors import CheckpointError
from ..format import STATIC_SHAPES, Decoder, Manifest, Quantization, SpeechNames, Static, Vision, VisionNames
from ..progress import progress
from ..quant import (
    DEFAULT_BITS_BUDGET,
    DEFAULT_BLOCK,
    DEFAULT_ENCODER,
    DEFAULT_ENCODER_BLOCK,
    DEFAULT_HEAD,
    DEFAULT_METHOD,
    QuantConfig,
)
from .adapters import write_adapter
from .convert import Source, export_encoder, quant_config, read_source
from .families import Encoder
from .graph import Graph, WeightFile
from .staging import staging
from .static_decoder import PAST, ROWS, StaticDecoderBuilder

OPSET = 23                  # RotaryEmbedding (with position_ids) is an ONNX operator from opset 23
MIN_BLOCK = 16              # the smallest int4 block MatMulNBits takes
SPEECH_CHUNK = 500          # encoder frames per attention chunk (runtime/speech.py's CHUNK)


@dataclass(frozen=True)
class StaticShapes:
    """The fixed shapes of a static bundle, chosen at export."""

    context: int = 1024               # positions in the window: prompt + answer
    prefill_chunk: int = 32           # prompt rows per prefill call
    image_crops: int | None = None    # crops besides the global image (None: the checkpoint's dynamic-HD limit)
    audio_seconds: float = 10.0       # the longest audio the speech graph takes (shorter clips are padded)

    @property
    def audio_frames(self) -> int:
        """Log-mel frames of `audio_seconds` at 16 kHz (window 400, hop 160)."""
        return (round(self.audio_seconds * 16000) - 400) // 160 + 1

    def check(self, max_position: int) -> None:
        if not 1 < self.prefill_chunk < self.context:
            raise CheckpointError(f"--prefill-chunk {self.prefill_chunk}: must be more than 1 and less than the "
                                  f"context ({self.context})")
        if self.context > max_position:
            raise CheckpointError(f"--context {self.context}: the model's context is {max_position} positions")
        if not 8 <= self.audio_frames <= 8 * SPEECH_CHUNK:
            raise CheckpointError(f"--audio-seconds {self.audio_seconds:g}: choose 0.1 to 40 (one attention chunk "
                                  "of the speech encoder)")
        if self.image_crops is not None and self.image_crops < 1:
            raise CheckpointError(f"--image-crops {self.image_crops}: must be at least 1")


def fixed(model: onnx.ModelProto, dims: dict[str, int]) -> onnx.ModelProto:
    """A copy with the named free dimensions of its inputs and outputs set."""
    out = copy.deepcopy(model)
    for value in [*out.graph.input, *out.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in dims:
                dim.dim_value = dims[dim.dim_param]
    return out


def fix_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]]) -> None:
    """Set every dimension of the named inputs and outputs, in place."""
    for value in [*model.graph.input, *model.graph.output]:
        if value.name in shapes:
            for dim, size in zip(value.type.tensor_type.shape.dim, shapes[value.name]):
                dim.dim_value = size


def lift_2d_matmulnbits(model: onnx.ModelProto, path: Path) -> int:
    """Wrap each MatMulNBits with a 2-D input in Unsqueeze/Squeeze (the HTP takes rank 3); ranks
    come from onnxruntime's symbolic shape inference over the graph at `path`, which needs the
    weights to fold shapes. Returns how many were lifted."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    with_weights = onnx.load(path)
    fix_shapes(with_weights, {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input})
    inferred = SymbolicShapeInference.infer_shapes(with_weights, auto_merge=True)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*inferred.graph.value_info, *inferred.graph.input]}
    axes = "lift_axes"
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([0], np.int64), axes))
    nodes, lifted = [], 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits" and ranks.get(node.input[0]) == 2:
            x3, y3, y = f"{node.name}/x3", f"{node.name}/y3", node.output[0]
            nodes.append(helper.make_node("Unsqueeze", [node.input[0], axes], [x3], name=f"{node.name}/lift"))
            node.input[0], node.output[0] = x3, y3
            nodes += [node, helper.make_node("Squeeze", [y3, axes], [y], name=f"{node.name}/drop")]
            lifted += 1
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return lifted


def whole_block(model: onnx.ModelProto, block: int) -> int:
    """The largest int4 block, at most `block`, that divides the input size K of every MatMulNBits."""
    sizes = {a.i for n in model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "K"}
    while block > MIN_BLOCK and any(k % block for k in sizes):
        block //= 2
    if any(k % block for k in sizes):
        raise CheckpointError(f"{model.graph.name}: input sizes {sorted(k for k in sizes if k % block)} are not "
                              f"multiples of {MIN_BLOCK}, the smallest int4 block; export with --precision fp32")
    return block


def encoder_shapes(encoder: Encoder, shapes: StaticShapes, crops: int) -> dict[str, list[int]]:
    """The fixed input and output shapes of a static encoder graph (`crops` besides the global image)."""
    c = encoder.weights.cfg   # type: ignore[attr-defined]
    if encoder.kind == "vision":
        patches, side = c.patches_per_side ** 2, c.patches_per_side // 2
        # the most tokens an image takes: its crops in one column, each row of a crop ending in a separator
        tokens = crops * side * (side + 1) + 1 + side * (side + 1)
        return {VisionNames.PIXEL_VALUES: [1 + crops, 3, c.image_size, c.image_size],
                VisionNames.POSITION_IDS: [1 + crops, patches], VisionNames.ATTENTION_BIAS: [1 + crops, 1, 1, patches],
                VisionNames.TOKEN_INDEX: [tokens], VisionNames.IMAGE_FEATURES: [tokens, c.text_hidden_size]}
    tokens = math.ceil(shapes.audio_frames / 8)
    return {SpeechNames.AUDIO_FEATURES: [1, shapes.audio_frames, c.input_size], SpeechNames.KEY_BIAS: [1, 1, 1, tokens],
            SpeechNames.SPEECH_FEATURES: [tokens, c.text_hidden_size],
            SpeechNames.VISION_SPEECH_FEATURES: [tokens, c.text_hidden_size]}


def export_static_encoder(encoder: Encoder, quant: QuantConfig | None, out: Path, shapes: dict[str, list[int]],
                          show_progress: bool):
    """KIND.onnx with fixed shapes, int4 in whole blocks; returns its manifest section."""
    entry = export_encoder(encoder, quant, out, show_progress)
    path = out / f"{encoder.kind}.onnx"
    model = onnx.load(path, load_external_data=False)
    if quant is not None and (block := whole_block(model, quant.block_size)) != quant.block_size:
        entry = export_encoder(encoder, replace(quant, block_size=block), out, show_progress)
        model = onnx.load(path, load_external_data=False)
    fix_shapes(model, shapes)
    lift_2d_matmulnbits(model, path)
    onnx.save_model(model, path)
    return entry


def export_static(model_dir: str | Path, out_dir: str | Path, precision: str = "int4", block_size: int = DEFAULT_BLOCK,
                  force: bool = False, show_progress: bool = True, adapters: dict[str, str | Path] | None = None,
                  shapes: StaticShapes = StaticShapes(), qnn_soc: int | None = None, quant_method: str = DEFAULT_METHOD,
                  head: str = DEFAULT_HEAD, head_block_size: int = 0, encoder_quant: str = DEFAULT_ENCODER,
                  encoder_block_size: int = DEFAULT_ENCODER_BLOCK, bits_budget: float | None = DEFAULT_BITS_BUDGET) -> Path:
    """Export a checkpoint to a static-shapes bundle; with `qnn_soc`, also compile QNN context
    binaries for that SoC (export/qnn.py; needs onnxruntime-qnn). Quantisation as export_model's.
    Returns the bundle path."""
    out_dir = Path(out_dir)
    if precision not in ("int4", "fp32"):   # before reading the checkpoint
        raise CheckpointError(f"--precision {precision!r}: choose int4 or fp32")
    if qnn_soc is not None:
        from .qnn import check_available
        check_available()   # before any work: compiling needs onnxruntime-qnn
    src = read_source(model_dir, adapters)
    shapes.check(src.cfg.max_position)
    quant = quant_config(src, precision, quant_method, block_size, head, head_block_size, encoder_quant, encoder_block_size,
                         bits_budget, show_progress)
    rank = max((r for a in src.adapters for r in a.ranks), default=0)
    with staging(out_dir, force, src.inputs) as tmp:
        manifest = _write(src, tmp, quant, precision, shapes, rank, show_progress)
        if qnn_soc is not None:
            from .qnn import compile_contexts
            manifest = replace(manifest, qnn=compile_contexts(tmp, manifest.graphs, qnn_soc, show_progress))
        replace(manifest, files=file_table(tmp)).write(tmp)
    return out_dir


def _write(src: Source, tmp: Path, quant: QuantConfig | None, precision: str, shapes: StaticShapes, rank: int,
           show_progress: bool) -> Manifest:
    """The graphs, adapters and tokenizer files of a static bundle into `tmp`; returns its manifest
    (without the file table)."""
    cfg = src.cfg
    data = WeightFile(tmp / "decoder.onnx.data")
    graph = Graph("phi3_static_decoder", data)
    with progress(cfg.num_layers, "export decoder", "layer", show_progress) as tick:
        StaticDecoderBuilder(graph, cfg, src.weights, quant, shapes.context, rank, bool(src.encoders)).build(lambda _: tick())
    data.close()
    template = graph.model(OPSET)
    for name, rows in (("decoder.onnx", 1), ("prefill.onnx", shapes.prefill_chunk)):
        onnx.save_model(fixed(template, {ROWS: rows, PAST: shapes.context - rows}), tmp / name)
    sections = {}
    for encoder in src.encoders:
        entry = encoder.entry("")
        crops = shapes.image_crops or (entry.dynamic_hd if isinstance(entry, Vision) else 0)
        sections[encoder.kind] = export_static_encoder(encoder, quant.encoders if quant else None, tmp,
                                                       encoder_shapes(encoder, shapes, crops),
                                                       show_progress)
        if isinstance(entry, Vision):
            sections["vision"] = replace(sections["vision"], dynamic_hd=crops)
    adapter_entries = {a.name: write_adapter(a, tmp / "adapters" / f"{a.name}.onnx_adapter", "fp32", src.base_id)
                       for a in src.adapters}
    src.copy_files(tmp)
    return Manifest(
        created_by=f"phi4edge {version('phi4edge')}", model=src.model(),
        quantization=Quantization(precision=precision, **(quant.to_json() if quant else {}),  # type: ignore[arg-type]
                                  tied_embeddings=f"int{quant.table.bits} LM head (block {quant.table.block_size}); fp16 "
                                  "embedding table (QNN has no quantised gather)" if quant and cfg.tie_word_embeddings else None),
        decoder=Decoder(graph="decoder.onnx", lora="fp32" if rank else None,
                        media={e.media_input: e.token_id for e in src.encoders}),
        adapters=adapter_entries, vision=sections.get("vision"), speech=sections.get("speech"),  # type: ignore[arg-type]
        generation=src.generation(), files={},
        static=Static(context=shapes.context, prefill_graph="prefill.onnx", prefill_chunk=shapes.prefill_chunk,
                      lora_rank=rank, audio_frames=shapes.audio_frames if "speech" in sections else 0),
        requires=[STATIC_SHAPES])


__all__ = ["StaticShapes", "export_static"]
