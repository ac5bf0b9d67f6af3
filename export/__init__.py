"""ONNX export (four graphs + manifest) and its derived folders: int8 for CPUs, fp16/bf16 for TensorRT, engines."""
