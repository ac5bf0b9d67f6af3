"""The per-node precision pass (export/precision/precision_lowering.py) and its calibration (export/precision/tensor_ranges.py) on
random small graphs: the lowered graph is type-correct (strict shape inference, onnxruntime loads it), keeps
float32 I/O, stays within fp16 rounding of the fp32 graph, follows each rule, and its fp32 emulation matches
the real fp16 graph."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from export.precision.precision_lowering import LoweringError, lower_graph, plan_nodes
from export.precision.tensor_ranges import MASK_FILL, RANGE_SUFFIX, float_tensor_types, instrument, measured_tensors

OPSET = 18


def _model(nodes, inits, inputs, outputs) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    return model


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _block_model(seed: int, width: int, layers: int, masked: bool) -> tuple[onnx.ModelProto, np.ndarray]:
    """A small transformer-ish stack: RMS-style norm (Pow/ReduceMean/Sqrt/Div), MatMul, tanh, masked softmax
    attention with the project's mask fill, a residual Add; random weights, one [1,4,width] input."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "x"
    for i in range(layers):
        w = numpy_helper.from_array((rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), f"w{i}")
        two = numpy_helper.from_array(np.array(2.0, np.float32), f"two{i}")
        eps = numpy_helper.from_array(np.array(1e-6, np.float32), f"eps{i}")
        inits += [w, two, eps]
        nodes += [
            helper.make_node("Pow", [x, f"two{i}"], [f"sq{i}"], name=f"pow{i}"),
            helper.make_node("ReduceMean", [f"sq{i}"], [f"ms{i}"], keepdims=1, name=f"mean{i}"),
            helper.make_node("Add", [f"ms{i}", f"eps{i}"], [f"mse{i}"], name=f"addeps{i}"),
            helper.make_node("Sqrt", [f"mse{i}"], [f"rms{i}"], name=f"sqrt{i}"),
            helper.make_node("Div", [x, f"rms{i}"], [f"n{i}"], name=f"div{i}"),
            helper.make_node("MatMul", [f"n{i}", f"w{i}"], [f"h{i}"], name=f"mm{i}"),
            helper.make_node("Tanh", [f"h{i}"], [f"t{i}"], name=f"tanh{i}"),
            helper.make_node("Transpose", [f"t{i}"], [f"tt{i}"], perm=[0, 2, 1], name=f"tr{i}"),
            helper.make_node("MatMul", [f"t{i}", f"tt{i}"], [f"s{i}"], name=f"scores{i}"),
        ]
        scores = f"s{i}"
        if masked:
            mask = numpy_helper.from_array(np.tril(np.ones((4, 4), bool))[None], f"mask{i}")
            fill = numpy_helper.from_array(np.array(MASK_FILL, np.float32), f"fill{i}")
            inits += [mask, fill]
            nodes.append(helper.make_node("Where", [f"mask{i}", f"s{i}", f"fill{i}"], [f"sm{i}"], name=f"where{i}"))
            scores = f"sm{i}"
        nodes += [
            helper.make_node("Softmax", [scores], [f"p{i}"], axis=-1, name=f"softmax{i}"),
            helper.make_node("MatMul", [f"p{i}", f"t{i}"], [f"a{i}"], name=f"attn{i}"),
            helper.make_node("Add", [x, f"a{i}"], [f"r{i}"], name=f"res{i}"),
        ]
        x = f"r{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, width])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, width])
    feed = rng.standard_normal((1, 4, width)).astype(np.float32)
    return _model(nodes, inits, [inp], [out]), feed


def _ranges(model: onnx.ModelProto, feed: np.ndarray) -> dict[str, float]:
    names = measured_tensors(model)
    outs = _run(instrument(model, names), {"x": feed})
    sess_names = [o.name for o in instrument(model, names).graph.output]
    values = dict(zip(sess_names, outs))
    return {n: float(values[n + RANGE_SUFFIX]) for n in names}


