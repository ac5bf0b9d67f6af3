"""TensorRT engines against the manifest's graph I/O (fake TensorRT 10.3 + fake CUDA): the backend and `make engine`
refuse any difference in tensor name, kind, dtype or shape (one line naming graph, tensor and field), a dynamic
engine runs the manifest's shapes only inside its profile, and a failed prefix pass invalidates older K/V."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tests.fake_tensorrt as fake_trt
from export.trt.build_engines import main as build_main
from runtime.backend import BackendError, PrefixState
from runtime.backend_tensorrt import TensorRTBackend
from runtime.fingerprint import EngineFingerprint, sha256_bytes
from runtime.manifest import GRAPH_NAMES
from tests.fake_artifacts import cached_fake_artifacts
from tests.fake_cuda import FakeCuda, install_cuda

OTHER_DTYPE = {"float32": "int64", "int64": "float32", "bool": "float32"}


def _install(monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    cuda = install_cuda(monkeypatch, "12.x")
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt.make_tensorrt("10.3", cuda))
    return cuda


def _build(art: Path, out: Path, *extra: str) -> int:
    try:
        return build_main(["--artifacts", str(art), "--out", str(out), "--precision", "fp32", *extra])
    except SystemExit as exc:  # the CLI's one-line failures exit
        return int(exc.code or 0)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    art, engines = cached_fake_artifacts(), tmp_path_factory.mktemp("engines")
    with pytest.MonkeyPatch.context() as mp:
        _install(mp)
        assert _build(art, engines) == 0
    return art, engines, json.loads((art / "manifest.json").read_text())


def _tensors(manifest: dict[str, Any]) -> Iterator[tuple[str, str, int]]:
    for graph in GRAPH_NAMES:
        for kind in ("inputs", "outputs"):
            for i in range(len(manifest["graphs"][graph][kind])):
                yield graph, kind, i


def _perturbations() -> Iterator[tuple[str, Callable[[dict[str, Any], str, int], None]]]:
    """(what the error must say, an edit of tensor i of the graph entry's `kind` list)."""
    def tensor(edit: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any], str, int], None]:
        return lambda entry, kind, i: edit(entry[kind][i])

    def flip(entry: dict[str, Any], kind: str, i: int) -> None:
        entry["outputs" if kind == "inputs" else "inputs"].append(entry[kind].pop(i))

    yield "has shape", tensor(lambda s: s.update(shape=[*s["shape"][:-1], s["shape"][-1] + 1]))
    yield "has shape", tensor(lambda s: s.update(shape=[*s["shape"], 1]))
    yield "has dtype", tensor(lambda s: s.update(dtype=OTHER_DTYPE[s["dtype"]]))
    yield "the manifest does not list", tensor(lambda s: s.update(name=s["name"] + "_renamed"))
    yield "the manifest does not list", lambda entry, kind, i: entry[kind].pop(i)
    yield "manifest says", flip


def test_every_manifest_tensor_perturbation_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch, built) -> None:
    art, engines, manifest = built
    cuda = _install(monkeypatch)
    checked = 0
    for graph, kind, i in _tensors(manifest):
        name = manifest["graphs"][graph][kind][i]["name"]
        for said, edit in _perturbations():
            edited = copy.deepcopy(manifest)
            edit(edited["graphs"][graph], kind, i)
            with pytest.raises(BackendError) as info:
                TensorRTBackend(art, engines, manifest=edited).close()
            message = str(info.value)
            assert f"graph '{graph}'" in message and f"'{name}'" in message and said in message, message
            assert "make engine" in message and not cuda.buffers  # refused before any device memory
            checked += 1
    assert checked == 6 * len(list(_tensors(manifest)))


@pytest.mark.parametrize("graph", GRAPH_NAMES)
def test_tensor_missing_from_the_engine_is_refused_not_a_key_error(monkeypatch: pytest.MonkeyPatch, built,
                                                                   graph: str) -> None:
    art, engines, manifest = built
    _install(monkeypatch)
    edited = copy.deepcopy(manifest)
    edited["graphs"][graph]["inputs"].append({"name": "extra", "shape": [1, 2], "dtype": "float32"})
    with pytest.raises(BackendError, match=f"graph '{graph}' has no input 'extra', which the manifest lists"):
        TensorRTBackend(art, engines, manifest=edited)


