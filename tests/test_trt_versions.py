"""The builder and the TensorRT backend against fake `tensorrt` modules with exactly one version's API surface
(10.3 JetPack 6, 10.13, 11.x) and fake cuda-python 12.x / 13.x: build configuration, flags, I/O binding,
the device Euler loop and CUDA-graph capture, and the NVRTC / module-load fallbacks with one printed reason."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from export.precision.mixed_precision import lower_artifacts
from export.trt.build_engines import main as build_main
from export.trt.engine_plan import GRAPHS
from runtime.backend import Backend
from runtime.backend_tensorrt import TensorRTBackend
from tests.fake_artifacts import build_fake_artifacts
from tests.fake_cuda import install_cuda
from tests.fake_tensorrt import OUTPUT_VALUE, SURFACES, TIMING_CACHE_BLOB, make_tensorrt

VERSIONS = tuple(SURFACES)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trtv")
    src = build_fake_artifacts(root / "onnx")
    lower_artifacts(src, root / "onnx-fp16", samples=2, trials=2, progress=False)
    return {"fp32": src, "fp16": root / "onnx-fp16"}


def _install(monkeypatch: pytest.MonkeyPatch, surface: str, layout: str = "12.x", **kw: object):
    cuda = install_cuda(monkeypatch, layout, **kw)  # type: ignore[arg-type]
    trt = make_tensorrt(surface, cuda)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt, cuda


def _build(folders: dict[str, Path], out: Path, precision: str, *extra: str) -> int:
    try:
        return _build_main(folders, out, precision, *extra)
    except SystemExit as exc:  # the CLI's one-line failures exit
        return int(exc.code or 0)


def _build_main(folders: dict[str, Path], out: Path, precision: str, *extra: str) -> int:
    return build_main(["--artifacts", str(folders[precision if precision != "weak" else "fp32"]), "--out", str(out),
                       "--precision", "fp16" if precision == "weak" else precision, *extra])


@pytest.mark.parametrize("surface", VERSIONS)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_strongly_typed_build_on_every_version(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               folders: dict[str, Path], surface: str, precision: str) -> None:
    trt, _ = _install(monkeypatch, surface)
    assert _build(folders, tmp_path, precision) == 0
    for g in GRAPHS:
        assert (tmp_path / f"{g}.plan").is_file() and (tmp_path / f"{g}.fingerprint.json").is_file()
    config = trt.Builder.last_config
    assert config.flags == set()  # strongly typed: no precision flag set, and TF32 (on by default) cleared
    assert config.pools == {trt.MemoryPoolType.WORKSPACE: 4 << 30}


def test_weak_typing_pins_norms_on_10x_and_is_refused_on_11(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                             folders: dict[str, Path],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    for surface in ("10.3", "10.13"):
        trt, _ = _install(monkeypatch, surface)
        assert _build(folders, tmp_path / surface, "weak", "--weakly-typed") == 0
        assert trt.Builder.last_config.flags == {trt.BuilderFlag.FP16, trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS}
    _install(monkeypatch, "11.x")
    capsys.readouterr()
    assert _build(folders, tmp_path / "11", "weak", "--weakly-typed") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TensorRT 11" in err[0]


def test_unreadable_timing_cache_starts_a_new_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   folders: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """A corrupt or other-version timing.cache makes create_timing_cache return None: warn and start afresh
    (set_timing_cache(None) would raise TypeError)."""
    _install(monkeypatch, "10.13")
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "timing.cache").write_bytes(b"\x00 not a timing cache")
    assert _build(folders, tmp_path, "fp32", "--graphs", "prefix") == 0
    err = capsys.readouterr().err
    assert f"timing cache {tmp_path / 'timing.cache'}" in err and "starting a new one" in err
    assert (tmp_path / "timing.cache").read_bytes() == TIMING_CACHE_BLOB


@pytest.mark.parametrize("surface", VERSIONS)
@pytest.mark.parametrize("layout", ["12.x", "13.x"])
def test_backend_binds_runs_and_captures_the_loop(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  folders: dict[str, Path], surface: str, layout: str) -> None:
    _, cuda = _install(monkeypatch, surface, layout)
    assert _build(folders, tmp_path, "fp16") == 0
    backend = TensorRTBackend(folders["fp16"], tmp_path)
    try:
        assert backend._euler is not None and cuda.compile_options == [b"--gpu-architecture=sm_87"]
        shapes = {n: t.shape for n, t in backend._tensors.items()}
        images = np.zeros(shapes["images"], np.float32)
        prefix = backend.run_prefix(images, np.zeros(shapes["lang_tokens"], np.int64),
                                    np.ones(shapes["lang_mask"], bool), np.zeros(shapes["state"], np.float32))
        assert np.all(prefix.obs_cls == OUTPUT_VALUE)
        noise = np.random.default_rng(0).standard_normal(shapes["x_t"]).astype(np.float32)
        expected = noise - OUTPUT_VALUE  # v = 0.5 for all N steps of dt = -1/N
        first = backend.denoise(noise, 4, prefix)  # plain launches, then capture
        replay = backend.denoise(noise, 4, prefix)  # the captured graph
        host = Backend.denoise(backend, noise, 4, prefix)
        np.testing.assert_allclose(first, expected, atol=1e-6)
        np.testing.assert_allclose(replay, expected, atol=1e-6)
        np.testing.assert_allclose(host, expected, atol=1e-6)
        assert cuda.graph_launches == 1 and cuda.kernel_launches == 8
    finally:
        backend.close()


def _fallback_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert "no device Euler kernel" in lines[0] and "updates x on the host" in lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("layout", "kw", "reason"),
    [
        ("13.x", {"nvrtc_missing": True}, "DynamicLibNotFoundError"),
        ("12.x", {"nvrtc_missing": True}, "libnvrtc"),
        ("12.x", {"refuse_image": "CUDA_ERROR_UNSUPPORTED_PTX_VERSION"}, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION"),
        ("12.x", {"cc": (11, 0)}, "sm_110"),
    ],
)
def test_kernel_failures_fall_back_with_one_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   folders: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                                   layout: str, kw: dict, reason: str) -> None:
    _install(monkeypatch, "10.3", layout, **kw)
    assert _build(folders, tmp_path, "fp32") == 0
    capsys.readouterr()
    backend = TensorRTBackend(folders["fp32"], tmp_path)
    try:
        assert reason in _fallback_line(capsys) and backend._euler is None
        shapes = {n: t.shape for n, t in backend._tensors.items()}
        prefix = backend.run_prefix(np.zeros(shapes["images"], np.float32), np.zeros(shapes["lang_tokens"], np.int64),
                                    np.ones(shapes["lang_mask"], bool), np.zeros(shapes["state"], np.float32))
        noise = np.ones(shapes["x_t"], np.float32)
        np.testing.assert_allclose(backend.denoise(noise, 4, prefix), noise - OUTPUT_VALUE, atol=1e-6)
    finally:
        backend.close()


def test_thor_compiles_with_cuda_python_13(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                           folders: dict[str, Path]) -> None:
    _, cuda = _install(monkeypatch, "11.x", "13.x", cc=(11, 0))
    assert _build(folders, tmp_path, "fp32") == 0
    backend = TensorRTBackend(folders["fp32"], tmp_path)
    try:
        assert backend._euler is not None and cuda.compile_options == [b"--gpu-architecture=sm_110"]
    finally:
        backend.close()


def test_gpu_bench_times_the_experts_on_a_fresh_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       folders: dict[str, Path]) -> None:
    """Timing the prefix reps+warmup times leaves only the latest K/V on the GPU; the expert rows must use it."""
    from scripts.bench_gpu.trt_engines import bench_tensorrt

    _install(monkeypatch, "10.3")
    assert _build(folders, tmp_path, "fp32") == 0
    rows = bench_tensorrt(folders["fp32"], tmp_path, reps=3, warmup=1)
    assert set(rows) == {"prefix", "main_step", "denoise", "delta", "chunk"}
    assert all(isinstance(v, dict) and v for v in rows.values())


def test_make_engine_refuses_nodes_the_installed_parser_rejects(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The per-version parser check runs for the installed TensorRT before any build: one line per node."""
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    art = build_fake_artifacts(tmp_path / "onnx")
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["graphs"]["prefix"]["outputs"].append({"name": "planted_pos", "shape": [1, 3], "dtype": "int64"})
    (art / "manifest.json").write_text(json.dumps(manifest))  # the built engine must have the manifest's I/O
    path = art / manifest["graphs"]["prefix"]["file"]
    model = onnx.load(str(path))
    model.graph.initializer.append(numpy_helper.from_array(np.array([[1, 0, 1]], np.int64), "planted_ids"))
    model.graph.initializer.append(numpy_helper.from_array(np.array(1, np.int64), "planted_axis"))
    model.graph.node.append(helper.make_node("CumSum", ["planted_ids", "planted_axis"], ["planted_pos"],
                                             name="planted_cumsum"))
    model.graph.output.append(helper.make_tensor_value_info("planted_pos", TensorProto.INT64, [1, 3]))
    onnx.save(model, str(path))
    from runtime.artifact_files import sha256_and_size

    sha, size = sha256_and_size(path)  # the planted graph is the export's: make engine checks files against it
    manifest["files"][path.name].update(sha256=sha, bytes=size)
    (art / "manifest.json").write_text(json.dumps(manifest))
    for surface, code in (("10.3", 2), ("10.13", 0)):
        _install(monkeypatch, surface)
        capsys.readouterr()
        assert _build({"fp32": art}, tmp_path / surface, "fp32") == code
        err = capsys.readouterr().err
        assert ("node 'planted_cumsum' (CumSum): INT64 input not supported — accepted from TensorRT 10.8" in err) \
            == (code == 2)
        assert (tmp_path / surface / "prefix.plan").is_file() == (code == 0)


