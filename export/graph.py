"""A small ONNX graph builder whose weights stream straight to one external-data file.

Written by hand because onnx.save (and onnx's external-data helpers) want every tensor in memory
at once; a 3.8B model must be written tensor by tensor to keep export memory bounded.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ALIGN = 4096   # page-aligned tensors let onnxruntime memory-map external data


class WeightFile:
    """Appends arrays to one data file and returns TensorProtos that point into it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f = open(self.path, "wb")

    def add(self, name: str, array: np.ndarray) -> TensorProto:
        array = np.ascontiguousarray(array)
        offset = -(-self._f.tell() // ALIGN) * ALIGN
        self._f.seek(offset)
        self._f.write(np.ascontiguousarray(array).tobytes())
        tensor = TensorProto(name=name, dims=array.shape,
                             data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
                             data_location=TensorProto.EXTERNAL)
        for key, value in (("location", self.path.name), ("offset", str(offset)), ("length", str(array.nbytes))):
            tensor.external_data.add(key=key, value=value)
        return tensor

    def close(self) -> None:
        self._f.close()


class Graph:
    """Collects nodes, inputs, outputs and initializers; `model()` assembles the ModelProto."""

    def __init__(self, name: str, weights: WeightFile):
        self.name = name
        self.weights = weights
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._count = 0
        self._consts: set[str] = set()

    def input(self, name: str, dtype: int, shape: list) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def output(self, name: str, dtype: int, shape: list) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def weight(self, name: str, array: np.ndarray) -> str:
        """A large constant, written to the external data file now."""
        self.initializers.append(self.weights.add(name, array))
        return name

    def const(self, name: str, array) -> str:
        """A small constant kept inside the graph (shapes, axes); one initializer per name."""
        if name not in self._consts:
            self._consts.add(name)
            self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: list[str] | None = None,
           domain: str = "", name: str | None = None, **attrs) -> str:
        """Add a single-output node; returns its output name (`outputs` names it)."""
        if outputs is not None and len(outputs) != 1:
            raise ValueError(f"{op_type}: op() writes one output; use ops() for {len(outputs)}")
        return self.ops(op_type, inputs, outputs or 1, domain, name, **attrs)[0]

    def ops(self, op_type: str, inputs: list[str], outputs: int | list[str],
            domain: str = "", name: str | None = None, **attrs) -> list[str]:
        """Add a node with several outputs (a count, or their names; "" for unused); returns them."""
        self._count += 1
        name = name or f"{op_type}_{self._count}"
        names = [f"{name}/out{i}" for i in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op_type, inputs, names, name=name, domain=domain or None, **attrs))
        return names

    def split(self, x: str, sizes: list[int], axis: int, name: str | None = None) -> list[str]:
        """Split `x` into pieces of the given sizes along `axis`. The sizes are an input, not
        opset 18's num_outputs attribute: onnxruntime-web's WebGPU EP failed shape inference on
        Split(num_outputs), and CPU runs both forms alike."""
        key = f"split_{'_'.join(map(str, sizes))}"
        return self.ops("Split", [x, self.const(key, np.array(sizes, np.int64))], len(sizes), name=name, axis=axis)

    def graph(self) -> onnx.GraphProto:
        """The GraphProto (a subgraph's body, or the model's graph)."""
        return helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)

    def model(self, opset: int = 21) -> onnx.ModelProto:
        model = helper.make_model(self.graph(), producer_name="phi4edge",
                                  opset_imports=[helper.make_opsetid("", opset),
                                                 helper.make_opsetid("com.microsoft", 1)])
        model.ir_version = 10   # the newest that onnxruntime-genai's bundled runtime reads too
        return model