# ------------------------------------------------------------------ dynamic engines: profile and resolved shapes


def _replan(src: Path, dst: Path, graph: str, edit: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of the engine folder whose `graph` plan is edited (fingerprint re-pinned to the new bytes)."""
    shutil.copytree(src, dst)
    plan = json.loads((dst / f"{graph}.plan").read_bytes())
    edit(plan)
    blob = json.dumps(plan).encode()
    (dst / f"{graph}.plan").write_bytes(blob)
    fp = EngineFingerprint.read(dst / f"{graph}.fingerprint.json")
    dataclasses.replace(fp, engine_bytes=len(blob), engine_sha256=sha256_bytes(blob)).write(
        dst / f"{graph}.fingerprint.json")
    return dst


def _dynamic_images(low: int, high: int) -> Callable[[dict[str, Any]], None]:
    def edit(plan: dict[str, Any]) -> None:
        spec = next(s for s in plan["io"] if s[0] == "images")
        static = spec[2]
        spec[2] = [*static[:-2], -1, -1]
        plan["profile"] = {"images": [[*static[:-2], low, low], static, [*static[:-2], high, high]]}
    return edit


def _prefix_inputs(backend: TensorRTBackend) -> tuple[np.ndarray, ...]:
    shapes = {n: t.shape for n, t in backend._tensors.items()}
    return (np.zeros(shapes["images"], np.float32), np.zeros(shapes["lang_tokens"], np.int64),
            np.ones(shapes["lang_mask"], bool), np.zeros(shapes["state"], np.float32))


def test_dynamic_input_runs_the_manifest_shape_inside_its_profile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                   built) -> None:
    art, engines, manifest = built
    _install(monkeypatch)
    dynamic = _replan(engines, tmp_path / "e", "prefix", _dynamic_images(8, 64))
    backend = TensorRTBackend(art, dynamic, manifest=manifest)
    try:
        want = tuple(next(s["shape"] for s in manifest["graphs"]["prefix"]["inputs"] if s["name"] == "images"))
        assert backend._contexts["prefix"].input_shapes == {"images": want}
        assert np.all(backend.run_prefix(*_prefix_inputs(backend)).obs_cls == fake_trt.OUTPUT_VALUE)
    finally:
        backend.close()


def test_profile_that_excludes_the_manifest_shape_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                             built) -> None:
    art, engines, manifest = built
    cuda = _install(monkeypatch)
    narrow = _replan(engines, tmp_path / "e", "prefix", _dynamic_images(8, 16))
    with pytest.raises(BackendError, match=r"graph 'prefix' input 'images' has shape \[1, 1, 3, -1, -1\] with "
                                           r"profile \[1, 1, 3, 8, 8\]\.\.\[1, 1, 3, 16, 16\], which excludes"):
        TensorRTBackend(art, narrow, manifest=manifest)
    assert not cuda.buffers


def test_refused_set_input_shape_is_an_error_naming_tensor_and_shape(monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path, built) -> None:
    art, engines, manifest = built
    cuda = _install(monkeypatch)
    monkeypatch.setattr(fake_trt, "REFUSED_INPUT_SHAPES", {"images"})
    dynamic = _replan(engines, tmp_path / "e", "prefix", _dynamic_images(8, 64))
    with pytest.raises(BackendError, match=r"prefix: TensorRT refused input shape \[1, 1, 3, 32, 32\] for 'images'"):
        TensorRTBackend(art, dynamic, manifest=manifest)
    assert not cuda.buffers  # the buffers bound before the refusal were freed


@pytest.mark.parametrize("resolved_extra", [0, 1])
def test_dynamic_output_must_resolve_to_the_manifest_shape(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, built,
                                                           resolved_extra: int) -> None:
    art, engines, manifest = built
    _install(monkeypatch)
    want = next(s["shape"] for s in manifest["graphs"]["prefix"]["outputs"] if s["name"] == "obs_cls")

    def edit(plan: dict[str, Any]) -> None:
        _dynamic_images(8, 64)(plan)
        next(s for s in plan["io"] if s[0] == "obs_cls")[2] = [1, -1, want[-1]]
        plan["output_shapes"] = {"obs_cls": [1, want[1] + resolved_extra, want[-1]]}

    folder = _replan(engines, tmp_path / "e", "prefix", edit)
    if resolved_extra:
        with pytest.raises(BackendError, match=f"prefix: output 'obs_cls' comes out .* manifest says {re.escape(str(want))}"):
            TensorRTBackend(art, folder, manifest=manifest)
        return
    TensorRTBackend(art, folder, manifest=manifest).close()


# ------------------------------------------------------------------ make engine: the same check before saving


@pytest.mark.parametrize("graph", GRAPH_NAMES)
@pytest.mark.parametrize("field", ["shape", "dtype"])
def test_make_engine_refuses_an_engine_whose_io_differs_from_the_manifest(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str], graph: str,
        field: str) -> None:
    art = tmp_path / "onnx"
    shutil.copytree(cached_fake_artifacts(), art)
    manifest = json.loads((art / "manifest.json").read_text())
    spec = manifest["graphs"][graph]["inputs"][0]
    if field == "shape":
        spec["shape"] = [*spec["shape"][:-1], spec["shape"][-1] + 1]
    else:
        spec["dtype"] = OTHER_DTYPE[spec["dtype"]]
    (art / "manifest.json").write_text(json.dumps(manifest))
    _install(monkeypatch)
    capsys.readouterr()
    assert _build(art, tmp_path / "engines", "--graphs", graph) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("make engine:")]
    assert len(err) == 1 and f"graph '{graph}' input '{spec['name']}' has {field}" in err[0], err
    assert "not saved" in err[0] and not (tmp_path / "engines" / f"{graph}.plan").exists()


# ------------------------------------------------------------------ K/V generation: a failed prefix pass


def _fail_nan(monkeypatch: pytest.MonkeyPatch, inputs: list[np.ndarray]) -> None:
    monkeypatch.setattr(fake_trt, "OUTPUT_VALUE", float("nan"))


def _fail_shape(i: int) -> Callable[[pytest.MonkeyPatch, list[np.ndarray]], None]:
    def fail(monkeypatch: pytest.MonkeyPatch, inputs: list[np.ndarray]) -> None:
        inputs[i] = np.zeros((*inputs[i].shape, 2), inputs[i].dtype)
    return fail


@pytest.mark.parametrize("fail", [_fail_nan, *(_fail_shape(i) for i in range(4))],
                         ids=["non-finite", "images", "lang_tokens", "lang_mask", "state"])
def test_failed_prefix_pass_invalidates_every_earlier_prefix_state(monkeypatch: pytest.MonkeyPatch, built,
                                                                   fail: Callable) -> None:
    art, engines, manifest = built
    _install(monkeypatch)
    backend = TensorRTBackend(art, engines, manifest=manifest)
    try:
        good = list(_prefix_inputs(backend))
        older = [backend.run_prefix(*good), backend.run_prefix(*good)]
        bad = list(good)
        with monkeypatch.context() as mp:
            fail(mp, bad)
            with pytest.raises(BackendError):
                backend.run_prefix(*bad)
        x = np.zeros(backend._tensors["x_t"].shape, np.float32)
        for state in older:
            for call in (lambda p: backend.run_main_expert(x, 1.0, p), lambda p: backend.run_delta_expert(x, p),
                         lambda p: backend.denoise(x, 2, p)):
                with pytest.raises(BackendError, match="stale PrefixState"):
                    call(state)
        fresh: PrefixState = backend.run_prefix(*good)
        assert backend.run_main_expert(x, 1.0, fresh).shape == x.shape
    finally:
        backend.close()
