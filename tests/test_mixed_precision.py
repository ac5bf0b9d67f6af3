"""fp16/bf16 artifact folder (export/precision/mixed_precision.py) on tiny fake artifacts: contract and hashes, fp16
weights inside with float32 I/O, the runtime runs it unchanged, the accuracy gate refuses a bad lowering and
leaves nothing behind, bad input is named in one line, and the TensorRT plan accepts it for a strongly typed build."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from export.accuracy_gates import random_inputs, vocab_size
from export.derived_artifacts import DerivationInputError
from export.int8.quantization import quantize_artifacts
from export.precision.mixed_precision import AccuracyGateError, lower_artifacts
from export.trt.engine_plan import BuildOptions, load_manifest, plan_jobs
from export.trt.engine_precision import check_strongly_typed_dtypes
from runtime.fingerprint import sha256_file
from runtime.manifest import GRAPH_NAMES, Manifest
from runtime.policy import EdgePolicy
from tests.fake_artifacts import INT8_DRIFT_THRESHOLD, build_fake_artifacts, cached_fake_artifacts, make_observation

ROOT = Path(__file__).resolve().parents[1]
_TRT_DTYPE = {TensorProto.FLOAT16: "HALF", TensorProto.BFLOAT16: "BF16", TensorProto.FLOAT: "FLOAT"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("mp")
    src = build_fake_artifacts(root / "onnx")
    manifest = lower_artifacts(src, root / "onnx-fp16", samples=2, trials=2, progress=False)
    return src, root / "onnx-fp16", manifest


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)


def test_folder_keeps_the_contract_and_records_the_lowering(folders: tuple[Path, Path, dict]) -> None:
    src, dst, _ = folders
    m = Manifest.load(dst, verify_hashes=True)
    src_raw = json.loads((src / "manifest.json").read_text())
    rec = m.raw["mixed_precision"]
    assert rec["precision"] == "fp16" and rec["source_manifest_sha256"] == sha256_file(src / "manifest.json")
    for g in GRAPH_NAMES:
        assert m.raw["graphs"][g]["inputs"] == src_raw["graphs"][g]["inputs"]
        assert m.raw["graphs"][g]["outputs"] == src_raw["graphs"][g]["outputs"]
        assert rec["graphs"][g]["low_nodes"] >= 1
    for key in ("dims", "cameras", "normalization", "action_bounds", "tokenizer", "gate", "delta_input"):
        assert m.raw[key] == src_raw[key], key
    assert all(v["cosine"] >= v["gate"] for v in rec["validation"]["worst"].values())
    assert {"prefix.obs_cls", "chunk.actions", "delta_expert.delta"} <= set(rec["validation"]["worst"])
    info = _run("-m", "runtime", "info", "--artifacts", str(dst))
    assert info.returncode == 0, info.stderr
    assert "fp16 mixed" in info.stdout


def test_graphs_hold_fp16_weights_behind_float32_io(folders: tuple[Path, Path, dict]) -> None:
    src, dst, _ = folders
    for g in GRAPH_NAMES:
        model = onnx.load(str(dst / f"{g}.onnx"))
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
        assert {i.type.tensor_type.elem_type for i in model.graph.input} <= {TensorProto.FLOAT, TensorProto.INT64,
                                                                            TensorProto.BOOL}
        assert TensorProto.FLOAT16 not in {o.type.tensor_type.elem_type for o in model.graph.output}
        assert any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer), g
        # what a strongly typed fp16 build checks before building (engine_precision), on the ONNX types
        seen = {_TRT_DTYPE.get(i.data_type, "OTHER") for i in model.graph.initializer}
        check_strongly_typed_dtypes("fp16", g, seen)
    assert (dst / "prefix.onnx").stat().st_size < 0.7 * (src / "prefix.onnx").stat().st_size
    plans = plan_jobs(dst, dst.parent / "engines", GRAPH_NAMES, load_manifest(dst), BuildOptions(precision="fp16"))
    assert len(plans) == len(GRAPH_NAMES) == 4  # the engine plan takes a mixed-precision folder (it refuses only int8 ones)


def test_runtime_runs_the_fp16_folder_and_agrees_with_fp32(folders: tuple[Path, Path, dict]) -> None:
    src, dst, _ = folders
    runs = {}
    for name, folder in (("fp32", src), ("fp16", dst)):
        policy = EdgePolicy(folder, backend="onnxruntime", gate="drift", refine=True, seed=0,
                            backend_options={"intra_op_threads": 1})
        m = policy.manifest
        actions = []
        for i in range(2 * m.dims.chunk_size):
            action = policy.step(make_observation(i))
            assert np.all(np.isfinite(action)) and policy.last_info.fault is None
            assert np.all(action >= m.action_bounds.low) and np.all(action <= m.action_bounds.high)
            actions.append(action)
        runs[name] = (np.array(actions), policy.counters.resamples)
    assert np.max(np.abs(runs["fp16"][0] - runs["fp32"][0])) < 0.05 * np.ptp(runs["fp32"][0]) + 1e-3
    assert runs["fp16"][1] == runs["fp32"][1]  # the gate decides the same: the embedding barely moves


def test_accuracy_gate_refuses_and_leaves_nothing(tmp_path: Path, folders: tuple[Path, Path, dict],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import export.accuracy_gates as accuracy

    src, _, _ = folders
    monkeypatch.setitem(accuracy.GATES, "fp16", accuracy.Gate(1.0 + 1e-9, 1.0 + 1e-9))  # unreachable
    with pytest.raises(AccuracyGateError, match="nothing written"):
        lower_artifacts(src, tmp_path / "fp16", samples=1, trials=1, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_named(tmp_path: Path, folders: tuple[Path, Path, dict]) -> None:
    src, dst, _ = folders
    int8 = tmp_path / "int8"
    quantize_artifacts(cached_fake_artifacts(drift_threshold=INT8_DRIFT_THRESHOLD), int8, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    cases = [((tmp_path / "nope", tmp_path / "o1"), {}, "does not exist"),
             ((dst, tmp_path / "o2"), {}, "already mixed precision"),
             ((int8, tmp_path / "o3"), {}, "already quantized"),
             ((src, other), {}, "not a derived artifact folder"),
             ((src, tmp_path / "o4"), {"precision": "fp8"}, "--precision"),
             ((src, tmp_path / "o5"), {"data_max": 0.0}, "--data-max"),
             ((src, tmp_path / "o6"), {"keep": ["("]}, "--keep-fp32"),
             ((src, tmp_path / "o7"), {"samples": 0}, "--samples")]
    for (s, d), kw, needle in cases:
        with pytest.raises(DerivationInputError, match=needle):
            lower_artifacts(s, d, progress=False, **kw)
    assert (other / "keep.txt").read_text() == "mine"
    r = _run("-m", "export.precision.mixed_precision", "--src", str(tmp_path / "missing"), "--dst", str(tmp_path / "x"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("mixed precision: --src"), r.stderr


def test_random_inputs_respect_the_tokenizer_vocabulary(folders: tuple[Path, Path, dict]) -> None:
    src, _, _ = folders
    raw = json.loads((src / "manifest.json").read_text())
    vocab = vocab_size(src, raw)
    assert 2 < vocab < 100  # the fake WordLevel vocabulary
    rng = np.random.default_rng(0)
    for _ in range(20):
        feeds = random_inputs(raw, rng, vocab)
        assert feeds["lang_tokens"].max() < vocab and feeds["lang_mask"][..., 0].all()


def test_engine_plan_and_accuracy_reference_follow_the_record(tmp_path: Path, folders: tuple[Path, Path, dict]) -> None:
    """A strongly typed build must ask for the folder's own precision; an emulated folder is never built; engine
    accuracy is judged against the unchanged fp32 source."""
    from export.trt.engine_accuracy import reference_folder
    from export.trt.engine_plan import PlanError

    src, dst, _ = folders
    with pytest.raises(PlanError, match="--precision fp16"):
        plan_jobs(dst, tmp_path / "e", GRAPH_NAMES, load_manifest(dst), BuildOptions(precision="bf16"))
    weak = BuildOptions(precision="fp16", strongly_typed=False)
    assert len(plan_jobs(dst, tmp_path / "e", ("prefix",), load_manifest(dst), weak)) == 1
    emulated = tmp_path / "emulated"
    lower_artifacts(src, emulated, samples=1, trials=1, emulated=True, progress=False)
    model = onnx.load(str(emulated / "prefix.onnx"))
    assert not any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer)
    with pytest.raises(PlanError, match="emulation"):
        load_manifest(emulated)
    ref, raw = reference_folder(dst, load_manifest(dst))
    assert ref.resolve() == src.resolve() and "mixed_precision" not in raw
    assert reference_folder(src, load_manifest(src))[0] == src
    moved = tmp_path / "moved"
    import shutil

    shutil.copytree(dst, moved)
    rec = json.loads((moved / "manifest.json").read_text())
    rec["mixed_precision"]["source"] = str(tmp_path / "gone")
    (moved / "manifest.json").write_text(json.dumps(rec))
    with pytest.raises(FileNotFoundError, match="accuracy reference"):
        reference_folder(moved, rec)


def test_cli_skips_an_up_to_date_folder(tmp_path: Path, folders: tuple[Path, Path, dict]) -> None:
    src, _, _ = folders
    args = ["-m", "export.precision.mixed_precision", "--src", str(src), "--dst", str(tmp_path / "fp16"), "--samples", "1",
            "--trials", "1"]
    first = _run(*args)
    assert first.returncode == 0 and "wrote" in first.stdout, first.stderr
    stamp = (tmp_path / "fp16" / "manifest.json").read_text()
    again = _run(*args)
    assert again.returncode == 0 and "up to date" in again.stdout
    assert (tmp_path / "fp16" / "manifest.json").read_text() == stamp
    other = _run(*args, "--data-max", "64")  # other options: redone
    assert other.returncode == 0 and "wrote" in other.stdout
    assert json.loads((tmp_path / "fp16" / "manifest.json").read_text())["mixed_precision"]["data_max"] == 64.0


def test_rewriting_a_graph_with_external_weights_does_not_grow_its_data_file(tmp_path: Path) -> None:
    """Each fallback round rewrites the graphs; onnx appends to an existing data file unless it is removed."""
    from onnx import helper, numpy_helper

    from export.precision.mixed_precision import _save

    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "g.onnx"
    sizes = []
    for _ in range(3):
        _save(onnx.ModelProto.FromString(model.SerializeToString()), path, external=True)
        sizes.append((tmp_path / "g.onnx.data").stat().st_size)
    assert sizes[0] == sizes[1] == sizes[2] == 64 * 64 * 4
    loaded = onnx.load(str(path))
    assert np.array_equal(numpy_helper.to_array(loaded.graph.initializer[0]), np.ones((64, 64), np.float32))


def test_lowering_is_byte_reproducible_across_processes(tmp_path: Path, folders: tuple[Path, Path, dict]) -> None:
    """Same source, same options → same graph bytes, whatever the interpreter's hash seed (the manifest's
    SHA-256s and the engines' fingerprints depend on it)."""
    import os

    src, _, _ = folders
    hashes = []
    for seed in ("1", "2"):
        dst = tmp_path / f"fp16-{seed}"
        r = subprocess.run([sys.executable, "-m", "export.precision.mixed_precision", "--src", str(src), "--dst", str(dst),
                            "--samples", "1", "--trials", "1"], cwd=ROOT, capture_output=True, text=True, timeout=180,
                           check=False, env={**os.environ, "PYTHONHASHSEED": seed})
        assert r.returncode == 0, r.stderr
        hashes.append({g: sha256_file(dst / f"{g}.onnx") for g in GRAPH_NAMES})
    assert hashes[0] == hashes[1]