def _lowered(model: onnx.ModelProto, ranges: dict[str, float], precision: str, data_max: float,
             emulate: bool = False, keep: tuple[str, ...] = ()):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    types = float_tensor_types(m)
    decisions = plan_nodes(m, types, ranges, precision, data_max, keep)
    counts = lower_graph(m, decisions, types, precision, emulate=emulate)
    return m, {d.name: d for d in decisions}, counts


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), width=st.sampled_from([4, 8, 16]), layers=st.integers(1, 3),
       masked=st.booleans(), data_max=st.sampled_from([0.5, 4.0, 512.0]))
def test_lowered_graph_is_typed_close_and_follows_the_range_rule(seed, width, layers, masked, data_max):
    model, feed = _block_model(seed, width, layers, masked)
    ranges = _ranges(model, feed)
    low, decisions, counts = _lowered(model, ranges, "fp16", data_max)
    onnx.checker.check_model(low)
    onnx.shape_inference.infer_shapes(low, strict_mode=True)  # every Cast where types meet, or this raises
    assert [o.type.tensor_type.elem_type for o in low.graph.output] == [TensorProto.FLOAT]
    assert [i.type.tensor_type.elem_type for i in low.graph.input] == [TensorProto.FLOAT]
    want, = _run(model, {"x": feed})
    got, = _run(low, {"x": feed})
    assert got.dtype == np.float32 and np.all(np.isfinite(got))
    # fp16 keeps ~11 bits: a few units of 2^-11 relative, per layer, on O(1) values
    assert np.max(np.abs(got - want)) <= 2e-2 * layers * max(1.0, float(np.max(np.abs(want))))
    for node in model.graph.node:
        d = decisions[node.name]
        if node.op_type in ("Pow", "ReduceMean", "Sqrt"):
            assert d.precision == "fp32" and d.rule == "sensitive"
        floats = [t for t in (*node.input, *node.output) if t in ranges]
        if d.precision == "low":
            assert max((ranges[t] for t in floats), default=0.0) <= data_max
        elif d.rule == "range":
            assert max(ranges[t] for t in floats) > data_max
    low_count = sum(d.precision == "low" for d in decisions.values())
    assert counts["low_nodes"] == low_count
    if low_count:  # the weights of low matmuls are stored in fp16 (half the bytes)
        assert any(i.data_type == TensorProto.FLOAT16 for i in low.graph.initializer)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), width=st.sampled_from([4, 8]), layers=st.integers(1, 3), masked=st.booleans())
def test_emulation_stores_every_low_tensor_in_the_low_type(seed, width, layers, masked):
    """The fp32 emulation (the accuracy check for fp16 and bf16) rounds what the low graph stores: its output,
    written by a low node, lies on the fp16 grid, and it agrees with the real fp16 graph to fp16 accuracy.
    (onnxruntime's CPU provider runs fp16 nodes in fp32 and drops its own Cast pairs, so the real graph on
    the CPU is *less* rounded than TensorRT's fp16 storage; the emulation is the faithful one.)"""
    model, feed = _block_model(seed, width, layers, masked)
    ranges = _ranges(model, feed)
    real, decisions, _ = _lowered(model, ranges, "fp16", 512.0)
    emulated, _, _ = _lowered(model, ranges, "fp16", 512.0, emulate=True)
    assert not any(i.data_type in (TensorProto.FLOAT16, TensorProto.BFLOAT16) for i in emulated.graph.initializer)
    a, = _run(real, {"x": feed})
    b, = _run(emulated, {"x": feed})
    want, = _run(model, {"x": feed})
    assert decisions["out"].precision == "low"
    assert np.array_equal(b, b.astype(np.float16).astype(np.float32))
    scale = max(1.0, float(np.max(np.abs(want))))
    assert float(np.max(np.abs(a - b))) <= 2e-2 * layers * scale
    assert float(np.max(np.abs(b - want))) <= 2e-2 * layers * scale


