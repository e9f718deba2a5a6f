"""BentoML service over an onnxruntime scorer; never imports torch."""
