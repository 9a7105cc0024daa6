"""Checkpoint -> bundle export (ONNX graphs, int4 weights, tokenizer, manifest)."""
from .convert import export_model

__all__ = ["export_model"]
