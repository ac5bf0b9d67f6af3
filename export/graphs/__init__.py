"""The ONNX export itself: graph wrappers, checkpoint loading, op checks, parity and gate calibration."""