def test_bf16_plan_is_valid_onnx_with_bf16_weights():
    model, feed = _block_model(3, 8, 2, True)
    low, _, _ = _lowered(model, _ranges(model, feed), "bf16", 512.0)
    onnx.checker.check_model(low)
    onnx.shape_inference.infer_shapes(low, strict_mode=True)
    assert any(i.data_type == TensorProto.BFLOAT16 for i in low.graph.initializer)
    emulated, _, _ = _lowered(model, _ranges(model, feed), "bf16", 512.0, emulate=True)
    got, = _run(emulated, {"x": feed})
    want, = _run(model, {"x": feed})
    assert np.max(np.abs(got - want)) < 0.1 and np.max(np.abs(got - want)) > 0  # rounded, but close


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.01, 1e4))
def test_instrumented_ranges_equal_numpy_and_skip_the_mask_fill(seed, scale):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((2, 5)) * scale).astype(np.float32)
    mask = rng.random((2, 5)) > 0.3
    nodes = [helper.make_node("Mul", ["x", "k"], ["y"], name="mul"),
             helper.make_node("Where", ["m", "y", "fill"], ["z"], name="where")]
    inits = [numpy_helper.from_array(np.array(3.0, np.float32), "k"),
             numpy_helper.from_array(np.array(MASK_FILL, np.float32), "fill")]
    model = _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5]),
                                  helper.make_tensor_value_info("m", TensorProto.BOOL, [2, 5])],
                   [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 5])])
    names = measured_tensors(model)
    assert set(names) == {"x", "y", "z"}  # initializers are read directly, bools are not measured
    inst = instrument(model, names)
    values = dict(zip([o.name for o in inst.graph.output], _run(inst, {"x": x, "m": mask})))
    y = x * np.float32(3.0)
    assert values["y" + RANGE_SUFFIX] == pytest.approx(float(np.max(np.abs(y))), rel=1e-6)
    kept = np.where(mask, y, 0.0)
    assert values["z" + RANGE_SUFFIX] == pytest.approx(float(np.max(np.abs(kept))), rel=1e-6, abs=1e-12)
    assert np.array_equal(values["z"], np.where(mask, y, np.float32(MASK_FILL)))  # the graph's own output intact


def test_mask_fill_matches_the_model_and_lowering_needs_no_torch():
    import subprocess
    import sys
    from pathlib import Path

    import export.precision.tensor_ranges as ranges
    from smolvla_cls.attention import MASK_FILL as model_fill

    assert ranges.MASK_FILL == model_fill
    assert np.float16(model_fill) == model_fill and np.isfinite(np.float16(model_fill))
    code = ("import sys, export.precision.mixed_precision, export.trt.build_engines, export.trt.engine_accuracy; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lerobot', 'transformers', 'smolvla_cls'}); "
            "assert not bad, bad; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_fused_softmax_and_layernorm_stay_fp32(precision):
    """Strongly typed TensorRT computes Softmax / LayerNormalization in their input type; the CPU emulation
    would compute them in fp32 — so the lowering keeps them fp32 and the gate predicts the engine."""
    width = 8
    inits = [numpy_helper.from_array(np.ones(width, np.float32), "g"),
             numpy_helper.from_array(np.zeros(width, np.float32), "b"),
             numpy_helper.from_array(np.eye(width, dtype=np.float32), "w")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("LayerNormalization", ["h", "g", "b"], ["n"], axis=-1, name="ln"),
             helper.make_node("Softmax", ["n"], ["y"], axis=-1, name="sm")]
    model = _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, width])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, width])])
    types = float_tensor_types(model)
    by_name = {d.name: d for d in plan_nodes(model, types, {}, precision)}
    assert by_name["mm"].precision == "low"
    assert by_name["ln"].precision == by_name["sm"].precision == "fp32"
    assert by_name["ln"].rule == by_name["sm"].rule == "sensitive"


