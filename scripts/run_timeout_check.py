"""Measures how promptly `run_timeout_ms` stops a long onnxruntime call (docs/09-reliability.md).

    python -m scripts.run_timeout_check            # prints the full run time and the time until termination

A chain of 1000x1000 MatMuls (seconds of work on one thread) runs once in full, then through
OnnxRuntimeBackend's watchdog (RunOptions.terminate set by a timer). onnxruntime checks the flag between
nodes, so the overshoot is about one node's time.
"""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from runtime.backend import BackendError
from runtime.backend_onnxruntime import OnnxRuntimeBackend


def main(n: int = 1000, nodes: int = 30, timeout_ms: float = 50.0) -> None:
    w = numpy_helper.from_array((np.random.default_rng(0).random((n, n)) / n).astype(np.float32), "w")
    chain = [helper.make_node("MatMul", ["x" if i == 0 else f"y{i - 1}", "w"], [f"y{i}"]) for i in range(nodes)]
    graph = helper.make_graph(chain, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info(f"y{nodes - 1}", TensorProto.FLOAT, [n, n])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    backend = OnnxRuntimeBackend.__new__(OnnxRuntimeBackend)  # only the watchdog is exercised, no artifacts
    backend.run_timeout_ms = timeout_ms
    backend.sessions = {"chain": ort.InferenceSession(model.SerializeToString(), opts,
                                                      providers=["CPUExecutionProvider"])}
    backend._out_names = {"chain": [f"y{nodes - 1}"]}
    x = np.random.default_rng(1).random((n, n), dtype=np.float32)
    t0 = time.perf_counter()
    backend.sessions["chain"].run(None, {"x": x})
    full = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        backend._run("chain", {"x": x})
        outcome = "not terminated"
    except BackendError as exc:
        outcome = str(exc)
    print(f"full run {full * 1e3:.0f} ms; with run_timeout_ms={timeout_ms:g}: stopped after "
          f"{(time.perf_counter() - t0) * 1e3:.0f} ms ({outcome})")


if __name__ == "__main__":
    main()
