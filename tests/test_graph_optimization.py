"""Graph rewrites for onnxruntime CPU (export/int8/graph_optimization.py).

Each rewrite on a small synthetic graph built the way the exporter writes the pattern: it fires (the
pattern's ops are gone, the replacement is there) and the rewritten graph computes the same outputs as the
original for random inputs (hypothesis); near-misses (a wrong constant, an intermediate read elsewhere, a
non-zero mask, a partial scatter) are left alone. Then on a real tiny SmolVLA-CLS export: every rewrite
fires on the graphs it targets, the rewritten fp32 graphs pass the `make parity` checks against PyTorch, and
an int8 folder written by export.int8.quantization carries the rewrites and its record.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from export.int8.graph_optimization import (
    REWRITES,
    STANDARD_REWRITES,
    main,
    op_counts,
    optimize_file,
    optimize_model,
)
from export.int8.ort_fusions import MS_DOMAIN

OPSET = 18
ALL_REWRITES = tuple(REWRITES)  # registry order: the zero-mask Add goes before attention is matched
PROPERTY = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------------ helpers
def _model(nodes: list[onnx.NodeProto], inputs: dict[str, list[int]], outputs: dict[str, list[int]],
           inits: dict[str, np.ndarray]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def _optimized(model: onnx.ModelProto, rewrites: tuple[str, ...]) -> tuple[onnx.ModelProto, dict[str, int]]:
    new = onnx.ModelProto()
    new.CopyFrom(model)
    report = optimize_model(new, rewrites=rewrites)
    return new, report


def _feed(model: onnx.ModelProto, seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    return {name: (scale * rng.standard_normal(shape)).astype(np.float32) for name, shape in shapes.items()}


def _same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, feed: dict[str, np.ndarray], atol: float) -> None:
    for x, y in zip(_run(a, feed), _run(b, feed), strict=True):
        assert x.shape == y.shape
        np.testing.assert_allclose(y, x, rtol=0, atol=atol)


# --------------------------------------------------------------------------------------- remove_zero_adds
def _masked_scores(mask_value: float = 0.0, mask_shape: tuple[int, ...] = (1, 1, 6, 6), computed: bool = True,
                   add_is_output: bool = False) -> onnx.ModelProto:
    """scores [1,2,6,6] + mask → Softmax, with the mask computed from constants the way SigLIP's is exported
    (Expand → Cast → Sub → Cast → Where) or given as an initializer."""
    nodes, inits = [], {"shape": np.array(mask_shape, np.int64)}
    if computed:
        inits.update(ones=np.ones((1, 1, 1, mask_shape[-1]), np.int64), one=np.array(1.0, np.float32),
                     neg=np.array(np.finfo(np.float32).min, np.float32), v=np.array(mask_value, np.float32))
        nodes += [helper.make_node("Expand", ["ones", "shape"], ["e"]),
                  helper.make_node("Cast", ["e"], ["ef"], to=TensorProto.FLOAT),
                  helper.make_node("Sub", ["one", "ef"], ["inv"]),
                  helper.make_node("Cast", ["inv"], ["invb"], to=TensorProto.BOOL),
                  helper.make_node("Add", ["inv", "v"], ["base"]),
                  helper.make_node("Where", ["invb", "neg", "base"], ["mask"])]
    else:
        inits["mask"] = np.full(mask_shape, mask_value, np.float32)
    nodes.append(helper.make_node("Add", ["scores", "mask"], ["masked"]))
    outputs = {"masked": [1, 2, 6, 6]} if add_is_output else {}
    nodes.append(helper.make_node("Softmax", ["masked"], ["p"], axis=-1))
    return _model(nodes, {"scores": [1, 2, 6, 6]}, {"p": [1, 2, 6, 6], **outputs}, inits)


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), computed=st.booleans())
def test_zero_mask_add_is_removed_exactly(seed: int, computed: bool) -> None:
    model = _masked_scores(computed=computed)
    new, report = _optimized(model, ("remove_zero_adds",))
    assert report["remove_zero_adds"] == 1
    assert "Add" not in op_counts(new) and "Where" not in op_counts(new)  # the mask subgraph is dead too
    assert not any(i.name == "mask" for i in new.graph.initializer)
    _same_outputs(model, new, _feed(model, seed, scale=5.0), atol=0.0)


@pytest.mark.parametrize("case", ["nonzero", "bias_1d", "broadcast_grows", "graph_output"])
def test_zero_add_near_misses_are_kept(case: str) -> None:
    if case == "nonzero":
        model = _masked_scores(mask_value=0.5)
    elif case == "bias_1d":  # a zero bias vector (random-init checkpoints): deliberately not removed
        model = _masked_scores(mask_shape=(6,), computed=False)
    elif case == "broadcast_grows":  # zeros [1,3,6,6] + scores [1,2,...] would not even be valid; use [2,2,6,6]
        model = _model([helper.make_node("Add", ["scores", "z"], ["y"])], {"scores": [1, 2, 6, 6]},
                       {"y": [2, 2, 6, 6]}, {"z": np.zeros((2, 2, 6, 6), np.float32)})
    else:
        model = _masked_scores(add_is_output=True)
    new, report = _optimized(model, ("remove_zero_adds",))
    assert report["remove_zero_adds"] == 0
    assert op_counts(new)["Add"] >= 1


# ----------------------------------------------------------------------------------------- fuse_tanh_gelu
def _tanh_gelu(order: str, a: float = 0.044715, extra_use: bool = False) -> onnx.ModelProto:
    inits = {"three": np.array(3.0, np.float32), "a": np.array(a, np.float32),
             "k": np.array(math.sqrt(2 / math.pi), np.float32), "one": np.array(1.0, np.float32),
             "half": np.array(0.5, np.float32)}
    nodes = [helper.make_node("Pow", ["x", "three"], ["p"]), helper.make_node("Mul", ["a", "p"], ["ap"]),
             helper.make_node("Add", ["x", "ap"], ["s"]), helper.make_node("Mul", ["k", "s"], ["ks"]),
             helper.make_node("Tanh", ["ks"], ["t"]), helper.make_node("Add", ["t", "one"], ["t1"])]
    if order == "x*(0.5*(1+t))":  # torch.onnx dynamo's order
        nodes += [helper.make_node("Mul", ["half", "t1"], ["h"]), helper.make_node("Mul", ["x", "h"], ["y"])]
    elif order == "(x*(1+t))*0.5":
        nodes += [helper.make_node("Mul", ["t1", "x"], ["h"]), helper.make_node("Mul", ["h", "half"], ["y"])]
    else:  # (0.5*x)*(1+t), HF's NewGELU order
        nodes += [helper.make_node("Mul", ["half", "x"], ["h"]), helper.make_node("Mul", ["h", "t1"], ["y"])]
    outputs = {"y": [2, 5, 16]}
    if extra_use:
        outputs["t"] = [2, 5, 16]
    return _model(nodes, {"x": [2, 5, 16]}, outputs, inits)


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), order=st.sampled_from(["x*(0.5*(1+t))", "(x*(1+t))*0.5", "(0.5*x)*(1+t)"]))
def test_tanh_gelu_becomes_fastgelu(seed: int, order: str) -> None:
    model = _tanh_gelu(order)
    new, report = _optimized(model, ("fuse_tanh_gelu",))
    assert report["fuse_tanh_gelu"] == 1
    assert dict(op_counts(new)) == {"FastGelu": 1}
    assert new.graph.node[0].domain == MS_DOMAIN and any(o.domain == MS_DOMAIN for o in new.opset_import)
    _same_outputs(model, new, _feed(model, seed, scale=4.0), atol=2e-5)


@pytest.mark.parametrize("variant", ["wrong_constant", "intermediate_read_elsewhere"])
def test_tanh_gelu_near_misses_are_kept(variant: str) -> None:
    model = _tanh_gelu("x*(0.5*(1+t))", a=0.04, extra_use=False) if variant == "wrong_constant" \
        else _tanh_gelu("x*(0.5*(1+t))", extra_use=True)
    new, report = _optimized(model, ("fuse_tanh_gelu",))
    assert report["fuse_tanh_gelu"] == 0 and "FastGelu" not in op_counts(new)


# --------------------------------------------------------------------------------- scatter_rows_to_concat
def _scatter(rows: list[list[int]], n: int = 8) -> onnx.ModelProto:
    """data = zeros [n,3,2]; ScatterND(rows_i, Transpose(u_i)) in sequence, as the exporter writes
    `x[..., :d] = a; x[..., d:] = b` (rotary embeddings), then the transpose back."""
    inits: dict[str, np.ndarray] = {"zeros": np.zeros((n, 3, 2), np.float32)}
    nodes, cur, inputs = [], "zeros", {}
    for i, r in enumerate(rows):
        inits[f"idx{i}"] = np.array(r, np.int64)[:, None]
        inputs[f"u{i}"] = [2, 3, len(r)]
        nodes += [helper.make_node("Transpose", [f"u{i}"], [f"ut{i}"], perm=[2, 1, 0]),
                  helper.make_node("ScatterND", [cur, f"idx{i}", f"ut{i}"], [f"s{i}"])]
        cur = f"s{i}"
    nodes.append(helper.make_node("Transpose", [cur], ["y"], perm=[2, 1, 0]))
    return _model(nodes, inputs, {"y": [2, 3, n]}, inits)


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), split=st.integers(1, 7), reverse=st.booleans())
def test_full_row_scatters_become_concat(seed: int, split: int, reverse: bool) -> None:
    blocks = [list(range(split)), list(range(split, 8))]
    model = _scatter(blocks[::-1] if reverse else blocks)  # either write order
    new, report = _optimized(model, ("scatter_rows_to_concat",))
    assert report["scatter_rows_to_concat"] == 1
    counts = op_counts(new)
    assert counts["Concat"] == 1 and "ScatterND" not in counts
    _same_outputs(model, new, _feed(model, seed), atol=0.0)


@pytest.mark.parametrize("rows", [[[0, 1, 2], [4, 5, 6, 7]], [[0, 1, 2, 3, 4], [3, 4, 5, 6, 7]],
                                  [[0, 2, 1, 3], [4, 5, 6, 7]]], ids=["gap", "overlap", "unordered"])
def test_partial_or_irregular_scatters_are_kept(rows: list[list[int]]) -> None:
    model = _scatter(rows)
    new, report = _optimized(model, ("scatter_rows_to_concat",))
    assert report["scatter_rows_to_concat"] == 0 and op_counts(new)["ScatterND"] == 2


# --------------------------------------------------------------------------------------- rsqrt_mul_to_div
def _rmsnorm(extra_use: bool = False) -> onnx.ModelProto:
    """LlamaRMSNorm as exported: x · Reciprocal(Sqrt(ReduceMean(x²) + ε)) · w."""
    inits = {"two": np.array(2.0, np.float32), "axes": np.array([-1], np.int64), "eps": np.array(1e-6, np.float32),
             "w": np.linspace(0.5, 1.5, 16).astype(np.float32)}
    nodes = [helper.make_node("Pow", ["x", "two"], ["p"]), helper.make_node("ReduceMean", ["p", "axes"], ["m"]),
             helper.make_node("Add", ["m", "eps"], ["a"]), helper.make_node("Sqrt", ["a"], ["s"]),
             helper.make_node("Reciprocal", ["s"], ["r"]), helper.make_node("Mul", ["x", "r"], ["n"]),
             helper.make_node("Mul", ["w", "n"], ["y"])]
    outputs = {"y": [1, 7, 16], **({"r": [1, 7, 1]} if extra_use else {})}
    return _model(nodes, {"x": [1, 7, 16]}, outputs, inits)


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([1e-3, 1.0, 50.0]))
def test_rmsnorm_reciprocal_becomes_div_and_fuses_in_onnxruntime(seed: int, scale: float, tmp_path_factory) -> None:
    model = _rmsnorm()
    new, report = _optimized(model, ("rsqrt_mul_to_div",))
    assert report["rsqrt_mul_to_div"] == 1
    counts = op_counts(new)
    assert "Reciprocal" not in counts and counts["Div"] == 1
    assert all(n.domain in ("", "ai.onnx") for n in new.graph.node)  # still standard ONNX
    feed = _feed(model, seed, scale=scale)
    for x, y in zip(_run(model, feed), _run(new, feed), strict=True):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)
    # what onnxruntime makes of it: one SimplifiedLayerNormalization
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    dumped = tmp_path_factory.mktemp("rms") / "o.onnx"
    opts.optimized_model_filepath = str(dumped)
    ort.InferenceSession(new.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    assert [n.op_type for n in onnx.load(str(dumped)).graph.node] == ["SimplifiedLayerNormalization"]


def test_reciprocal_read_elsewhere_is_kept() -> None:
    new, report = _optimized(_rmsnorm(extra_use=True), ("rsqrt_mul_to_div",))
    assert report["rsqrt_mul_to_div"] == 0 and "Reciprocal" in op_counts(new)


# ----------------------------------------------------------------------------------------- fuse_attention
def _attention(s: int = 6, heads: int = 2, head: int = 4, k_variant: str = "reshape", scaled: bool = True,
               mask: float | None = None, k_is_output: bool = False) -> onnx.ModelProto:
    """SigLIP attention as torch.onnx dynamo exports it: head split (Reshape → Transpose), Kᵀ (three ops, or one
    Transpose), √scale on Q and Kᵀ, MatMul, [mask Add], Softmax, MatMul V, head merge (Transpose → Reshape)."""
    d = heads * head
    c = np.array(head ** -0.25, np.float32)
    inits: dict[str, np.ndarray] = {"split": np.array([1, s, heads, head], np.int64), "c": c,
                                    "merge": np.array([1, s, d], np.int64),
                                    "m3": np.array([heads, s, head], np.int64),
                                    "m4": np.array([1, heads, head, s], np.int64)}
    nodes = []
    for x in "qkv":
        nodes += [helper.make_node("Reshape", [x, "split"], [f"{x}r"]),
                  helper.make_node("Transpose", [f"{x}r"], [f"{x}t"], perm=[0, 2, 1, 3])]
    if k_variant == "reshape":
        nodes += [helper.make_node("Reshape", ["kt", "m3"], ["k3"]),
                  helper.make_node("Transpose", ["k3"], ["k3t"], perm=[0, 2, 1]),
                  helper.make_node("Reshape", ["k3t", "m4"], ["kT"])]
    else:
        nodes.append(helper.make_node("Transpose", ["kt"], ["kT"], perm=[0, 1, 3, 2]))
    q, k = "qt", "kT"
    if scaled:
        nodes += [helper.make_node("Mul", ["qt", "c"], ["qs"]), helper.make_node("Mul", ["kT", "c"], ["ks"])]
        q, k = "qs", "ks"
    nodes.append(helper.make_node("MatMul", [q, k], ["scores"]))
    scores = "scores"
    if mask is not None:
        inits["mask"] = np.full((1, 1, s, s), mask, np.float32)
        nodes.append(helper.make_node("Add", ["scores", "mask"], ["masked"]))
        scores = "masked"
    nodes += [helper.make_node("Softmax", [scores], ["p"], axis=-1), helper.make_node("MatMul", ["p", "vt"], ["o"]),
              helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ot", "merge"], ["y"])]
    outputs = {"y": [1, s, d], **({"kt": [1, heads, s, head]} if k_is_output else {})}
    return _model(nodes, {x: [1, s, d] for x in "qkv"}, outputs, inits)


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), k_variant=st.sampled_from(["reshape", "transpose"]), scaled=st.booleans(),
       dims=st.sampled_from([(6, 2, 4), (33, 3, 8), (64, 4, 16)]))
def test_unmasked_attention_becomes_multihead_attention(seed: int, k_variant: str, scaled: bool,
                                                        dims: tuple[int, int, int]) -> None:
    s, heads, head = dims
    model = _attention(s, heads, head, k_variant, scaled)
    new, report = _optimized(model, ("fuse_attention",))
    assert report["fuse_attention"] == 1
    assert dict(op_counts(new)) == {"MultiHeadAttention": 1}
    attrs = {a.name: helper.get_attribute_value(a) for a in new.graph.node[0].attribute}
    assert attrs["num_heads"] == heads
    assert math.isclose(attrs["scale"], head ** -0.5 if scaled else 1.0, rel_tol=1e-6)
    _same_outputs(model, new, _feed(model, seed, scale=2.0), atol=1e-5)


def test_zero_mask_then_attention_fuses_but_a_real_mask_blocks_it() -> None:
    new, report = _optimized(_attention(mask=0.0), ALL_REWRITES)
    assert report["remove_zero_adds"] == 1 and report["fuse_attention"] == 1
    for model in (_attention(mask=-1.0), _attention(k_is_output=True)):
        new, report = _optimized(model, ("fuse_attention",))
        assert report["fuse_attention"] == 0 and "MultiHeadAttention" not in op_counts(new)


def test_unknown_rewrite_is_named() -> None:
    with pytest.raises(ValueError, match="unknown rewrite"):
        optimize_model(_tanh_gelu("x*(0.5*(1+t))"), rewrites=("fuse_everything",))


def test_standard_rewrites_keep_standard_onnx() -> None:
    new, _ = _optimized(_masked_scores(), STANDARD_REWRITES)
    assert all(n.domain in ("", "ai.onnx") for n in new.graph.node)
    assert not any(o.domain == MS_DOMAIN for o in new.opset_import)


# ------------------------------------------------------------------------------- real tiny SmolVLA export
@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory):
    from export.graphs.onnx_export import export_artifacts
    from tests.test_export import _loaded

    loaded = _loaded()
    out = tmp_path_factory.mktemp("gopt") / "onnx"
    export_artifacts(loaded, out, calibrate=False, progress=False)
    return loaded, out


def test_rewrites_fire_on_the_export_and_keep_parity(tiny_export, tmp_path: Path) -> None:
    from export.graphs.parity import chunk_parity, graph_parity

    loaded, src = tiny_export
    dst = tmp_path / "onnx-opt"
    shutil.copytree(src, dst)
    reports = {g: optimize_file(dst / f"{g}.onnx", rewrites=ALL_REWRITES)
               for g in ("prefix", "main_expert", "delta_expert")}
    vision_layers = loaded.policy.model.vlm_with_expert.vlm.config.vision_config.num_hidden_layers
    cams = len(loaded.policy.config.image_features)
    assert reports["prefix"]["remove_zero_adds"] == vision_layers * cams  # SigLIP's all-zero mask, every layer
    assert reports["prefix"]["fuse_tanh_gelu"] == vision_layers * cams
    assert reports["prefix"]["fuse_attention"] == vision_layers * cams
    for g in ("prefix", "main_expert", "delta_expert"):
        # rotary embeddings' slice assignments: already Concats, `make export` applies this rewrite itself
        assert reports[g]["scatter_rows_to_concat"] == 0, g
        assert op_counts(onnx.load(str(src / f"{g}.onnx"), load_external_data=False))["ScatterND"] == 0, g
        assert reports[g]["rsqrt_mul_to_div"] > 0, g  # RMSNorms of the text model / experts
        onnx.checker.check_model(onnx.load(str(dst / f"{g}.onnx")))
    results = graph_parity(loaded.policy.model, dst, trials=2, seed=0) + chunk_parity(
        loaded.policy.model, dst, np.asarray(loaded.stats["action"]["std"]), seed=0)
    bad = [r for r in results if not r.ok]
    assert not bad, bad


def test_cli_rewrites_in_place(tiny_export, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, src = tiny_export
    graph = tmp_path / "prefix.onnx"
    shutil.copyfile(src / "prefix.onnx", graph)
    before = len(onnx.load(str(graph)).graph.node)
    assert main([str(graph), "--rewrites", "remove_zero_adds,fuse_tanh_gelu"]) == 0
    assert len(onnx.load(str(graph)).graph.node) < before
    assert "fuse_tanh_gelu" in capsys.readouterr().out
    assert main([str(tmp_path / "missing.onnx")]) == 2
    assert main([str(graph), "--rewrites", "nope"]) == 2


def test_quantization_applies_and_records_the_rewrites(tiny_export, tmp_path: Path) -> None:
    from export.int8.quantization import DEFAULT_REWRITES, QuantizationInputError, quantize_artifacts
    from runtime.manifest import Manifest

    _, src = tiny_export
    with pytest.raises(QuantizationInputError, match="rewrites"):
        quantize_artifacts(src, tmp_path / "bad", rewrites=("fuse_everything",), progress=False)
    assert not (tmp_path / "bad").exists()
    rewritten = quantize_artifacts(src, tmp_path / "int8", progress=False)
    plain = quantize_artifacts(src, tmp_path / "int8-plain", rewrites=(), progress=False)
    q = rewritten["quantization"]
    assert q["graph_rewrites"] == list(DEFAULT_REWRITES) and plain["quantization"]["graph_rewrites"] == []
    assert q["graphs"]["prefix"]["graph_rewrites"]["fuse_tanh_gelu"] > 0
    assert plain["quantization"]["graphs"]["prefix"]["graph_rewrites"] == {}
    Manifest.load(tmp_path / "int8", verify_hashes=True)  # hashes taken after the rewrite
    prefix = onnx.load(str(tmp_path / "int8" / "prefix.onnx"))
    assert "FastGelu" in op_counts(prefix) and "Tanh" not in op_counts(prefix)
    # same int8 weights and activation quantization, float32 remainder rewritten: outputs agree closely
    feed_src = ort.InferenceSession(str(src / "prefix.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {}
    for i in feed_src.get_inputs():
        shape = [int(d) for d in i.shape]
        feed[i.name] = (rng.integers(7, 40, shape) if "int64" in i.type else np.ones(shape, bool) if "bool" in i.type
                        else rng.random(shape, dtype=np.float32))
    a, b = (ort.InferenceSession(str(tmp_path / d / "prefix.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)
            for d in ("int8-plain", "int8"))
    for x, y in zip(a, b, strict=True):
        if x.dtype.kind == "f":
            assert np.abs(x - y).max() <= 1e-2 * max(1.0, float(np.abs(x).max()))
        else:
            np.testing.assert_array_equal(x, y)
