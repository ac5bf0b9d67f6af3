"""onnxruntime backend specifics: provider check, non-finite outputs, I/O check, close."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest

try:
    from tests.fake_artifacts import cached_fake_artifacts
except ImportError:
    from fake_artifacts import cached_fake_artifacts

from runtime.backend import BackendError
from runtime.backend_onnxruntime import OnnxRuntimeBackend, check_session_io
from runtime.manifest import Manifest, TensorSpec


@pytest.fixture(scope="module")
def setup():
    art = cached_fake_artifacts()
    m = Manifest.load(art)
    return art, m, OnnxRuntimeBackend(art, m, intra_op_threads=1)


def _inputs(m, state=None):
    ids = np.zeros((1, 8), np.int64)
    mask = np.zeros((1, 8), np.bool_)
    mask[0, :3] = True
    st = np.zeros((1, 4), np.float32) if state is None else state
    return np.full((1, 1, 3, 32, 32), 0.5, np.float32), ids, mask, st


def test_shapes_and_dtypes_follow_the_manifest(setup):
    _, m, b = setup
    pre = b.run_prefix(*_inputs(m))
    assert pre.obs_cls.shape == (1, 2, 8) and pre.obs_cls.dtype == np.float32
    for name in ("prefix_k", "prefix_v", "prefix_pad"):
        assert pre.handle[name].shape == m.graphs["prefix"].output(name).shape
    assert pre.handle["prefix_pad"].dtype == np.bool_
    v = b.run_main_expert(np.zeros((1, 6, 4), np.float32), 0.5, pre)
    d, act = b.run_delta_expert(np.zeros((1, 6, 4), np.float32), pre)
    assert v.shape == d.shape == (1, 6, 4) and act.shape == (1, 2, 8)


def test_non_finite_output_raises_backend_error(setup):
    _, m, b = setup
    with pytest.raises(BackendError, match="non-finite.*prefix_k"):
        b.run_prefix(*_inputs(m, np.array([[np.inf, -np.inf, 0, 0]], np.float32)))


def test_base_denoise_is_the_contract_euler_loop(setup):
    _, m, b = setup
    pre = b.run_prefix(*_inputs(m))
    noise = np.random.default_rng(0).standard_normal((1, 6, 4)).astype(np.float32)
    x = noise.copy()
    for i in range(3):
        x = x - (1 / 3) * b.run_main_expert(x, 1 - i / 3, pre)
    np.testing.assert_allclose(b.denoise(noise, 3, pre), x, atol=1e-6)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="needs a CPU-only onnxruntime")
@pytest.mark.filterwarnings("ignore:Specified provider")
def test_cuda_request_without_cuda_is_refused_or_warned(setup):
    art, m, _ = setup
    with pytest.raises(BackendError, match="CUDAExecutionProvider"):
        OnnxRuntimeBackend(art, m, device="cuda")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        b = OnnxRuntimeBackend(art, m, device="cuda", strict_device=False)
    assert not b.on_gpu and any("CUDAExecutionProvider" in str(x.message) for x in w)


def test_io_check_catches_dtype_and_shape_drift(setup):
    _, m, b = setup
    spec = m.graphs["main_expert"]
    bad_dtype = spec.__class__(spec.name, spec.file, None,
                               tuple(TensorSpec(s.name, s.shape, "float16" if s.name == "t" else s.dtype) for s in spec.inputs),
                               spec.outputs)
    with pytest.raises(BackendError, match="'t' has dtype float32"):
        check_session_io(b.sessions["main_expert"], bad_dtype)
    bad_shape = spec.__class__(spec.name, spec.file, None,
                               tuple(TensorSpec(s.name, (1, 7, 4) if s.name == "x_t" else s.shape, s.dtype) for s in spec.inputs),
                               spec.outputs)
    with pytest.raises(BackendError, match="'x_t' has shape"):
        check_session_io(b.sessions["main_expert"], bad_shape)


def test_close_is_idempotent_and_later_calls_fail_cleanly():
    art = cached_fake_artifacts()
    m = Manifest.load(art)
    b = OnnxRuntimeBackend(art, m, intra_op_threads=1)
    b.close()
    b.close()
    with pytest.raises(BackendError, match="closed"):
        b.run_prefix(*_inputs(m))


def test_io_binding_path_matches_plain_run(setup):
    """The CUDA code path (K/V kept as OrtValues, bound into both experts), exercised with CPU OrtValues."""
    art, m, plain = setup
    bound = OnnxRuntimeBackend(art, m, intra_op_threads=1, io_binding=True)
    assert bound.io_binding and not plain.io_binding
    pre_a, pre_b = plain.run_prefix(*_inputs(m)), bound.run_prefix(*_inputs(m))
    assert isinstance(pre_b.handle["prefix_k"], ort.OrtValue)
    np.testing.assert_array_equal(pre_a.obs_cls, pre_b.obs_cls)
    np.testing.assert_array_equal(pre_a.handle["prefix_k"], pre_b.handle["prefix_k"].numpy())
    x = np.random.default_rng(1).standard_normal((1, 6, 4)).astype(np.float32)
    np.testing.assert_array_equal(plain.denoise(x, 4, pre_a), bound.denoise(x, 4, pre_b))
    for a, b in zip(plain.run_delta_expert(x, pre_a), bound.run_delta_expert(x, pre_b)):
        np.testing.assert_array_equal(a, b)
