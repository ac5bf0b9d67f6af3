"""Engine fingerprints bind an engine to its graph's weights, not only to its .onnx (fake TensorRT + fake CUDA).

With external data (`<graph>.onnx.data`, export's layout for graphs over 256 MB) the .onnx holds only offsets:
two exports of the same architecture with other weights have the same .onnx. Fingerprint format 2 records the
data file's SHA-256; the runtime and `sign-engines` compare it, and refuse a format-1 fingerprint for a graph
with external data (it cannot name the weights) while still accepting one for a graph without.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

import tests.fake_tensorrt as fake_trt
from export.signing import SigningError, generate_keypair, sign_engines
from export.trt.build_engines import main as build_main
from export.trt.engine_plan import artifacts_for_engines
from runtime.backend_tensorrt import TensorRTBackend
from runtime.fingerprint import FORMAT_VERSION, FingerprintMismatch
from tests.fake_artifacts import cached_fake_artifacts, externalize_weights
from tests.fake_cuda import install_cuda


def _install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt.make_tensorrt("10.3", install_cuda(monkeypatch, "12.x")))


def _manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A and B: the same prefix.onnx, other weights in prefix.onnx.data; engines built from A."""
    root = tmp_path_factory.mktemp("binding")
    a, b, engines = root / "onnx-a", root / "onnx-b", root / "engines"
    for folder, scale in ((a, 1.0), (b, 0.5)):
        shutil.copytree(cached_fake_artifacts(), folder)
        externalize_weights(folder, "prefix", scale)
    assert (a / "prefix.onnx").read_bytes() == (b / "prefix.onnx").read_bytes()
    assert (a / "prefix.onnx.data").read_bytes() != (b / "prefix.onnx.data").read_bytes()
    with pytest.MonkeyPatch.context() as mp:
        _install(mp)
        assert build_main(["--artifacts", str(a), "--out", str(engines), "--precision", "fp32"]) == 0
    return a, b, engines


def _to_format_1(src: Path, dst: Path, graph: str) -> Path:
    """A copy of the engine folder whose `graph` fingerprint is what the format-1 builder wrote."""
    shutil.copytree(src, dst)
    path = dst / f"{graph}.fingerprint.json"
    old = json.loads(path.read_text())
    del old["data_sha256"]
    old["format_version"] = 1
    path.write_text(json.dumps(old))
    return dst


def test_make_engine_records_the_weights_of_each_graph(exports) -> None:
    a, _, engines = exports
    files = _manifest(a)["files"]
    prefix = json.loads((engines / "prefix.fingerprint.json").read_text())
    assert prefix["format_version"] == FORMAT_VERSION == 2
    assert prefix["data_sha256"] == files["prefix.onnx.data"]["sha256"]
    assert json.loads((engines / "main_expert.fingerprint.json").read_text())["data_sha256"] is None
    assert artifacts_for_engines(engines, [exports[1], a]) == a  # B has the same prefix.onnx, not the weights


def test_runtime_refuses_engines_built_from_other_weights(monkeypatch: pytest.MonkeyPatch, exports) -> None:
    a, b, engines = exports
    _install(monkeypatch)
    TensorRTBackend(a, engines, manifest=_manifest(a)).close()
    with pytest.raises(FingerprintMismatch, match=r"engine 'prefix' does not fit this setup: external weights sha256 "
                                                  r"\w+… != manifest \w+… .*make engine"):
        TensorRTBackend(b, engines, manifest=_manifest(b))


def test_sign_engines_refuses_engines_built_from_other_weights(tmp_path: Path, exports) -> None:
    a, b, engines = exports
    key, _ = generate_keypair(tmp_path / "k")
    signed = tmp_path / "signed"
    shutil.copytree(engines, signed)
    with pytest.raises(SigningError, match=r"prefix was not built from the graph and weights of --artifacts .*onnx-b: "
                                           r"external weights sha256"):
        sign_engines(signed, b, key)
    assert sign_engines(signed, a, key).startswith("sha256:")


def test_format_1_fingerprint_is_refused_only_for_a_graph_with_external_data(monkeypatch: pytest.MonkeyPatch,
                                                                             tmp_path: Path, exports) -> None:
    a, _, engines = exports
    _install(monkeypatch)
    old_prefix = _to_format_1(engines, tmp_path / "old-prefix", "prefix")
    with pytest.raises(FingerprintMismatch, match=r"engine 'prefix'.*format_version 1\) records no hash of the "
                                                  r"graph's external weights.*rebuild the engines with `make engine`"):
        TensorRTBackend(a, old_prefix, manifest=_manifest(a))
    key, _ = generate_keypair(tmp_path / "k")
    with pytest.raises(SigningError, match="records no hash of the graph's external weights"):
        sign_engines(old_prefix, a, key)
    old_expert = _to_format_1(engines, tmp_path / "old-expert", "main_expert")  # weights inside its .onnx
    TensorRTBackend(a, old_expert, manifest=_manifest(a)).close()
    assert sign_engines(old_expert, a, key).startswith("sha256:")
