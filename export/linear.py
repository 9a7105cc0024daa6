"""The one writer of linear layers, for the decoder and the encoders alike: x @ W.T as MatMul
(fp32) or MatMulNBits (quantised by the configured method)."""
from __future__ import annotations

import numpy as np

from ..quant import QuantConfig
from .graph import Graph

MS = "com.microsoft"


def linear(g: Graph, name: str, x: str, w: np.ndarray, quant: QuantConfig | None) -> str:
    """x @ w.T for an [out, in] weight; initializers are named `{name}.weight`, or `{name}.qweight`,
    `{name}.scales` (and `{name}.zero_points` for asymmetric methods)."""
    if quant is None:
        return g.op("MatMul", [x, g.weight(f"{name}.weight", w.T)], name=name)
    q = quant.weight(w, name)
    inputs = [x, g.weight(f"{name}.qweight", q.packed), g.weight(f"{name}.scales", q.scales)]
    if q.zero_points is not None:
        inputs.append(g.weight(f"{name}.zero_points", q.zero_points))
    return g.op("MatMulNBits", inputs, domain=MS, name=name, K=w.shape[1], N=w.shape[0], bits=q.bits,
                block_size=q.block_size, accuracy_level=quant.accuracy_level)
