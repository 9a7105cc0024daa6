"""The one writer of linear layers, for the decoder and the encoders alike: x @ W.T as MatMul
(fp32) or MatMulNBits (quantised by the configured method)."""
from __future__ import annotations

import numpy as np

from ..quant import QuantConfig
from .graph import Graph

MS = "com.microsoft"


def linear(g: Graph, name: str, x: str, w: np.ndarray, quant: QuantConfig | None) -> str:
    """x @ w.T for an [out, in] weight; initializers are named `{name}.weight`, or `{name}.qweight`
    and `{name}.scales`."""
    if quant is None:
        return g.op("MatMul", [x, g.weight(f"{name}.weight", w.T)], name=name)
    packed, scales = quant.quantize(w)
    return g.op("MatMulNBits", [x, g.weight(f"{name}.qweight", packed), g.weight(f"{name}.scales", scales)],
                domain=MS, name=name, K=w.shape[1], N=w.shape[0], bits=quant.bits,
                block_size=quant.block_size, accuracy_level=quant.accuracy_level)
