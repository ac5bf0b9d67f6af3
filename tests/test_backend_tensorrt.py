"""TensorRT backend: what can be checked without TensorRT (imports, refusal, guards, accuracy maths), plus a
device-only test that runs the real engines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export.accuracy_gates import GATES, compare, cosine, random_inputs, report
from export.trt.engine_plan import artifacts_for_engines
from runtime.backend import Backend, BackendError, PrefixState
from runtime.backend_tensorrt import TensorRTBackend, _DevicePrefix
from runtime.trt_env import TensorRTUnavailable, tensorrt_missing_reason

ROOT = Path(__file__).resolve().parent.parent
NO_TRT = tensorrt_missing_reason()
sys.path.insert(0, str(ROOT / "scripts"))
from patch_tensorrt_stubs import patch_source


def test_import_pulls_in_no_heavy_or_gpu_modules() -> None:
    code = (
        "import sys, runtime.backend_tensorrt, runtime.fingerprint;"
        "bad=[m for m in sys.modules if m.split('.')[0] in "
        "('torch','tensorrt','tensorrt_bindings','smolvla_cls','lerobot','transformers','onnxruntime')"
        " or m.startswith('cuda.bindings.runtime')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_is_a_complete_backend() -> None:
    assert issubclass(TensorRTBackend, Backend)
    assert not TensorRTBackend.__abstractmethods__
    assert TensorRTBackend.name == "tensorrt"
    assert "denoise" in TensorRTBackend.__dict__  # the device loop overrides the host default


@pytest.mark.skipif(NO_TRT is None, reason="TensorRT is installed here")
def test_refuses_to_start_without_tensorrt(tmp_path: Path) -> None:
    with pytest.raises(TensorRTUnavailable, match="TensorRT is not installed.*onnxruntime backend"):
        TensorRTBackend(tmp_path, tmp_path)


def test_stub_only_tensorrt_is_not_mistaken_for_the_library() -> None:
    import importlib.util

    spec = importlib.util.find_spec("tensorrt")
    if spec is None or spec.origin not in (None, "namespace"):
        pytest.skip("tensorrt-stubs is not installed alone here")
    assert NO_TRT is not None and "type stubs" in NO_TRT


def test_stale_prefix_is_refused() -> None:
    backend = TensorRTBackend.__new__(TensorRTBackend)  # guards only: no engines needed
    backend._closed, backend._generation = False, 2
    obs = np.zeros((1, 2, 4), np.float32)
    backend._check_prefix(PrefixState(obs, _DevicePrefix(2)))
    with pytest.raises(BackendError, match="stale PrefixState"):
        backend._check_prefix(PrefixState(obs, _DevicePrefix(1)))
    with pytest.raises(BackendError, match="stale PrefixState"):
        backend._check_prefix(PrefixState(obs, {"prefix_k": obs}))
    backend._closed = True
    with pytest.raises(BackendError, match="closed"):
        backend._check_prefix(PrefixState(obs, _DevicePrefix(2)))


# ------------------------------------------------------------------ accuracy maths (export.accuracy_gates)


def test_cosine_and_gates() -> None:
    a = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    assert cosine(a, a) == pytest.approx(1.0)
    assert cosine(a, -a) == pytest.approx(-1.0)
    assert cosine(np.zeros(3), np.zeros(3)) == 1.0 and cosine(np.zeros(3), np.ones(3)) == 0.0
    assert GATES["fp32"].per_engine == 0.9999 and GATES["fp32"].chunk == 0.9999
    assert GATES["fp16"].per_engine == GATES["bf16"].per_engine == 0.999
    assert GATES["fp16"].chunk == GATES["bf16"].chunk == 0.99


def test_compare_applies_the_right_gate() -> None:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((1, 10, 32))
    noisy = ref + 0.02 * rng.standard_normal(ref.shape)  # cosine ≈ 0.9998
    assert not compare("prefix", "obs_cls", noisy, ref, "fp32").passed
    assert compare("prefix", "obs_cls", noisy, ref, "fp16").passed
    worse = ref + 0.1 * rng.standard_normal(ref.shape)  # cosine ≈ 0.995
    assert not compare("prefix", "prefix_k", worse, ref, "bf16").passed
    assert compare("chunk", "actions", worse, ref, "bf16").passed
    pad = np.array([[True, False, True]])
    assert compare("prefix", "prefix_pad", pad.copy(), pad, "fp16").passed
    assert not compare("prefix", "prefix_pad", ~pad, pad, "fp16").passed
    table = report([compare("prefix", "obs_cls", noisy, ref, "fp32"), compare("prefix", "obs_cls", ref, ref, "fp32")])
    assert "FAIL" in table and table.count("obs_cls") == 1  # worst case per tensor only


def test_random_inputs_follow_the_manifest() -> None:
    manifest = {
        "graphs": {
            "prefix": {
                "inputs": [
                    {"name": "images", "shape": [1, 2, 3, 8, 8]},
                    {"name": "lang_tokens", "shape": [1, 6]},
                    {"name": "lang_mask", "shape": [1, 6]},
                    {"name": "state", "shape": [1, 32]},
                ]
            }
        }
    }
    feeds = random_inputs(manifest, np.random.default_rng(1))
    assert feeds["images"].shape == (1, 2, 3, 8, 8) and feeds["images"].dtype == np.float32
    assert 0.0 <= feeds["images"].min() and feeds["images"].max() <= 1.0
    assert feeds["lang_tokens"].dtype == np.int64 and feeds["lang_mask"].dtype == np.bool_
    mask = feeds["lang_mask"][0]
    assert mask[0] and list(mask) == sorted(mask, reverse=True)  # real tokens first, then padding
    assert np.all(feeds["lang_tokens"][0][~mask] == 0)


# ------------------------------------------------------------------ the stub repair used by the mypy check


def test_patch_source_repairs_only_invalid_signatures() -> None:
    src = (
        "class A:\n"
        "    def f(self, in: list[int], out: list[int]) -> int:\n"
        "        '''in: docs stay'''\n"
        "    def g(self, a: int = None, b: int = None, axis: int) -> None:\n"
        "    def h(self, x: int) -> int:\n"
    )
    fixed = patch_source(src)
    assert "def f(self, in_: list[int], out: list[int]) -> int:" in fixed
    assert "def g(self, a: int = None, b: int = None, axis: int = ...) -> None:" in fixed
    assert "'''in: docs stay'''" in fixed and "def h(self, x: int) -> int:" in fixed


def test_device_check_loads_the_folder_the_engines_were_built_from(tmp_path: Path) -> None:
    """fp16 engines come from artifacts/onnx-fp16; comparing them against artifacts/onnx fails the fingerprint."""
    from export.trt.engine_plan import PlanError

    folders = {}
    for name in ("onnx", "onnx-fp16"):
        folder = tmp_path / name
        folder.mkdir()
        manifest = {"graphs": {"prefix": {"file": "prefix.onnx"}}, "files": {"prefix.onnx": {"sha256": name * 4}}}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        folders[name] = folder
    eng = tmp_path / "engines"
    eng.mkdir()
    (eng / "prefix.fingerprint.json").write_text(json.dumps({"onnx_sha256": "onnx-fp16" * 4}))
    assert artifacts_for_engines(eng, list(folders.values())) == folders["onnx-fp16"]
    (eng / "prefix.fingerprint.json").write_text(json.dumps({"onnx_sha256": "other"}))
    with pytest.raises(PlanError, match="rebuild them with `make engine`"):
        artifacts_for_engines(eng, list(folders.values()))


# ------------------------------------------------------------------ device only


@pytest.mark.skipif(NO_TRT is not None, reason="TensorRT not installed: engines are built on the Jetson/GPU")
def test_engines_run_and_device_loop_matches_host_loop() -> None:
    eng = ROOT / "artifacts" / "engines"
    if not (eng / "prefix.plan").is_file():
        pytest.skip("no engines in artifacts/engines (run `make engine` first)")
    # `make engine` builds fp16/bf16 from artifacts/onnx-<precision>: load the folder the engines came from.
    art = artifacts_for_engines(eng, sorted((ROOT / "artifacts").glob("onnx*")))
    manifest = json.loads((art / "manifest.json").read_text())
    backend = TensorRTBackend(art, eng, manifest=manifest)
    try:
        from export.accuracy_gates import random_inputs as make

        feeds = make(manifest, np.random.default_rng(0))
        prefix = backend.run_prefix(feeds["images"], feeds["lang_tokens"], feeds["lang_mask"], feeds["state"])
        dims = manifest["dims"]
        noise = np.random.default_rng(1).standard_normal((1, dims["chunk_size"], dims["max_action_dim"]))
        noise = noise.astype(np.float32)
        host = Backend.denoise(backend, noise, dims["num_steps"], prefix)
        first = backend.denoise(noise, dims["num_steps"], prefix)  # plain launches, then capture
        replay = backend.denoise(noise, dims["num_steps"], prefix)  # CUDA graph replay
        np.testing.assert_allclose(first, host, atol=1e-4)
        np.testing.assert_allclose(replay, first, atol=1e-6)
        delta, act_cls = backend.run_delta_expert(first, prefix)
        assert delta.shape == first.shape and np.all(np.isfinite(act_cls))
    finally:
        backend.close()
        backend.close()  # safe twice
