"""TensorRT: build plan, engine builder, precision flags and the engine accuracy check."""