@pytest.mark.parametrize("bad", [np.zeros((1, 2, 4)), np.full((1, 2, 4), np.nan)], ids=["zero", "nan"])
def test_a_degenerate_lowered_embedding_is_the_largest_shift_not_a_crash(bad):
    """A lowering whose obs-CLS collapses (overflow to NaN, or zeros) fails the drift row instead of stopping
    the whole validation with a traceback (the runtime's `embed` refuses such an embedding)."""
    from export.accuracy_gates import embedding_shift

    want = np.random.default_rng(0).standard_normal((1, 2, 4))
    assert embedding_shift(bad, want) == 2.0
    assert embedding_shift(want, want) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("scale", [3.0, 0.5, 1.2, -1.0])
def test_a_uniformly_scaled_output_fails_its_gate(scale):
    """Cosine alone is blind to length: an output off by a constant factor (an fp16 overflow clamped, a wrong
    scale folded into a weight) must fail, at every precision's gate; a faithful one passes."""
    from export.accuracy_gates import CHUNK, GATES, compare

    ref = np.random.default_rng(1).standard_normal((10, 6))
    for precision in GATES:
        for graph in (CHUNK, "main_expert"):
            assert not compare(graph, "actions", scale * ref, ref, precision).passed, (precision, graph, scale)
            assert compare(graph, "actions", ref * (1 + 1e-6), ref, precision).passed


