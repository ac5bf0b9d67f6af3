"""Engine fingerprint: round trip, field validation, and mismatch detection (runs without TensorRT)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.fingerprint import (
    EngineFingerprint,
    FingerprintError,
    FingerprintMismatch,
    sha256_bytes,
    sha256_file,
)

HEX = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
NAME = st.text(min_size=1, max_size=20)
CC = st.tuples(st.integers(0, 12), st.integers(0, 9))

fingerprints = st.builds(
    EngineFingerprint,
    graph=st.sampled_from(["prefix", "main_expert", "delta_expert"]),
    onnx_sha256=HEX,
    tensorrt_version=st.from_regex(r"10\.[0-9]{1,2}\.[0-9]\.[0-9]{1,2}", fullmatch=True),
    gpu_name=NAME,
    compute_capability=CC,
    precision=st.sampled_from(["fp32", "fp16", "bf16"]),
    strongly_typed=st.booleans(),
    builder_optimization_level=st.integers(0, 5),
    workspace_bytes=st.integers(1, 1 << 40),
    build_seconds=st.floats(0, 1e5, allow_nan=False),
    engine_bytes=st.integers(0, 1 << 34),
    engine_sha256=HEX,
    data_sha256=st.none() | HEX,
)


def _example() -> EngineFingerprint:
    return EngineFingerprint(
        graph="prefix",
        onnx_sha256="a" * 64,
        tensorrt_version="10.3.0",
        gpu_name="Orin",
        compute_capability=(8, 7),
        precision="fp16",
        strongly_typed=True,
        builder_optimization_level=3,
        workspace_bytes=4 << 30,
        build_seconds=12.3,
        engine_bytes=3,
        engine_sha256=sha256_bytes(b"abc"),
    )


def test_json_keys_are_exactly_the_contract(tmp_path: Path) -> None:
    path = tmp_path / "prefix.fingerprint.json"
    _example().write(path)
    data = json.loads(path.read_text())
    assert list(data) == [
        "format_version",
        "graph",
        "onnx_sha256",
        "tensorrt_version",
        "gpu_name",
        "compute_capability",
        "precision",
        "strongly_typed",
        "builder_optimization_level",
        "workspace_bytes",
        "build_seconds",
        "engine_bytes",
        "engine_sha256",
        "data_sha256",
    ]
    assert data["compute_capability"] == [8, 7] and data["format_version"] == 2 and data["data_sha256"] is None


@settings(max_examples=60, deadline=None)
@given(fp=fingerprints)
def test_round_trip(tmp_path_factory: pytest.TempPathFactory, fp: EngineFingerprint) -> None:
    path = tmp_path_factory.mktemp("fp") / "g.fingerprint.json"
    fp.write(path)
    assert EngineFingerprint.read(path) == fp
    fp.check_against(fp.onnx_sha256, fp.tensorrt_version, fp.gpu_name, list(fp.compute_capability),
                     manifest_data_sha256=fp.data_sha256)


FLIPPABLE = ["onnx", "data", "trt", "gpu", "cc"]


@settings(max_examples=80, deadline=None)
@given(fp=fingerprints, which=st.sampled_from(FLIPPABLE), data=st.data())
def test_any_single_difference_is_detected_and_named(fp: EngineFingerprint, which: str, data: st.DataObject) -> None:
    running = {"onnx": fp.onnx_sha256, "data": fp.data_sha256, "trt": fp.tensorrt_version, "gpu": fp.gpu_name,
               "cc": fp.compute_capability}
    if which == "cc":
        running["cc"] = data.draw(CC.filter(lambda c: c != fp.compute_capability))
    elif which == "data":  # other weights, or external weights appearing / disappearing
        running["data"] = data.draw((st.none() | HEX).filter(lambda s: s != fp.data_sha256))
    else:
        running[which] = data.draw(st.text(min_size=1, max_size=64).filter(lambda s: s != running[which]))
    with pytest.raises(FingerprintMismatch) as info:
        fp.check_against(running["onnx"], running["trt"], running["gpu"], running["cc"],  # type: ignore[arg-type]
                         manifest_data_sha256=running["data"])  # type: ignore[arg-type]
    message = str(info.value)
    assert "make engine" in message
    label = {"onnx": "ONNX sha256", "data": "external weights", "trt": "TensorRT", "gpu": "GPU",
             "cc": "compute capability"}[which]
    assert label in message
    assert len(fp.differences(running["onnx"], running["trt"], running["gpu"], running["cc"],  # type: ignore[arg-type]
                              manifest_data_sha256=running["data"])) == 1  # type: ignore[arg-type]


def test_all_differences_reported_together() -> None:
    fp = _example()
    with pytest.raises(FingerprintMismatch) as info:
        fp.check_against("b" * 64, "10.7.0", "NVIDIA H100", (9, 0), manifest_data_sha256="c" * 64)
    text = str(info.value)
    for part in ("ONNX sha256", "external weights", "TensorRT 10.3.0", "GPU 'Orin'", "compute capability 8.7"):
        assert part in text


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(EngineFingerprint)])
def test_missing_field_is_named(tmp_path: Path, field: str) -> None:
    data = _example().to_dict()
    del data[field]
    path = tmp_path / "f.json"
    path.write_text(json.dumps(data))
    with pytest.raises(FingerprintError, match=repr(field)):
        EngineFingerprint.read(path)


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("compute_capability", [8]),
        ("compute_capability", "8.7"),
        ("compute_capability", [8, True]),
        ("strongly_typed", 1),
        ("workspace_bytes", True),
        ("engine_bytes", 1.5),
        ("build_seconds", "1"),
        ("graph", 3),
        ("format_version", "1"),
        # values of the right type that no engine has
        ("workspace_bytes", -5), ("engine_bytes", -1), ("build_seconds", float("nan")), ("build_seconds", -1.0),
        ("builder_optimization_level", 9), ("engine_sha256", ""), ("onnx_sha256", "XYZ"), ("data_sha256", "ab"),
        ("gpu_name", ""), ("tensorrt_version", "v" * 300),
    ],
)
def test_ill_typed_field_is_named(field: str, bad: object) -> None:
    data = _example().to_dict()
    data[field] = bad
    with pytest.raises(FingerprintError, match=f"field {field!r}"):
        EngineFingerprint.from_dict(data)


def test_unsupported_format_version_and_bad_files(tmp_path: Path) -> None:
    data = _example().to_dict()
    data["format_version"] = 3
    with pytest.raises(FingerprintError, match="format_version 3 is not supported"):
        EngineFingerprint.from_dict(data)
    with pytest.raises(FingerprintError, match="not found"):
        EngineFingerprint.read(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(FingerprintError, match="not valid JSON"):
        EngineFingerprint.read(tmp_path / "bad.json")
    with pytest.raises(FingerprintError, match="JSON object"):
        EngineFingerprint.from_dict([1, 2])
    with pytest.raises(FingerprintError, match="unknown field 'unknown_field'"):
        EngineFingerprint.from_dict({**_example().to_dict(), "unknown_field": 1})
    # every unreadable file is a FingerprintError naming it, never a raw exception
    (tmp_path / "latin1.json").write_bytes('{"graph": "caf\xe9"}'.encode("latin-1"))
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "dir.json").mkdir()
    (tmp_path / "huge.json").write_bytes(b" " * ((1 << 20) + 2))
    for name, needle in (("latin1", "not UTF-8"), ("deep", "not valid JSON"), ("dir", "cannot be read"),
                         ("huge", "larger than")):
        with pytest.raises(FingerprintError, match=needle) as exc:
            EngineFingerprint.read(tmp_path / f"{name}.json")
        assert f"{name}.json" in str(exc.value)


def test_engine_bytes_check_and_hashes(tmp_path: Path) -> None:
    fp = _example()
    fp.check_engine_bytes(b"abc")
    with pytest.raises(FingerprintMismatch, match="does not match its fingerprint"):
        fp.check_engine_bytes(b"abd")
    path = tmp_path / "x.bin"
    path.write_bytes(b"abc" * 1000)
    assert sha256_file(path, chunk=7) == sha256_bytes(b"abc" * 1000)


def test_format_1_reads_without_weights_hash_and_binds_only_graphs_without_external_data(tmp_path: Path) -> None:
    """Format 1 (before data_sha256): still valid where the .onnx hash covers the weights, refused otherwise."""
    data = _example().to_dict()
    del data["data_sha256"]
    data["format_version"] = 1
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = EngineFingerprint.read(tmp_path / "old.json")
    assert old.format_version == 1 and old.data_sha256 is None
    assert list(old.to_dict()) == list(data)  # written back as it was read
    old.check_against(old.onnx_sha256, "10.3.0", "Orin", (8, 7), manifest_data_sha256=None)
    with pytest.raises(FingerprintMismatch, match=r"format_version 1\) records no hash of the graph's external "
                                                   r"weights.*make engine"):
        old.check_against(old.onnx_sha256, "10.3.0", "Orin", (8, 7), manifest_data_sha256="d" * 64)
    with pytest.raises(FingerprintError, match="'data_sha256' is not part of format_version 1"):
        EngineFingerprint.from_dict({**data, "data_sha256": "d" * 64})
    with pytest.raises(FingerprintError, match="field 'data_sha256' must be 64 lower-case hex digits"):
        EngineFingerprint.from_dict(_example().to_dict() | {"data_sha256": 5})