def test_tensorrt_8_6_is_refused_in_one_line_everywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                        folders: dict[str, Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """JetPack 6.0 ships TensorRT 8.6: no STRONGLY_TYPED, no INT64 engine I/O (its parser casts int64 inputs to
    int32), no IProgressMonitor. `make engine`, the accuracy check and the backend must each say so in one line
    naming the version and the way out, not fail with a traceback or a parse error deep in the build."""
    from export.trt.engine_accuracy import main as accuracy_main
    from runtime.trt_env import TensorRTUnavailable

    _install(monkeypatch, "10.3")
    assert _build(folders, tmp_path, "fp32") == 0  # engines from a supported TensorRT, for the runtime checks
    _install(monkeypatch, "8.6")
    for extra in ((), ("--weakly-typed",)):
        capsys.readouterr()
        assert _build(folders, tmp_path / "86", "fp32", *extra) == 3
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "TensorRT 8.6.2.3" in err[0] and "10.0" in err[0] and "JetPack" in err[0], err
    assert not (tmp_path / "86" / "prefix.plan").exists()
    assert accuracy_main(["--artifacts", str(folders["fp32"]), "--engines", str(tmp_path)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TensorRT 8.6.2.3" in err[0], err
    with pytest.raises(TensorRTUnavailable, match=r"TensorRT 8\.6\.2\.3 .*10\.0.*JetPack"):
        TensorRTBackend(folders["fp32"], tmp_path)


def test_a_missing_api_member_ends_make_engine_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                           folders: dict[str, Path],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Any member runtime.trt_api looks up and the installed TensorRT lacks (11.0 marks STRONGLY_TYPED deprecated,
    'always enabled': pyCore.cpp l. 1765 at v11.0) is one line naming it and exit 3, never a traceback."""
    trt, _ = _install(monkeypatch, "11.x")
    trt.NetworkDefinitionCreationFlag = type("NetworkDefinitionCreationFlag", (), {})  # a release without it
    capsys.readouterr()
    assert _build(folders, tmp_path, "fp32") == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no NetworkDefinitionCreationFlag.STRONGLY_TYPED" in err[0], err


def test_accuracy_check_refuses_foreign_or_broken_engines_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path, folders: dict[str, Path],
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Engines from another TensorRT, or with a damaged fingerprint, are refused by the accuracy check with the
    backend's one-line reason, not a FingerprintMismatch / FingerprintError traceback."""
    from export.trt.engine_accuracy import main as accuracy_main

    _install(monkeypatch, "10.3")
    assert _build(folders, tmp_path, "fp32") == 0
    args = ["--artifacts", str(folders["fp32"]), "--engines", str(tmp_path), "--trials", "1"]
    _install(monkeypatch, "10.13")
    capsys.readouterr()
    assert accuracy_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TensorRT 10.3.0.30 (built) != 10.13.0.35 (running)" in err[0], err
    _install(monkeypatch, "10.3")
    (tmp_path / "main_expert.fingerprint.json").write_text("{not json")
    assert accuracy_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "main_expert.fingerprint.json" in err[0] and "not valid JSON" in err[0], err
