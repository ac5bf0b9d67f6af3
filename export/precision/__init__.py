"""Precision lowering: activation ranges, calibrated fp16/bf16 graphs for strongly typed TensorRT, accuracy fallback."""
