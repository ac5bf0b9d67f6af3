"""ONNX export (three graphs + manifest), parity checks, and TensorRT engine builds."""
