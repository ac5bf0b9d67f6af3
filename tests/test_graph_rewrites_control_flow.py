"""Graph rewrites keep If / Loop bodies intact: a body that reads an outer tensor is a reader like any other.

Before, `replace_uses`, the consumer index and the weight-transpose fold looked at the top-level node list only,
so removing `x + 0` left an If body reading a tensor nobody produced, and folding `Transpose(W)` dropped `W`
while a body still read it: the rewritten graph no longer loaded. Each case runs the rewritten graph in
onnxruntime for both branches against the original.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from export.int8.graph_editing import GraphIndex, replace_uses, subgraph_reads
from export.int8.graph_optimization import optimize_model
from export.int8.quantization import fold_weight_transposes
from tests.test_graph_optimization import _run

PROPERTY = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _branch(name: str, node: onnx.NodeProto, out: str, shape: list[int]) -> onnx.GraphProto:
    return helper.make_graph([node], name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, shape)])


def _model(nodes: list[onnx.NodeProto], inputs: dict[str, tuple[int, list[int]]], outputs: dict[str, list[int]],
           inits: dict[str, np.ndarray]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(k, t, s) for k, (t, s) in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, s) for o, s in outputs.items()],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def _zero_add_read_by_if() -> onnx.ModelProto:
    """masked = scores + 0 feeds a Softmax and the then-branch of an If (which negates it)."""
    then = _branch("then", helper.make_node("Neg", ["masked"], ["t_out"]), "t_out", [2, 4, 4])
    other = _branch("else", helper.make_node("Identity", ["scores"], ["e_out"]), "e_out", [2, 4, 4])
    return _model(
        [helper.make_node("Add", ["scores", "zero"], ["masked"]),
         helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
         helper.make_node("If", ["cond"], ["branch"], then_branch=then, else_branch=other)],
        {"scores": (TensorProto.FLOAT, [2, 4, 4]), "cond": (TensorProto.BOOL, [])}, {"p": [2, 4, 4], "branch": [2, 4, 4]},
        {"zero": np.zeros((1, 4, 4), np.float32)})


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), cond=st.booleans())
def test_zero_add_read_inside_an_if_body_is_rewired(seed: int, cond: bool) -> None:
    model = _zero_add_read_by_if()
    new = onnx.ModelProto()
    new.CopyFrom(model)
    assert optimize_model(new, rewrites=("remove_zero_adds",))["remove_zero_adds"] == 1
    onnx.checker.check_model(new)
    assert "masked" in subgraph_reads(model.graph.node[-1]) and "masked" not in subgraph_reads(new.graph.node[-1])
    feed = {"scores": np.random.default_rng(seed).standard_normal((2, 4, 4)).astype(np.float32),
            "cond": np.array(cond)}
    for a, b in zip(_run(model, feed), _run(new, feed), strict=True):
        np.testing.assert_array_equal(b, a)


def test_a_body_read_counts_as_a_consumer() -> None:
    """`p` has one top-level reader and one in an If body: not single-use, so no rewrite may fold it away."""
    then = _branch("then", helper.make_node("Identity", ["p"], ["t_out"]), "t_out", [3])
    other = _branch("else", helper.make_node("Identity", ["x"], ["e_out"]), "e_out", [3])
    model = _model([helper.make_node("Relu", ["x"], ["p"]), helper.make_node("Neg", ["p"], ["y"]),
                    helper.make_node("If", ["cond"], ["z"], then_branch=then, else_branch=other)],
                   {"x": (TensorProto.FLOAT, [3]), "cond": (TensorProto.BOOL, [])}, {"y": [3], "z": [3]}, {})
    idx = GraphIndex(model, None, {})
    assert idx.single_consumer("p") is None
    assert [n.op_type for n in idx.consumers["p"]] == ["Neg", "If"]


def test_replace_uses_leaves_a_body_that_defines_the_name_alone() -> None:
    """A body's own tensor of the same name shadows the outer one and must not be renamed."""
    inner = helper.make_graph([helper.make_node("Constant", [], ["v"], value_float=2.0),
                               helper.make_node("Neg", ["v"], ["t_out"])], "then", [],
                              [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [])])
    other = _branch("else", helper.make_node("Neg", ["v"], ["e_out"]), "e_out", [])
    graph = helper.make_graph([helper.make_node("If", ["cond"], ["z"], then_branch=inner, else_branch=other)],
                              "g", [], [])
    replace_uses(graph, "v", "w")
    bodies = {a.name: a.g for a in graph.node[0].attribute}
    then_b, else_b = bodies["then_branch"], bodies["else_branch"]
    assert list(then_b.node[1].input) == ["v"]
    assert list(else_b.node[0].input) == ["w"]


@pytest.mark.parametrize("body_reads", ["weight", "transposed"])
def test_folded_weight_transpose_keeps_what_a_body_reads(body_reads: str) -> None:
    """Transpose(W) folds into an initializer; W (or the transposed name) read by a body stays readable."""
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    read = "W" if body_reads == "weight" else "Wt"
    then = _branch("then", helper.make_node("ReduceSum", [read], ["t_out"], keepdims=0), "t_out", [])
    other = _branch("else", helper.make_node("ReduceSum", ["x"], ["e_out"], keepdims=0), "e_out", [])
    model = _model([helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),
                    helper.make_node("MatMul", ["x", "Wt"], ["y"]),
                    helper.make_node("If", ["cond"], ["z"], then_branch=then, else_branch=other)],
                   {"x": (TensorProto.FLOAT, [2, 4]), "cond": (TensorProto.BOOL, [])}, {"y": [2, 3], "z": []}, {"W": w})
    new = onnx.ModelProto()
    new.CopyFrom(model)
    assert fold_weight_transposes(new) == 1
    onnx.checker.check_model(new)
    feed = {"x": np.ones((2, 4), np.float32), "cond": np.array(True)}
    for a, b in zip(_run(model, feed), _run(new, feed), strict=True):
        np.testing.assert_array_equal(b, a)
