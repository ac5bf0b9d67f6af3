"""CPU deployment: int8 dynamic quantisation and onnxruntime graph rewrites (a derived artifact folder)."""
