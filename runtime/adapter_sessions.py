"""A decoder session per int4 or int8 adapter, sharing the prepacked base weights.

An adapter bound to the decoder's LoRA inputs is read whole on every token: a rank-320 adapter on
all four linears is 14% of the base's parameters, so its int8 pairs (DynamicQuantizeMatMul, whose
weights may be graph inputs) cost decode 0.70x text-only, fp32 0.55x (bench/RESULTS.md). Fed to
MatMulNBits as constants, the adapter's int4 pairs are packed once and read at int4 cost, but
MatMulNBits packs only constants, and a second session would pack the base weights again (2.6 GB at
32 layers). A prepacked entry (runtime/prepacked.py) removes that cost: each session maps the same
packed file, so the operating system holds the base weights once (two sessions on one entry: 2.79 GB
PSS for 5.19 GiB RSS). So an adapter's session is the entry's optimised graph with each LoRA pair
rewritten as two MatMulNBits whose weights are the adapter file's own int4 tensors, handed to
onnxruntime from the file's memory map (add_external_initializers), or an int8 file's levels in
8-bit MatMulNBits' layout; the adapter stays its own file, loaded on its first request.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from ..errors import BundleError

_BLOCKS = (16, 32, 64, 128, 256)   # the block sizes MatMulNBits takes
_PAD_LEVEL = 0x88                  # two int4 zeros (level 8) in one byte


def _int4(arrays: dict[str, np.ndarray], name: str, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(packed [cols, blocks, block/2], scales [cols, blocks], block) of the int4 tensor `name`, a
    [rows, cols] weight, in MatMulNBits' layout; a whole-column block that MatMulNBits does not take
    (ranks below 32 are stored as one even-sized block) is padded with zero levels, losslessly."""
    packed, scales = arrays.get(name), arrays.get(f"{name}.scale")
    if packed is None or scales is None or packed.dtype != np.uint8 or scales.dtype != np.float32 or packed.ndim != 3:
        raise ValueError(f"'{name}' is not an int4 tensor with scales")
    blocks, block = packed.shape[1], packed.shape[2] * 2
    if packed.shape[0] != cols or scales.shape != packed.shape[:2] or not (blocks - 1) * block < rows <= blocks * block:
        raise ValueError(f"'{name}' has shape {list(packed.shape)} for a [{rows}, {cols}] weight")
    if block in _BLOCKS:
        return packed, scales, block
    if blocks != 1:
        raise ValueError(f"'{name}' has blocks of {block}, which MatMulNBits does not take")
    wide = next(b for b in _BLOCKS if b >= block)
    padded = np.full((cols, 1, wide // 2), _PAD_LEVEL, np.uint8)
    padded[:, :, :block // 2] = packed
    return padded, scales, wide


def _int8(arrays: dict[str, np.ndarray], name: str, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(levels [cols, blocks, block], scales [cols, blocks], block) of the int8 tensor `name` ([rows,
    cols], a scale per column) in 8-bit MatMulNBits' layout (zero point 128): a transposed copy, each
    column's scale repeated per block, a last partial block padded with zero levels."""
    q, scale = arrays.get(name), arrays.get(f"{name}.scale")
    if q is None or scale is None or q.dtype != np.int8 or scale.dtype != np.float32 or q.ndim != 2:
        raise ValueError(f"'{name}' is not an int8 tensor with scales")
    if q.shape != (rows, cols) or scale.shape != (cols,):
        raise ValueError(f"'{name}' has shape {list(q.shape)} for a [{rows}, {cols}] weight")
    # the block that reads the fewest bytes per column, padding and scales included (rank 320: 64)
    block = min(_BLOCKS, key=lambda b: -(-rows // b) * (b + 4))
    blocks = -(-rows // block)
    levels = np.full((cols, blocks * block), 128, np.uint8)
    levels[:, :rows] = (q.T.astype(np.int16) + 128).astype(np.uint8)
    return levels.reshape(cols, blocks, block), np.repeat(scale[:, None], blocks, 1), block


def _zero_pair(pair: str, rows: int, cols: int) -> dict[str, np.ndarray]:
    """An int4 pair of rank 1 that adds nothing, for a linear the adapter does not cover."""
    a_blocks = -(-rows // 32)
    return {pair + "A": np.full((1, a_blocks, 16), _PAD_LEVEL, np.uint8), pair + "A.scale": np.ones((1, a_blocks), np.float32),
            pair + "B": np.full((cols, 1, 8), _PAD_LEVEL, np.uint8), pair + "B.scale": np.ones((cols, 1), np.float32)}


def _external(name: str, array: np.ndarray) -> TensorProto:
    """An initializer whose data onnxruntime takes from memory (add_external_initializers)."""
    t = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape)
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "adapter"), ("offset", "0"), ("length", str(array.nbytes))):
        t.external_data.add(key=key, value=value)
    return t


def rewrite(graph: onnx.GraphProto, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Turn each LoRA product of `graph` (a node whose weight is a `lora.*.A` or `.B` input) into a
    MatMulNBits on the adapter's int4 or int8 tensor; returns the constants it now reads, by name.
    Raises ValueError when an adapter tensor is of another precision or does not fit its input."""
    shapes = {t.name: list(t.dims) for t in graph.initializer if t.name.startswith("lora.")}
    constants: dict[str, np.ndarray] = {}
    for node in graph.node:
        weight = node.input[1] if len(node.input) > 1 else ""
        if not (weight.startswith("lora.") and weight.endswith((".A", ".B"))):
            continue
        pair = weight[:-1]
        if pair + "A" not in arrays and pair + "B" not in arrays:   # a linear the adapter leaves alone
            arrays = arrays | _zero_pair(pair, shapes[pair + "A"][0], shapes[pair + "B"][1])
        a = arrays.get(pair + "A")
        if a is None or a.dtype not in (np.uint8, np.int8):
            raise ValueError(f"'{pair}A' is not an int4 or int8 tensor")
        bits = 4 if a.dtype == np.uint8 else 8
        rank = a.shape[0] if bits == 4 else a.shape[1]   # the graph leaves the rank free: the adapter's A says it
        rows, cols = (shapes[weight][0], rank) if weight.endswith(".A") else (rank, shapes[weight][1])
        levels, scales, block = (_int4 if bits == 4 else _int8)(arrays, weight, rows, cols)
        constants |= {f"{weight}.levels": levels, f"{weight}.scales": scales}
        node.CopyFrom(helper.make_node("MatMulNBits", [node.input[0], f"{weight}.levels", f"{weight}.scales"],
                                       list(node.output), name=node.name, domain="com.microsoft",
                                       K=rows, N=cols, bits=bits, block_size=block, accuracy_level=4))
    unused = [n for n in arrays if n.endswith((".A", ".B")) and f"{n}.levels" not in constants]
    if unused:
        raise ValueError(f"tensor '{unused[0]}' matches no LoRA input of this decoder")
    kept = [t for t in graph.initializer if not t.name.startswith("lora.")]
    del graph.initializer[:]
    graph.initializer.extend(kept + [_external(name, a) for name, a in constants.items()])
    kept_inputs = [i for i in graph.input if not i.name.startswith("lora.")]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    return constants


def adapter_session(entry: Path, arrays: dict[str, np.ndarray], so: ort.SessionOptions,
                    name: str) -> ort.InferenceSession:
    """A session of the prepacked decoder graph `entry` with adapter `name`'s int4 or int8 pairs
    (`arrays`, views of its mapped file, which must outlive the session) as constants; `so` are the runtime's
    session options. Raises BundleError when the adapter cannot run this way."""
    model = onnx.load(str(entry), load_external_data=False)
    try:
        constants = rewrite(model.graph, arrays)
    except (ValueError, KeyError) as e:
        raise BundleError(f"adapter '{name}': {e}") from None
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL   # the entry is optimised already
    so.add_session_config_entry("session.model_external_initializers_file_folder_path", str(entry.parent))
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in constants.values()]
    so.add_external_initializers(list(constants), values)
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    session.constants = (constants, values)   # onnxruntime was handed their memory: kept while the session lives
    return session
