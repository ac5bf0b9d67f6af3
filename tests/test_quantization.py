"""int8 dynamic quantization of an artifact folder (export/int8/quantization.py) on tiny fake artifacts:
contract and hashes, integer ops present, the runtime runs it unchanged (and without torch), the chunk stays
within a stated bound of fp32 for random inputs, bad input is named, and the TensorRT builder refuses it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.graphs.node_scope import node_scope
from export.int8.quantization import (
    DEFAULT_EXCLUDE,
    INTEGER_OPS,
    MODE,
    QuantizationInputError,
    fold_weight_transposes,
    quantizable_nodes,
    quantize_artifacts,
)
from export.trt.engine_plan import BuildOptions, PlanError, load_manifest, plan_jobs
from runtime.fingerprint import sha256_file
from runtime.manifest import GRAPH_NAMES, Manifest
from runtime.policy import EdgePolicy, delta_input
from tests.fake_artifacts import INT8_DRIFT_THRESHOLD, build_fake_artifacts, make_observation

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
# Largest |int8 − fp32| allowed for a whole chunk (prefix → N Euler steps → delta step), in normalised action
# units. The fake graphs' target plan a* = 0.5·tanh(...) lies in (−0.5, 0.5) and its weights are deliberately
# steep (observed worst case over 8 seeds: 0.082, mean 0.004–0.012); a chunk for another observation differs by
# far more than this (checked below, so the bound is not vacuous).
CHUNK_MAX_ABS = 0.15
CHUNK_MEAN_ABS = 0.03


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("quant")
    src = build_fake_artifacts(root / "onnx", drift_threshold=INT8_DRIFT_THRESHOLD)
    manifest = quantize_artifacts(src, root / "onnx-int8", progress=False)
    return src, root / "onnx-int8", manifest


def _run(*args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)


# ------------------------------------------------------------------------------------ folder and contract
def test_manifest_verifies_and_records_quantization(folders: tuple[Path, Path, dict]) -> None:
    src, dst, _ = folders
    m = Manifest.load(dst, verify_hashes=True)  # every SHA-256 and size matches
    src_raw = json.loads((src / "manifest.json").read_text())
    q = m.raw["quantization"]
    assert q["mode"] == MODE == "int8-dynamic" and q["weight_type"] == "int8" and q["ops"] == ["MatMul"]
    assert q["source_manifest_sha256"] == sha256_file(src / "manifest.json")
    assert set(q["graphs"]) == set(GRAPH_NAMES)
    for g in GRAPH_NAMES:  # same I/O contract as the source
        assert m.raw["graphs"][g]["inputs"] == src_raw["graphs"][g]["inputs"]
        assert m.raw["graphs"][g]["outputs"] == src_raw["graphs"][g]["outputs"]
        assert q["graphs"][g]["quantized_nodes"] >= 1
    for key in ("dims", "cameras", "normalization", "action_bounds", "tokenizer", "gate", "delta_input"):
        assert m.raw[key] == src_raw[key], key
    assert sorted(m.files) == sorted(src_raw["files"])
    assert (dst / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    assert not any(p.name.startswith(".") for p in dst.parent.iterdir() if p.name != dst.name)  # no partial left
    # the runtime's own verifier, as a user runs it
    info = _run("-m", "runtime", "info", "--artifacts", str(dst))
    assert info.returncode == 0, info.stderr
    assert "files verified" in info.stdout and "int8-dynamic" in info.stdout


def test_graphs_contain_integer_ops_and_shrink(folders: tuple[Path, Path, dict]) -> None:
    src, dst, _ = folders
    for g in GRAPH_NAMES:
        model = onnx.load(str(dst / f"{g}.onnx"))
        ops = {n.op_type for n in model.graph.node}
        assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops, (g, ops)
        int8_weights = [i for i in model.graph.initializer if i.data_type == TensorProto.INT8]
        assert int8_weights, g
        # every weight MatMul became integer (the fake graphs have no excluded scopes)
        assert quantizable_nodes(model, ["MatMul"]) == []
    assert (dst / "prefix.onnx").stat().st_size < 0.5 * (src / "prefix.onnx").stat().st_size


def test_bench_style_options(tmp_path: Path, folders: tuple[Path, Path, dict]) -> None:
    """uint8 weights and per-channel scales give valid folders too (the bench measures the default)."""
    src, _, _ = folders
    options: list[dict[str, Any]] = [{"weight_type": "uint8"}, {"per_channel": True}]
    for i, kw in enumerate(options):
        out = tmp_path / f"q{i}"
        q = quantize_artifacts(src, out, progress=False, **kw)["quantization"]
        Manifest.load(out, verify_hashes=True)
        assert q["per_channel"] == kw.get("per_channel", False) and q["weight_type"] == kw.get("weight_type", "int8")
        kinds = {i.data_type for i in onnx.load(str(out / "prefix.onnx")).graph.initializer}
        assert (TensorProto.UINT8 if kw.get("weight_type") == "uint8" else TensorProto.INT8) in kinds


# ------------------------------------------------------------------------------------------ the runtime
def test_edge_policy_runs_quantized_folder(folders: tuple[Path, Path, dict]) -> None:
    _, dst, _ = folders
    policy = EdgePolicy(dst, backend="onnxruntime", gate="drift", refine=True, seed=0,
                        backend_options={"intra_op_threads": 1})
    m = policy.manifest
    for i in range(2 * m.dims.chunk_size):
        action = policy.step(make_observation(i))
        assert action.shape == (m.dims.action_dim,) and np.all(np.isfinite(action))
        assert np.all(action >= m.action_bounds.low) and np.all(action <= m.action_bounds.high)
        assert policy.last_info.fault is None
    assert policy.counters.resamples >= 1 and policy.counters.fallbacks == 0


def test_runtime_runs_int8_without_torch(folders: tuple[Path, Path, dict]) -> None:
    _, dst, _ = folders
    code = ("import sys; from runtime.policy import EdgePolicy; from tests.fake_artifacts import make_observation; "
            f"p = EdgePolicy({str(dst)!r}, gate='always', backend_options={{'intra_op_threads': 1}}); "
            "a = [p.step(make_observation(i)) for i in range(3)]; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lerobot', 'transformers', 'export'}); "
            "assert not bad, bad; print('ok')")
    out = _run("-c", code)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def _chunk(backend: Any, manifest: Manifest, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """prefix → N Euler steps → one delta step, for random inputs and noise drawn from `seed`."""
    d, spec = manifest.dims, manifest.graphs["prefix"]
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 1, spec.input("images").shape).astype(np.float32)
    n = int(rng.integers(2, d.lang_len + 1))
    tokens = np.zeros((1, d.lang_len), np.int64)
    tokens[0, :n] = rng.integers(2, 10, n)
    mask = np.zeros((1, d.lang_len), bool)
    mask[0, :n] = True
    state = np.zeros((1, d.max_state_dim), np.float32)
    state[0, : d.state_dim] = rng.standard_normal(d.state_dim)
    noise = rng.standard_normal(manifest.plan_shape).astype(np.float32)
    pre = backend.run_prefix(images, tokens, mask, state)
    x = backend.denoise(noise, d.num_steps, pre)[0]
    delta, _ = backend.run_delta_expert(delta_input(x, d.chunk_size), pre)
    return (x + delta[0])[:, : d.action_dim], pre.obs_cls


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_int8_chunk_close_to_fp32(folders: tuple[Path, Path, dict], seed: int) -> None:
    from runtime.backend_onnxruntime import OnnxRuntimeBackend

    src, dst, _ = folders
    m32, m8 = Manifest.load(src), Manifest.load(dst)
    b32 = OnnxRuntimeBackend(src, m32, intra_op_threads=1)
    b8 = OnnxRuntimeBackend(dst, m8, intra_op_threads=1)
    c32, cls32 = _chunk(b32, m32, seed)
    c8, cls8 = _chunk(b8, m8, seed)
    err = np.abs(c8 - c32)
    assert np.all(np.isfinite(c8))
    assert err.max() < CHUNK_MAX_ABS and err.mean() < CHUNK_MEAN_ABS, (err.max(), err.mean())
    assert err.max() > 0  # it really ran other arithmetic
    other, _ = _chunk(b32, m32, seed + 100)  # another observation: the bound is far below input sensitivity
    assert np.abs(other - c32).max() > 2 * CHUNK_MAX_ABS
    cos = float(np.sum(cls8 * cls32) / (np.linalg.norm(cls8) * np.linalg.norm(cls32)))
    assert cos > 0.98


# ------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_named(tmp_path: Path, folders: tuple[Path, Path, dict]) -> None:
    src, dst, _ = folders
    cases = []
    cases.append((tmp_path / "nope", tmp_path / "o1", "does not exist"))
    (tmp_path / "empty").mkdir()
    cases.append((tmp_path / "empty", tmp_path / "o2", "no manifest.json"))
    (tmp_path / "file").write_text("x")
    cases.append((tmp_path / "file", tmp_path / "o3", "is not a folder"))
    tampered = tmp_path / "tampered"
    shutil.copytree(src, tampered)
    with open(tampered / "main_expert.onnx", "ab") as f:
        f.write(b"\0")
    cases.append((tampered, tmp_path / "o4", "main_expert.onnx"))
    cases.append((dst, tmp_path / "o5", "already quantized"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    cases.append((src, other, "is not a derived artifact folder"))
    cases.append((src, src / "int8", "outside --src"))
    for s, d, needle in cases:
        with pytest.raises(QuantizationInputError, match=needle):
            quantize_artifacts(s, d, progress=False)
        assert not d.with_name(f".{d.name}.partial").exists()
    assert (other / "keep.txt").read_text() == "mine"
    with pytest.raises(QuantizationInputError, match="--weight-type"):
        quantize_artifacts(src, tmp_path / "o6", weight_type="int4", progress=False)
    with pytest.raises(QuantizationInputError, match="--ops"):
        quantize_artifacts(src, tmp_path / "o7", ops=["Softmax"], progress=False)


def test_cli_one_line_exit_2(tmp_path: Path, folders: tuple[Path, Path, dict]) -> None:
    src, _, _ = folders
    r = _run("-m", "export.int8.quantization", "--src", str(tmp_path / "missing"), "--dst", str(tmp_path / "q"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("quantization: --src") and "does not exist" in r.stderr
    ok = _run("-m", "export.int8.quantization", "--src", str(src), "--dst", str(tmp_path / "q"))
    assert ok.returncode == 0, ok.stderr
    assert "[quantize] wrote" in ok.stdout and Manifest.load(tmp_path / "q").raw["quantization"]["mode"] == MODE
    again = _run("-m", "export.int8.quantization", "--src", str(src), "--dst", str(tmp_path / "q"), "--per-channel")
    assert again.returncode == 0, again.stderr  # an earlier quantized folder is replaced
    assert Manifest.load(tmp_path / "q").raw["quantization"]["per_channel"] is True


def test_failure_leaves_no_folder(tmp_path: Path, folders: tuple[Path, Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    import export.int8.quantization as q

    src, _, _ = folders
    real = q._quantize_graph
    calls = []

    def flaky(*a: Any, **k: Any) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(q, "_quantize_graph", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        quantize_artifacts(src, tmp_path / "int8", progress=False)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- TensorRT builder refuses
def test_engine_builder_refuses_quantized_folder(tmp_path: Path, folders: tuple[Path, Path, dict]) -> None:
    src, dst, _ = folders
    r = _run("-m", "export.trt.build_engines", "--artifacts", str(dst), "--out", str(tmp_path / "e"))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "int8-dynamic" in lines[0] and "TensorRT needs the fp32 export" in lines[0]
    assert str(src) in lines[0]  # says which folder to build from
    assert not (tmp_path / "e").exists()
    # a quantized graph is caught even when the manifest no longer says so (hand-copied folder)
    stripped = tmp_path / "stripped"
    shutil.copytree(dst, stripped)
    raw = json.loads((stripped / "manifest.json").read_text())
    del raw["quantization"]
    (stripped / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(PlanError, match="MatMulInteger"):
        plan_jobs(stripped, tmp_path / "e", ("prefix",), load_manifest(stripped), BuildOptions())
    # the fp32 source still plans
    assert len(plan_jobs(src, tmp_path / "e", ("prefix",), load_manifest(src), BuildOptions())) == 1


# ------------------------------------------------------------------------- graph helpers (exporter shapes)
def _linear_graph(scopes: list[str]) -> onnx.ModelProto:
    """x [2,8] → MatMul(x, Transpose(W_i)) per scope, summed; W_0 is read through two Transposes (two cameras)."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    prev = "x"
    for i, scope in enumerate(scopes):
        inits.append(numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("Transpose", [f"w{i}"], [f"wt{i}"], name=f"t{i}", perm=[1, 0]))
        mm = helper.make_node("MatMul", [prev, f"wt{i}"], [f"h{i}"], name=f"mm{i}")
        entry = mm.metadata_props.add()
        entry.key, entry.value = "pkg.torch.onnx.name_scopes", repr(["", scope, f"linear_{i}"])
        nodes.append(mm)
        prev = f"h{i}"
    nodes.append(helper.make_node("Transpose", ["w0"], ["wt0b"], name="t0b", perm=[1, 0]))
    nodes.append(helper.make_node("MatMul", ["x", "wt0b"], ["side"], name="mm_side"))
    nodes.append(helper.make_node("Add", [prev, "side"], ["y"], name="add"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def _run_model(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_fold_weight_transposes_is_exact_and_shares_weights() -> None:
    model = _linear_graph(["model.vlm.layers.0.mlp.up_proj", "model.action_out_proj"])
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    before = _run_model(model, x)
    assert quantizable_nodes(model, ["MatMul"]) == []  # weights hide behind Transposes
    assert fold_weight_transposes(model) == 3
    assert not any(n.op_type == "Transpose" for n in model.graph.node)
    assert len(model.graph.initializer) == 2  # w0 read twice through Transposes → one folded copy
    np.testing.assert_array_equal(_run_model(model, x), before)
    assert len(quantizable_nodes(model, ["MatMul"])) == 3


def test_default_exclusions_keep_action_projections_float(tmp_path: Path) -> None:
    import re

    from export.int8.quantization import _quantize_graph

    model = _linear_graph(["model.vlm.layers.0.mlp.up_proj", "model.action_out_proj"])
    assert [node_scope(n) for n in model.graph.node if n.op_type == "MatMul"][:2] == \
        ["model.vlm.layers.0.mlp.up_proj", "model.action_out_proj"]
    assert any(re.search(p, "model.delta_action_out_proj") for p in DEFAULT_EXCLUDE)
    assert not any(re.search(p, "model.vlm_with_expert.lm_expert.layers.0.self_attn.q_proj") for p in DEFAULT_EXCLUDE)
    onnx.save(model, str(tmp_path / "g.onnx"))
    (tmp_path / "work").mkdir()
    info = _quantize_graph(tmp_path / "g.onnx", tmp_path / "q.onnx", tmp_path / "work", False, "int8", False,
                           ["MatMul"], DEFAULT_EXCLUDE)
    assert info["weight_nodes"] == 3 and info["quantized_nodes"] == 2 and info["excluded_scopes"] == ["model.action_out_proj"]
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert [n.name for n in q.graph.node if n.op_type == "MatMul"] == ["mm1"]  # the excluded one, still float
    assert sum(n.op_type in INTEGER_OPS for n in q.graph.node) >= 2


@pytest.mark.parametrize("ops", ["Conv", "Gather"])
def test_ops_that_quantize_nothing_are_one_line_naming_the_flag(folders: tuple[Path, Path, dict], tmp_path: Path,
                                                                ops: str) -> None:
    src, _, _ = folders
    out = _run("-m", "export.int8.quantization", "--src", str(src), "--dst", str(tmp_path / "q"), "--ops", ops)
    assert out.returncode == 2 and "--ops" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "q").exists()


def test_graph_optimization_names_a_file_that_is_not_onnx(tmp_path: Path) -> None:
    bad = tmp_path / "x.onnx"
    bad.write_text("hello")
    out = _run("-m", "export.int8.graph_optimization", str(bad))
    assert out.returncode == 2 and "x.onnx" in out.stderr and "Traceback" not in out.stderr, out.stderr


@pytest.mark.parametrize("pattern", [".*", "^"])
def test_an_exclude_that_keeps_every_weight_float_names_exclude_not_ops(folders: tuple[Path, Path, dict],
                                                                         tmp_path: Path, pattern: str) -> None:
    """Every quantizable node excluded: the refusal blamed --ops ('MatMul, the default, covers every graph')."""
    src, _, _ = folders
    with pytest.raises(QuantizationInputError) as err:
        quantize_artifacts(src, tmp_path / "q", exclude=[pattern], progress=False)
    assert str(err.value).startswith("--exclude") and pattern in str(err.value)
    assert not (tmp_path / "q").exists()


# ------------------------------------------------------------------- the gate's embeddings (obs-CLS, act-CLS)
def _tenth(gate: dict, *names: str) -> float:
    return 0.1 * min(gate[n]["default_threshold"] for n in names if n in gate)


def test_int8_records_how_far_it_moves_the_gate_embeddings(folders: tuple[Path, Path, dict]) -> None:
    """The int8 folder keeps the fp32 gate thresholds, so it must show (as the fp16 lowering does) that the
    embeddings the gates read barely move: obs-CLS (drift / jump / consistency) and the plan encoder's act-CLS
    (consistency), each within a tenth of the smallest threshold of the gates reading it."""
    _, _, manifest = folders
    worst = manifest["quantization"]["validation"]["worst"]
    gate = manifest["gate"]
    assert worst["prefix.obs_emb"]["gate"] == pytest.approx(1.0 - _tenth(gate, "drift", "jump", "consistency"))
    assert worst["plan_encoder.act_emb"]["gate"] == pytest.approx(1.0 - _tenth(gate, "consistency"))
    for key in ("prefix.obs_emb", "plan_encoder.act_emb"):
        shift = worst[key]["max_abs"]  # the cosine distance the embedding moved
        assert 0.0 < shift <= 1.0 - worst[key]["gate"], (key, shift)


def test_int8_that_moves_an_embedding_past_its_bound_is_refused(tmp_path: Path, folders: tuple[Path, Path, dict],
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    import export.accuracy_gates as accuracy
    from export.int8.quantization import main

    src, _, _ = folders
    monkeypatch.setattr(accuracy, "EMBEDDING_SHARE", 1e-12)  # any real int8 shift exceeds this bound
    assert main(["--src", str(src), "--dst", str(tmp_path / "int8")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("quantization: "), err
    assert ("prefix obs-CLS" in err or "plan_encoder act-CLS" in err) and "nothing written" in err, err
    assert list(tmp_path.iterdir()) == []