def test_the_report_shows_a_failing_row_even_after_a_good_one():
    from export.accuracy_gates import Comparison, report

    ok, bad = Comparison("prefix", "obs_cls", 1.0, 0.0, 0.999), Comparison("prefix", "obs_cls", float("nan"), 0.0, 0.999)
    assert "FAIL" in report([ok, bad]) and "FAIL" in report([bad, ok])


def _ignoring_plan_valid(src: Path, out: Path) -> Path:
    """The plan encoder with `plan_valid` forced all-True inside (padding rows of a remainder become visible)."""
    model = onnx.load(str(src))
    uses = [(n, i) for n in model.graph.node for i, name in enumerate(n.input) if name == "plan_valid"]
    everything = onnx.helper.make_tensor("all_true", TensorProto.BOOL, [1, 1], [True])
    model.graph.initializer.append(everything)
    model.graph.node.insert(0, onnx.helper.make_node("Or", ["plan_valid", "all_true"], ["plan_valid_all"]))
    for node, i in uses:
        node.input[i] = "plan_valid_all"
    onnx.save_model(model, str(out))
    return out


def test_validation_feeds_the_plan_encoder_remainders_and_catches_visible_padding(tmp_path: Path,
                                                                                  folders: tuple[Path, Path, dict]) -> None:
    """The runtime encodes remainders (rows past R invisible); the lowering was validated on full plans only,
    so a lowered plan encoder that ignored plan_valid passed every gate. Now its rows fail, the intact one's pass."""
    from export.precision.mixed_precision import validate

    src, _, _ = folders
    raw = json.loads((src / "manifest.json").read_text())
    ref = {g: src / raw["graphs"][g]["file"] for g in GRAPH_NAMES}
    broken = {**ref, "plan_encoder": _ignoring_plan_valid(ref["plan_encoder"], tmp_path / "plan_encoder.onnx")}
    vocab = vocab_size(src, raw)
    rows = validate(ref, broken, raw, "fp16", trials=3, seed=1, vocab=vocab)
    failed = {(r.graph, r.tensor) for r in rows if not r.passed}
    assert ("plan_encoder", "act_cls") in failed and failed <= {("plan_encoder", "act_cls"), ("plan_encoder", "act_emb")}
    assert all(r.passed for r in validate(ref, ref, raw, "fp16", trials=3, seed=1, vocab=vocab))


def test_validation_bounds_both_embeddings_the_default_consistency_gate_reads(folders: tuple[Path, Path, dict]) -> None:
    """The default gate is consistency: obs-CLS against the plan encoder's act-CLS. Both embeddings are bounded,
    each by a tenth of the smallest calibrated threshold of the gates that read it (not only obs-CLS vs drift)."""
    from export.precision.mixed_precision import validate

    src, _, _ = folders
    raw = json.loads((src / "manifest.json").read_text())
    ref = {g: src / raw["graphs"][g]["file"] for g in GRAPH_NAMES}
    rows = validate(ref, ref, raw, "fp16", trials=2, seed=1, vocab=vocab_size(src, raw))
    gates = {(r.graph, r.tensor): r.gate for r in rows}
    thr = {k: raw["gate"][k]["default_threshold"] for k in ("drift", "consistency")}
    assert gates[("prefix", "obs_emb")] == pytest.approx(1.0 - 0.1 * min(thr.values()))
    assert gates[("plan_encoder", "act_emb")] == pytest.approx(1.0 - 0.1 * thr["consistency"])
