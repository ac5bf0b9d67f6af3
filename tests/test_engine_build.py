"""Engine build planning, precision flags, CLI errors and the trtexec line — everything that runs without TensorRT.

The TensorRT-calling code itself is type-checked against tensorrt-stubs (test_mypy_tensorrt) and exercised
for real only where TensorRT and a GPU exist (the skipif test at the end).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.trt.engine_plan import (
    GRAPHS,
    BuildOptions,
    PlanError,
    ShapeRange,
    assemble_fingerprint,
    derive_profile,
    parse_dim_ranges,
    parse_graphs,
    plan_jobs,
    tensorrt_major,
    trtexec_command,
    validate_options,
)
from export.trt.engine_precision import (
    PrecisionError,
    check_strongly_typed_dtypes,
    fp32_nodes,
    must_stay_fp32,
    plan_precision,
)
from runtime.fingerprint import sha256_bytes
from runtime.trt_env import tensorrt_missing_reason

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
MYPY_FILES = [
    "export/trt/engine_build.py",
    "export/trt/build_engines.py",
    "export/trt/engine_accuracy.py",
    "runtime/backend_tensorrt.py",
    "runtime/fingerprint.py",
    "runtime/trt_api.py",
    "runtime/cuda_euler.py",
    "export/trt/parser_compat.py",
]
NO_TRT = tensorrt_missing_reason()


def _graph(inputs: list[tuple[str, list[object]]]) -> dict[str, object]:
    return {
        "file": "g.onnx",
        "data_file": None,
        "inputs": [{"name": n, "shape": s, "dtype": "float32"} for n, s in inputs],
        "outputs": [],
    }


def make_artifacts(folder: Path, dynamic: bool = False) -> Path:
    """A minimal artifact folder: manifest.json + placeholder ONNX files (enough for planning)."""
    folder.mkdir(parents=True, exist_ok=True)
    lang = "lang_len" if dynamic else 16
    graphs = {
        "prefix": {
            "file": "prefix.onnx",
            "data_file": None,
            "inputs": [
                {"name": "images", "shape": [1, 1, 3, 64, 64], "dtype": "float32"},
                {"name": "lang_tokens", "shape": [1, lang], "dtype": "int64"},
                {"name": "lang_mask", "shape": [1, lang], "dtype": "bool"},
                {"name": "state", "shape": [1, 32], "dtype": "float32"},
            ],
            "outputs": [],
        },
        "main_expert": {"file": "main_expert.onnx", "data_file": None, "inputs": [], "outputs": []},
        "delta_expert": {"file": "delta_expert.onnx", "data_file": None, "inputs": [], "outputs": []},
        "plan_encoder": {"file": "plan_encoder.onnx", "data_file": None, "inputs": [], "outputs": []},
    }
    files = {}
    for g in GRAPHS:
        (folder / f"{g}.onnx").write_bytes(b"not really onnx " + g.encode())
        files[f"{g}.onnx"] = {"sha256": sha256_bytes(b"not really onnx " + g.encode()), "bytes": 1}
    manifest = {"format_version": 3, "dims": {"lang_len": 16, "chunk_size": 10}, "graphs": graphs, "files": files}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


# ------------------------------------------------------------------ precision mapping


def test_strongly_typed_sets_no_precision_flags_and_clears_tf32() -> None:
    """TF32 is on by default in TensorRT: cleared for every precision, so the lowering's fp32 sections stay IEEE fp32,
    and the trtexec line says so (`--noTF32`), else it reproduces a TF32 engine."""
    for precision in ("fp32", "fp16", "bf16"):
        plan = plan_precision(precision, True, (8, 7), 10)
        assert plan.network_flags == ("STRONGLY_TYPED",)
        assert plan.builder_flags == () and not plan.pin_norms_fp32
        assert plan.cleared_builder_flags == ("TF32",)
        assert plan.trtexec_flags == ("--stronglyTyped", "--noTF32")


def test_weakly_typed_reduced_precision_pins_norms() -> None:
    fp16 = plan_precision("fp16", False, (8, 7), 10)
    assert fp16.network_flags == ()
    assert fp16.builder_flags == ("FP16", "OBEY_PRECISION_CONSTRAINTS") and fp16.pin_norms_fp32
    assert fp16.cleared_builder_flags == ("TF32",)  # the pinned fp32 layers must not run in TF32 either
    assert fp16.trtexec_flags == ("--fp16", "--noTF32", "--precisionConstraints=obey")
    bf16 = plan_precision("bf16", False, (8, 0), 10)
    assert bf16.builder_flags == ("BF16", "OBEY_PRECISION_CONSTRAINTS") and bf16.cleared_builder_flags == ("TF32",)
    fp32 = plan_precision("fp32", False, (7, 5), 10)
    assert fp32.builder_flags == () and fp32.cleared_builder_flags == ("TF32",)
    assert fp32.trtexec_flags == ("--noTF32",)


def test_bf16_needs_ampere_and_weak_typing_needs_trt10() -> None:
    with pytest.raises(PrecisionError, match="compute capability >= 8.0.*7.5"):
        plan_precision("bf16", True, (7, 5), 10)
    plan_precision("bf16", True, (8, 0), 10)  # Ampere is enough
    with pytest.raises(PrecisionError, match="TensorRT 11"):
        plan_precision("fp16", False, (8, 7), 11)
    plan_precision("fp16", True, (8, 7), 11)  # strongly typed is fine on 11
    with pytest.raises(PrecisionError, match="unknown precision"):
        plan_precision("int8", True, (8, 7), 10)
    with pytest.raises(PrecisionError, match="5.3"):
        plan_precision("fp16", True, (5, 0), 10)


def _dynamo_norm() -> onnx.ModelProto:
    """A decomposed RMSNorm + softmax as the dynamo exporter writes them: generic node names (`node_pow_1`), the
    torch module only in the node metadata; the projection after it is an ordinary fp16 candidate."""
    def node(op: str, ins: list[str], out: str, name: str, scope: str, **attrs: object) -> onnx.NodeProto:
        n = helper.make_node(op, ins, [out], name=name, **attrs)
        helper.set_metadata_props(n, {"pkg.torch.onnx.name_scopes": repr(["", scope, name.removeprefix("node_")])})
        return n

    ln = "model.delta_expert.layers.0.input_layernorm"
    nodes = [node("Pow", ["x", "two"], "sq", "node_pow_1", ln),
             node("ReduceMean", ["sq"], "ms", "node_mean", ln, axes=[-1]),
             node("Add", ["ms", "eps"], "mse", "node_add_2", ln),
             node("Sqrt", ["mse"], "rms", "node_Sqrt_177", ln),
             node("Reciprocal", ["rms"], "inv", "node_rsqrt", ln),
             node("Mul", ["x", "inv"], "xn", "node_mul_5", ln),
             node("MatMul", ["xn", "w"], "q", "node_linear", "model.delta_expert.layers.0.self_attn.q_proj"),
             node("Softmax", ["q"], "p", "node_Softmax_205", "model.delta_expert.layers.0.self_attn"),
             helper.make_node("Mul", ["p", "two"], ["y"])]  # unnamed: TensorRT calls its layer node_of_y
    inits = [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
             numpy_helper.from_array(np.ones((4, 4), np.float32), "w")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    ("layer_type", "name", "pinned"),
    [
        ("SOFTMAX", "anything", True),
        ("NORMALIZATION", "anything", True),
        ("ELEMENTWISE", "node_pow_1", True),  # the RMSNorm's square: overflows fp16 past |x| = 256
        ("REDUCE", "node_mean", True),
        ("ELEMENTWISE", "node_add_2", True),  # + eps, inside the norm module (its scope)
        ("UNARY", "node_rsqrt", True),
        ("SHUFFLE", "node_pow_1_2817", True),  # a helper layer of node_pow_1, uniquified by the parser
        ("ELEMENTWISE", "node_mul_5", True),
        ("MATRIX_MULTIPLY", "node_linear", False),
        ("SHUFFLE", "node_linear_12", False),
        ("ELEMENTWISE", "node_of_y", False),
        ("SHUFFLE", "ONNXTRT_ShapeShuffle_3", False),
    ],
)
def test_fp32_pinning_rule_on_dynamo_names(layer_type: str, name: str, pinned: bool) -> None:
    """Layers are named after their ONNX node (onnx-tensorrt registerLayer); a dynamo export's node names carry no
    module path, so what stays fp32 comes from the graph: op type and torch scope, matched back by node name."""
    assert must_stay_fp32(layer_type, name, fp32_nodes(_dynamo_norm())) is pinned


def test_fp32_nodes_keep_torchscript_style_names() -> None:
    """An export without scope metadata still pins by the module path in the node name (`/model/norm/...`)."""
    nodes = [helper.make_node("Mul", ["x", "x"], ["a"], name="/model/layers.0/input_layernorm/Mul"),
             helper.make_node("Mul", ["a", "x"], ["y"], name="/model/layers.0/mlp/Mul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    pins = fp32_nodes(helper.make_model(graph))
    assert must_stay_fp32("ELEMENTWISE", "/model/layers.0/input_layernorm/Mul", pins)
    assert not must_stay_fp32("ELEMENTWISE", "/model/layers.0/mlp/Mul", pins)


def test_strongly_typed_build_needs_matching_onnx_dtypes() -> None:
    check_strongly_typed_dtypes("fp16", "prefix", {"FLOAT", "HALF", "BOOL"})
    check_strongly_typed_dtypes("fp32", "prefix", {"FLOAT", "INT64"})
    with pytest.raises(PrecisionError, match="make mixed-precision.*--weakly-typed"):
        check_strongly_typed_dtypes("fp16", "prefix", {"FLOAT", "INT64"})
    with pytest.raises(PrecisionError, match="no bf16 tensors"):
        check_strongly_typed_dtypes("bf16", "main_expert", {"FLOAT", "HALF"})
    with pytest.raises(PrecisionError, match="contains BF16"):
        check_strongly_typed_dtypes("fp32", "prefix", {"FLOAT", "BF16"})


# ------------------------------------------------------------------ plan: graphs, options, profiles


def test_parse_graphs_and_options() -> None:
    assert parse_graphs(None) == GRAPHS
    assert parse_graphs("delta_expert, prefix,prefix") == ("delta_expert", "prefix")
    with pytest.raises(PlanError, match="unknown graph.*vision"):
        parse_graphs("prefix,vision")
    validate_options("bf16", 0.5, 0)
    for args, match in [
        (("fp8", 4, 3), "--precision"),
        (("fp16", 0, 3), "--workspace-gb"),
        (("fp16", 4, 6), "--opt-level"),
        (("fp16", 4, -1), "--opt-level"),
    ]:
        with pytest.raises(PlanError, match=match):
            validate_options(*args)  # type: ignore[arg-type]
    assert BuildOptions(workspace_gb=4).workspace_bytes == 4 << 30


def test_static_graph_needs_no_profile() -> None:
    entry = _graph([("x_t", [1, 10, 32]), ("t", [1])])
    assert derive_profile(entry, {}, {}) == {}


def test_dynamic_dims_resolve_from_cli_manifest_and_batch() -> None:
    entry = _graph(
        [
            ("images", [-1, 1, 3, 64, 64]),
            ("lang_tokens", ["batch", "lang_len"]),
            ("x_t", [1, "T", 32]),
            ("y", [1, None]),
        ]
    )
    profile = derive_profile(entry, {"lang_len": 16}, {"T": (5, 10, 20), "y.1": (2, 4, 8)})
    assert profile["images"] == ShapeRange((1, 1, 3, 64, 64), (1, 1, 3, 64, 64), (1, 1, 3, 64, 64))
    assert profile["lang_tokens"] == ShapeRange((1, 16), (1, 16), (1, 16))
    assert profile["x_t"] == ShapeRange((1, 5, 32), (1, 10, 32), (1, 20, 32))
    assert profile["y"] == ShapeRange((1, 2), (1, 4), (1, 8))


def test_unresolvable_dynamic_dim_says_how_to_fix() -> None:
    with pytest.raises(PlanError, match=r"--dim seq=MIN:OPT:MAX"):
        derive_profile(_graph([("a", [1, "seq"])]), {}, {})
    with pytest.raises(PlanError, match=r"--dim a.2=MIN:OPT:MAX"):
        derive_profile(_graph([("a", [1, 2, -1])]), {}, {})


def test_parse_dim_ranges() -> None:
    assert parse_dim_ranges(["lang_len=8:16:48", "T=10"]) == {"lang_len": (8, 16, 48), "T": (10, 10, 10)}
    for bad in ["lang_len", "x=1:2", "x=a:b:c", "x=4:2:8", "=1", "x=0"]:
        with pytest.raises(PlanError):
            parse_dim_ranges([bad])
    with pytest.raises(PlanError):
        ShapeRange((1, 2), (1, 1), (1, 3))


def test_plan_jobs_checks_files(tmp_path: Path) -> None:
    art = make_artifacts(tmp_path / "onnx")
    jobs = plan_jobs(art, tmp_path / "engines", GRAPHS, json.loads((art / "manifest.json").read_text()), BuildOptions())
    assert [j.graph for j in jobs] == list(GRAPHS)
    assert jobs[0].plan_path == tmp_path / "engines" / "prefix.plan"
    assert jobs[0].fingerprint_path.name == "prefix.fingerprint.json"
    assert jobs[0].onnx_sha256 == sha256_bytes(b"not really onnx prefix")
    (art / "main_expert.onnx").unlink()
    with pytest.raises(PlanError, match="main_expert.onnx is missing"):
        plan_jobs(art, tmp_path, GRAPHS, json.loads((art / "manifest.json").read_text()), BuildOptions())


def test_plan_jobs_refuses_files_changed_since_the_export(tmp_path: Path) -> None:
    """The fingerprint records the manifest's hashes: an engine built from other bytes must not carry them."""
    art = make_artifacts(tmp_path / "onnx")
    (art / "prefix.onnx").write_bytes(b"not really onnx prefiX")
    with pytest.raises(PlanError, match="prefix.onnx differs from its SHA-256"):
        plan_jobs(art, tmp_path, GRAPHS, json.loads((art / "manifest.json").read_text()), BuildOptions())


