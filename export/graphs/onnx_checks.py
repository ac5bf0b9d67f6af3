"""Static checks that an exported graph is buildable by TensorRT, not just runnable by onnxruntime:
every op in the TensorRT ONNX parser's supported set, no float64 tensor anywhere, opset >= 17."""

from __future__ import annotations

from pathlib import Path

import onnx

SUPPORTED_OPS_FILE = Path(__file__).with_name("tensorrt_onnx_ops.txt")
MIN_OPSET = 17


def tensorrt_supported_ops() -> frozenset[str]:
    lines = SUPPORTED_OPS_FILE.read_text().splitlines()
    return frozenset(ln.strip() for ln in lines if ln.strip() and not ln.startswith("#"))


def _all_graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_graphs(attr.g)
            for sub in attr.graphs:
                yield from _all_graphs(sub)


def _bool_where_nodes(model: onnx.ModelProto) -> list[str]:
    """Where nodes selecting between bool tensors: onnxruntime-CPU has no kernel for them."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    return [n.name for n in inferred.graph.node
            if n.op_type == "Where" and types.get(n.output[0]) == onnx.TensorProto.BOOL]


def graph_problems(model: onnx.ModelProto) -> list[str]:
    """Human-readable problems (empty list = TensorRT-ready and onnxruntime-loadable by these rules)."""
    problems: list[str] = [f"node {n}: Where on bool tensors (onnxruntime-CPU has no kernel; use &, |, ~)"
                           for n in _bool_where_nodes(model)]
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        problems.append(f"opset {opset} < {MIN_OPSET}")
    supported = tensorrt_supported_ops()
    f64 = onnx.TensorProto.DOUBLE
    for g in _all_graphs(model.graph):
        for node in g.node:
            if node.domain not in ("", "ai.onnx"):
                problems.append(f"node {node.name}: custom domain {node.domain}::{node.op_type}")
            elif node.op_type not in supported:
                problems.append(f"node {node.name}: op {node.op_type} is not in the TensorRT ONNX parser's set")
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == f64:
                    problems.append(f"node {node.name}: float64 constant")
                if node.op_type == "Cast" and attr.name == "to" and attr.i == f64:
                    problems.append(f"node {node.name}: Cast to float64")
        for init in g.initializer:
            if init.data_type == f64:
                problems.append(f"initializer {init.name}: float64")
        for vi in list(g.value_info) + list(g.input) + list(g.output):
            if vi.type.tensor_type.elem_type == f64:
                problems.append(f"tensor {vi.name}: float64")
    return problems


def check_graph_file(path: Path) -> list[str]:
    model = onnx.load(str(path), load_external_data=False)
    return graph_problems(model)
