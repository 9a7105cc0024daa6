"""Bundle runtime on onnxruntime (never imports torch)."""