# ------------------------------------------------------------------ trtexec line + fingerprint assembly


def test_trtexec_command_static_strongly_typed(tmp_path: Path) -> None:
    art = make_artifacts(tmp_path / "onnx")
    job = plan_jobs(
        art, tmp_path / "eng", ("prefix",), json.loads((art / "manifest.json").read_text()), BuildOptions()
    )[0]
    line = trtexec_command(job, BuildOptions(opt_level=4), ("--stronglyTyped",), (), tmp_path / "eng/timing.cache")
    assert line.startswith(f"trtexec --onnx={art / 'prefix.onnx'} --saveEngine={tmp_path / 'eng/prefix.plan'}")
    for part in (
        "--stronglyTyped",
        "--memPoolSize=workspace:4096M",
        "--builderOptimizationLevel=4",
        "--timingCacheFile=",
        "--useCudaGraph",
        "--separateProfileRun",
    ):
        assert part in line
    assert "Shapes=" not in line


def test_trtexec_command_dynamic_weakly_typed(tmp_path: Path) -> None:
    art = make_artifacts(tmp_path / "onnx", dynamic=True)
    options = BuildOptions(precision="fp16", strongly_typed=False, dim_ranges={"lang_len": (8, 16, 48)})
    job = plan_jobs(art, tmp_path / "e", ("prefix",), json.loads((art / "manifest.json").read_text()), options)[0]
    plan = plan_precision("fp16", False, (8, 7), 10)
    line = trtexec_command(job, options, plan.trtexec_flags, ("/ln/ReduceMean", "/attn/Softmax"))
    assert "--fp16 --noTF32 --precisionConstraints=obey" in line
    assert "--layerPrecisions=/ln/ReduceMean:fp32,/attn/Softmax:fp32" in line
    assert "--layerOutputTypes=/ln/ReduceMean:fp32,/attn/Softmax:fp32" in line  # outputs pinned as in the build
    assert "--minShapes=lang_tokens:1x8,lang_mask:1x8" in line
    assert "--optShapes=lang_tokens:1x16,lang_mask:1x16" in line
    assert "--maxShapes=lang_tokens:1x48,lang_mask:1x48" in line


