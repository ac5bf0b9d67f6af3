"""`runtime serve`: LeRobot's async-inference gRPC service (`transport.AsyncInference`) over EdgePolicy.

Torch-free: grpcio, protobuf and numpy plus the backend. Network payloads are decoded by a restricted
unpickler (`safe_pickle`), replies are written opcode by opcode (`action_pickle`).
"""
