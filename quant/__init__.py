"""Weight quantisation for export (numpy in, packed arrays out)."""
from .int4 import QuantConfig, quantize_int4

__all__ = ["QuantConfig", "quantize_int4"]