def test_assemble_fingerprint(tmp_path: Path) -> None:
    art = make_artifacts(tmp_path / "onnx")
    job = plan_jobs(art, tmp_path, ("main_expert",), json.loads((art / "manifest.json").read_text()), BuildOptions())[0]
    fp = assemble_fingerprint(
        job, BuildOptions(precision="bf16", workspace_gb=2), b"plan!", "10.3.0.30", "Orin", (8, 7), 12.34567
    )
    assert fp.graph == "main_expert" and fp.onnx_sha256 == job.onnx_sha256
    assert fp.engine_bytes == 5 and fp.engine_sha256 == sha256_bytes(b"plan!")
    assert fp.workspace_bytes == 2 << 30 and fp.build_seconds == 12.346 and fp.compute_capability == (8, 7)
    assert tensorrt_major("10.3.0.30") == 10


# ------------------------------------------------------------------ the CLI, in a subprocess


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "export.trt.build_engines", *args], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--precision", "fp8"], "--precision 'fp8' is not one of fp32, fp16, bf16"),
        (["--graphs", "prefix,vision"], "unknown graph(s) vision"),
        (["--opt-level", "9"], "--opt-level must be 0..5"),
        (["--workspace-gb", "zero"], "invalid float value"),
        (["--bogus"], "unrecognized arguments"),
        (["--graphs", ","], "--graphs ',' names no graph"),
    ],
)
def test_cli_bad_args_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    art = make_artifacts(tmp_path / "onnx")
    result = _cli("--artifacts", str(art), "--out", str(tmp_path / "e"), *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_cli_missing_artifacts_one_line(tmp_path: Path) -> None:
    result = _cli("--artifacts", str(tmp_path / "nope"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "does not exist" in result.stderr
    (tmp_path / "empty").mkdir()
    result = _cli("--artifacts", str(tmp_path / "empty"))
    assert result.returncode == 2 and "manifest.json is missing" in result.stderr


def test_cli_refuses_an_unusable_out_before_building(tmp_path: Path) -> None:
    """--out an existing file, the artifact folder itself or a folder inside it: refused before TensorRT is
    looked for (it used to surface as FileExistsError after the build), and --artifacts a file is named so."""
    art = make_artifacts(tmp_path / "onnx")
    (tmp_path / "afile").write_text("x")
    for out, needle in ((tmp_path / "afile", "exists and is not a folder"), (tmp_path / "afile" / "e", "afile"),
                        (art, "must be a folder apart from --artifacts"), (art / "e", "apart from --artifacts")):
        result = _cli("--artifacts", str(art), "--out", str(out))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith(f"make engine: --out {out}") and needle in lines[0], lines[0]
    result = _cli("--artifacts", str(tmp_path / "afile"), "--out", str(tmp_path / "e"))
    assert result.returncode == 2 and "--artifacts" in result.stderr and "is not a folder" in result.stderr
    assert not (tmp_path / "e").exists() and not (art / "e").exists()


def test_engine_accuracy_checks_its_arguments_before_tensorrt(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from export.trt import engine_accuracy

    art = make_artifacts(tmp_path / "onnx")
    engines = tmp_path / "engines"
    engines.mkdir()
    for g in GRAPHS:
        (engines / f"{g}.fingerprint.json").write_text("{}")
    (tmp_path / "afile").write_text("x")
    cases = [(["--trials", "0"], "--trials must be at least 1, got 0"),
             (["--artifacts", str(tmp_path / "afile")], f"--artifacts {tmp_path / 'afile'} is not a folder"),
             (["--artifacts", str(tmp_path)], "has no manifest.json"),
             (["--engines", str(tmp_path / "nope")], "does not exist"),
             (["--engines", str(art)], "has no prefix.fingerprint.json")]
    for args, needle in cases:
        assert engine_accuracy.main(["--artifacts", str(art), "--engines", str(engines), *args]) == 2, args
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("engine accuracy: ") and needle in lines[0], lines


def test_cli_refuses_quantized_artifacts_one_line(tmp_path: Path) -> None:
    """onnxruntime's dynamic-int8 folders (export.int8.quantization) are not TensorRT input: refused before any build."""
    art = make_artifacts(tmp_path / "onnx-int8")
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["quantization"] = {"mode": "int8-dynamic", "source": "artifacts/onnx"}
    (art / "manifest.json").write_text(json.dumps(manifest))
    result = _cli("--artifacts", str(art), "--out", str(tmp_path / "e"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "int8-dynamic" in lines[0] and "--artifacts artifacts/onnx" in lines[0], result.stderr
    assert not (tmp_path / "e").exists()


@pytest.mark.skipif(NO_TRT is None, reason="TensorRT is installed here; the missing-TensorRT path cannot be shown")
def test_cli_without_tensorrt_says_where_to_build(tmp_path: Path) -> None:
    art = make_artifacts(tmp_path / "onnx")
    result = _cli("--artifacts", str(art), "--out", str(tmp_path / "e"), "--precision", "fp16")
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("make engine: TensorRT is not installed")
    assert "build engines on the target Jetson/GPU" in lines[0] and str(art) in lines[0]
    assert not (tmp_path / "e").exists()


# ------------------------------------------------------------------ type check against tensorrt-stubs


def test_mypy_tensorrt(tmp_path: Path) -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed")
    stub = importlib.util.find_spec("tensorrt_bindings")
    if (
        stub is None
        or not stub.submodule_search_locations
        or not any(Path(p, "tensorrt.pyi").is_file() for p in stub.submodule_search_locations)
    ):
        pytest.skip("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs)")
    patched = subprocess.run(
        [PY, "scripts/patch_tensorrt_stubs.py"], check=False, cwd=ROOT, capture_output=True, text=True
    )
    assert patched.returncode == 0, patched.stderr
    # A fresh cache: mypy's incremental cache can miss an edit made within the same second.
    result = subprocess.run(
        [PY, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy"), *MYPY_FILES],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------ real build (device only)


@pytest.mark.skipif(NO_TRT is not None, reason="TensorRT not installed: engines are built on the Jetson/GPU")
def test_real_build_from_artifacts(tmp_path: Path) -> None:
    art = ROOT / "artifacts" / "onnx"
    if not (art / "manifest.json").is_file():
        pytest.skip("no artifacts/onnx here (run `make export` first)")
    result = subprocess.run(
        [PY, "-m", "export.trt.build_engines", "--artifacts", str(art), "--out", str(tmp_path), "--precision", "fp32"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for g in GRAPHS:
        assert (tmp_path / f"{g}.plan").is_file() and (tmp_path / f"{g}.fingerprint.json").is_file()
    check = subprocess.run(
        [PY, "-m", "export.trt.engine_accuracy", "--artifacts", str(art), "--engines", str(tmp_path), "--trials", "1"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert check.returncode == 0, check.stdout + check.stderr