def test_constants_that_do_not_fit_keep_their_node_fp32():
    big = numpy_helper.from_array(np.array(1e5, np.float32), "big")
    tiny = numpy_helper.from_array(np.array(1e-9, np.float32), "tiny")
    nodes = [helper.make_node("Mul", ["x", "big"], ["a"], name="mul_big"),
             helper.make_node("Add", ["a", "tiny"], ["b"], name="add_tiny"),
             helper.make_node("Tanh", ["b"], ["y"], name="tanh")]
    model = _model(nodes, [big, tiny], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    x = np.array([1e-6, -2e-6, 3e-6], np.float32)
    low, decisions, _ = _lowered(model, {"x": 3e-6, "a": 0.3, "b": 0.3, "y": 0.3}, "fp16", 1e6)
    assert decisions["mul_big"].rule == "constant" and "overflows" in decisions["mul_big"].reason
    assert decisions["add_tiny"].rule == "constant" and "underflows" in decisions["add_tiny"].reason
    assert decisions["tanh"].precision == "low"
    got, = _run(low, {"x": x})
    want, = _run(model, {"x": x})
    assert np.all(np.isfinite(got)) and np.allclose(got, want, atol=2e-3)


def test_keep_regex_and_unknown_precision_and_control_flow():
    model, feed = _block_model(0, 4, 1, False)
    ranges = _ranges(model, feed)
    _, decisions, _ = _lowered(model, ranges, "fp16", 512.0, keep=("^mm0$",))
    assert decisions["mm0"].precision == "fp32" and decisions["mm0"].rule == "user"
    assert decisions["scores0"].precision == "low"
    # the fallback's sections: the block graph's nodes have no module, i.e. all belong to section ''
    types = float_tensor_types(model)
    kept = {d.name: d for d in plan_nodes(model, types, ranges, "fp16", keep_sections={""})}
    assert kept["mm0"].rule == "fallback" and kept["tanh0"].precision == "fp32"
    assert kept["pow0"].rule == "sensitive"  # earlier rules still decide first
    with pytest.raises(LoweringError, match="fp8"):
        plan_nodes(model, float_tensor_types(model), ranges, "fp8")
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["o"])], "then", [],
                             [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1, 4, 4])])
    flow = _model([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=then, name="if")], [],
                  [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                   helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4])])
    with pytest.raises(LoweringError, match="control flow"):
        plan_nodes(flow, {"x": TensorProto.FLOAT, "y": TensorProto.FLOAT}, {}, "fp16")


def _scoped(name: str, scope: list[str]) -> onnx.NodeProto:
    node = helper.make_node("Relu", ["x"], [name], name=name)
    prop = node.metadata_props.add()
    prop.key, prop.value = "pkg.torch.onnx.name_scopes", repr(scope)
    return node


@given(depth=st.integers(0, 5), layer=st.integers(0, 40), tail=st.lists(st.sampled_from(["mlp", "k_proj", "0", "act"]),
                                                                          max_size=3))
def test_sections_cut_layers_and_indices(depth, layer, tail):
    from export.precision.precision_lowering import node_section

    base = ["model", "vlm_with_expert", "vlm", "model", "vision_model", "encoder"][: depth + 1]
    scope = ".".join(base + ["layers", str(layer)] + tail)
    section = node_section(_scoped("n", ["", scope, "linear_3"]))
    assert section == ".".join(base)[: len(section)] and section.count(".") <= 5 and "layers" not in section
    assert scope.startswith(section + ".") and not re.search(r"\.\d+$", section)


def test_section_examples_and_best_choice():
    from export.precision.mixed_precision import best_section
    from export.precision.precision_lowering import node_section, sections_with

    assert node_section(_scoped("a", ["model.obs_cls_proj.1", "gelu"])) == "model.obs_cls_proj"
    assert node_section(_scoped("b", ["model.vlm_with_expert.vlm.model.vision_model.embeddings.patch_embedding",
                                      "conv2d"])) == "model.vlm_with_expert.vlm.model.vision_model.embeddings"
    assert node_section(_scoped("c", ["slice_scatter_5"])) == ""  # exporter-internal, not a module
    model = _model([_scoped("a", ["model.state_proj", "linear"]), _scoped("c", ["slice_scatter_5"])], [],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                   [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])])
    assert sections_with(model, ["a", "c"]) == {"model.state_proj", ""}  # '' = the nodes of no module
    assert sections_with(model, ["a"]) == {"model.state_proj"}
    margins = {"s1": -0.2, "s2": 0.01, "s3": -0.0001}
    assert best_section(margins, margins.__getitem__) == ("s2", 0.01)
    assert best_section([], margins.__getitem__) is None
