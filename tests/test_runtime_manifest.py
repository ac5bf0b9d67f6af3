"""Manifest loading: valid folders load; stale, damaged or incomplete ones are refused by name."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

try:
    from tests.fake_artifacts import (
        build_fake_artifacts,
        cached_fake_artifacts,
        load_manifest_dict,
        write_manifest_dict,
    )
except ImportError:
    from fake_artifacts import build_fake_artifacts, cached_fake_artifacts, load_manifest_dict, write_manifest_dict

from runtime.backend import BackendError
from runtime.manifest import Manifest, ManifestError


@pytest.fixture()
def artifacts(tmp_path):
    dst = tmp_path / "art"
    shutil.copytree(cached_fake_artifacts(), dst)
    return dst


def test_valid_folder_loads_with_typed_accessors(artifacts):
    m = Manifest.load(artifacts)
    assert m.dims.chunk_size == 6 and m.dims.action_dim == 2 and m.dims.delta_time == 0.5
    assert m.camera_keys == ("observation.images.top",)
    assert (m.image.height, m.image.width, m.image.pad_side) == (32, 32, "left_top")
    assert m.state_norm.mean.dtype == np.float32 and m.state_norm.mean.shape == (2,)
    assert m.action_bounds.low.tolist() == pytest.approx([-0.08, -0.08])
    assert m.gate_threshold("drift") == 0.05 and m.gate_threshold("consistency") == 0.1
    assert m.graphs["prefix"].input("lang_mask").dtype == "bool"
    assert m.graphs["main_expert"].output("v_t").shape == (1, 6, 4)
    assert m.plan_shape == (1, 6, 4)


@pytest.mark.parametrize("version", [0, 1, 2, "3", None, 3.0])
def test_other_format_version_is_refused_with_reexport_hint(artifacts, version):
    raw = load_manifest_dict(artifacts)
    raw["format_version"] = version
    write_manifest_dict(artifacts, raw)
    with pytest.raises(ManifestError, match=r"format_version.*make export"):
        Manifest.load(artifacts)


@pytest.mark.parametrize("version", [4, 5, 99])
def test_a_newer_format_version_says_to_update_the_runtime(artifacts, version):
    """A folder from a newer exporter: re-exporting with that exporter would write the same format again."""
    raw = load_manifest_dict(artifacts)
    raw["format_version"] = version
    write_manifest_dict(artifacts, raw)
    with pytest.raises(ManifestError, match=rf"format_version is {version}, newer .* update the runtime") as info:
        Manifest.load(artifacts)
    assert "make export" not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("path", [
    ("dims",), ("dims", "chunk_size"), ("dims", "delta_time"), ("cameras",), ("state_key",),
    ("image_preprocess", "pad_side"), ("normalization", "action"), ("normalization", "action", "std"),
    ("action_bounds", "high"), ("state_bounds",), ("tokenizer", "max_length"), ("delta_input",),
    ("graphs", "delta_expert"), ("graphs", "prefix", "outputs"), ("gate", "consistency"), ("files",),
])
def test_missing_key_is_named(artifacts, path):
    raw = load_manifest_dict(artifacts)
    node = raw
    for k in path[:-1]:
        node = node[k]
    del node[path[-1]]
    write_manifest_dict(artifacts, raw)
    with pytest.raises(ManifestError) as exc:
        Manifest.load(artifacts)
    assert path[-1] in str(exc.value)


@pytest.mark.parametrize("fname", ["prefix.onnx", "main_expert.onnx", "delta_expert.onnx", "tokenizer.json"])
def test_flipped_byte_is_refused_naming_file(artifacts, fname):
    path = artifacts / fname
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ManifestError) as exc:
        Manifest.load(artifacts)
    assert fname in str(exc.value) and "re-export" in str(exc.value)
    Manifest.load(artifacts, verify_hashes=False)  # the check, not the parser, refused it


def test_truncated_or_missing_file_is_refused(artifacts):
    (artifacts / "main_expert.onnx").write_bytes(b"")
    with pytest.raises(ManifestError, match="main_expert.onnx"):
        Manifest.load(artifacts)
    (artifacts / "main_expert.onnx").unlink()
    with pytest.raises(ManifestError, match="main_expert.onnx.*missing"):
        Manifest.load(artifacts)


def test_used_file_must_be_hash_listed(artifacts):
    raw = load_manifest_dict(artifacts)
    del raw["files"]["tokenizer.json"]
    write_manifest_dict(artifacts, raw)
    with pytest.raises(ManifestError, match="tokenizer.json.*not listed"):
        Manifest.load(artifacts)


def test_wrong_io_name_is_refused(artifacts):
    raw = load_manifest_dict(artifacts)
    raw["graphs"]["main_expert"]["inputs"][0]["name"] = "noisy_actions"
    write_manifest_dict(artifacts, raw)
    with pytest.raises(ManifestError, match="graphs.main_expert.inputs"):
        Manifest.load(artifacts)


def test_graph_shape_must_agree_with_dims(artifacts):
    raw = load_manifest_dict(artifacts)
    raw["dims"]["prefix_len"] += 1
    write_manifest_dict(artifacts, raw)
    with pytest.raises(ManifestError, match="prefix_k"):
        Manifest.load(artifacts)


@pytest.mark.parametrize("edit, needle", [
    (lambda r: r["dims"].__setitem__("chunk_size", 0), "dims.chunk_size"),
    (lambda r: r["dims"].__setitem__("n_action_steps", 99), "n_action_steps"),
    (lambda r: r["normalization"]["action"].__setitem__("mean", [0.0]), "normalization.action.mean"),
    (lambda r: r["action_bounds"].__setitem__("low", [1.0, 1.0]), "action_bounds.low"),
    (lambda r: r["graphs"]["prefix"]["inputs"][1].__setitem__("dtype", "int8"), "dtype"),
    (lambda r: r["gate"]["drift"].__setitem__("default_threshold", "high"), "gate.drift.default_threshold"),
    (lambda r: r.__setitem__("delta_input", "zeros"), "delta_input"),
    (lambda r: r.__setitem__("safety", {"stop_action": [5.0, 0.0]}), "safety.stop_action"),
    (lambda r: r["dims"].__setitem__("vocab_size", 0), "dims.vocab_size"),
    (lambda r: r["dims"].__setitem__("vocab_size", 10.0), "dims.vocab_size"),
    (lambda r: (r["dims"].update(vocab_size=4), r["tokenizer"].update(pad_token_id=4)), "tokenizer.pad_token_id"),
])
def test_bad_values_are_named(artifacts, edit, needle):
    raw = load_manifest_dict(artifacts)
    edit(raw)
    write_manifest_dict(artifacts, raw)
    with pytest.raises(ManifestError, match=needle.replace(".", r"\.")):
        Manifest.load(artifacts)


def test_not_json_and_no_manifest(tmp_path):
    with pytest.raises(ManifestError, match="no manifest.json"):
        Manifest.load(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.load(tmp_path)


def test_backend_refuses_graph_that_disagrees_with_manifest(tmp_path):
    """A graph file swapped for another (hash re-listed) is caught by the session I/O check."""
    from runtime.backend_onnxruntime import OnnxRuntimeBackend

    art = build_fake_artifacts(tmp_path / "a")
    raw = load_manifest_dict(art)
    # point main_expert at the delta graph and list its hash: names differ from the contract's
    raw["graphs"]["main_expert"]["file"] = "delta_expert.onnx"
    write_manifest_dict(art, raw)
    m = Manifest.load(art)
    with pytest.raises(BackendError, match=r"graph 'main_expert' has \w+ '\w+', which the manifest does not list"):
        OnnxRuntimeBackend(art, m)
    assert json.loads((art / "manifest.json").read_text())["format_version"] == 3


@pytest.mark.parametrize("default", [None, "drift", "consistency", "any:drift,consistency", "any:drift,interval:6",
                                     "any:consistency,interval:3", "any:interval:1,drift,consistency"])
def test_gate_default_is_the_policys_default_gate(artifacts, default):
    from runtime.policy import EdgePolicy

    raw = load_manifest_dict(artifacts)
    raw["gate"].pop("default", None)
    if default is not None:
        raw["gate"]["default"] = default
    write_manifest_dict(artifacts, raw)
    m = Manifest.load(artifacts)
    assert m.default_gate == (default or "drift")  # folders exported before gate.default existed: drift
    p = EdgePolicy(artifacts)
    expected = {"drift": "drift:0.05", "consistency": "consistency:0.1",
                "any:drift,consistency": "any:drift:0.05,consistency:0.1",
                "any:drift,interval:6": "any:drift:0.05,interval:6",
                "any:consistency,interval:3": "any:consistency:0.1,interval:3",
                "any:interval:1,drift,consistency": "any:interval:1,drift:0.05,consistency:0.1"}[default or "drift"]
    assert p.gate.spec == expected
    assert EdgePolicy(artifacts, gate="interval:3").gate.spec == "interval:3"  # explicit wins


def test_capped_default_gate_fires_on_drift_or_plan_age(artifacts):
    """`any:drift,interval:6` is an AnyGate: the calibrated drift threshold, and the cap at 6 executed actions."""
    from runtime.gate import AnyGate, DriftGate, GateInputs, IntervalGate
    from runtime.policy import EdgePolicy

    raw = load_manifest_dict(artifacts)
    raw["gate"]["default"] = "any:drift,interval:6"
    write_manifest_dict(artifacts, raw)
    gate = EdgePolicy(artifacts).gate
    assert isinstance(gate, AnyGate)
    drift, cap = gate.parts
    assert isinstance(drift, DriftGate) and drift.threshold == 0.05
    assert isinstance(cap, IntervalGate) and cap.k == 6
    e = np.zeros(48, dtype=np.float32)
    e[0] = 1.0
    quiet = {"queue_left": 4, "obs_emb": e, "plan_obs_emb": e}
    assert not gate.decide(GateInputs(ticks_since_plan=5, **quiet)).resample
    assert gate.decide(GateInputs(ticks_since_plan=6, **quiet)).reason == "interval"


@pytest.mark.parametrize("bad", ["pixel", "drift:0.1", "", 3, "interval:6", "any:drift:0.1,interval:6",
                                 "any:drift,drift", "any:drift,interval:2,interval:3", "any:drift,interval:0",
                                 "any:drift,interval:7", "any:jump,interval:3", "jump", "any:drift,pixel"])
def test_gate_default_outside_the_cls_gates_is_refused_by_name(artifacts, bad):
    """Bad grammar (schema), a cap beyond n_action_steps (6 here) and jump without gate.jump (cross-section)."""
    raw = load_manifest_dict(artifacts)
    raw["gate"]["default"] = bad
    write_manifest_dict(artifacts, raw)
    with pytest.raises(ManifestError, match="gate.default"):
        Manifest.load(artifacts)


def test_jump_default_needs_the_jump_calibration(artifacts):
    raw = load_manifest_dict(artifacts)
    raw["gate"]["default"] = "any:jump,interval:3"
    raw["gate"]["jump"] = {"stats": {"p95": 0.02}, "default_threshold": 0.02, "horizon": 2}
    write_manifest_dict(artifacts, raw)
    assert Manifest.load(artifacts).default_gate == "any:jump,interval:3"


@pytest.mark.parametrize("default, metric", [("consistency", "consistency"), ("any:drift,consistency", "drift"),
                                             ("any:consistency,interval:3", "consistency"),
                                             ("any:jump,interval:3", "jump")])
def test_a_default_gate_part_without_its_threshold_is_refused_at_load(artifacts, default, metric):
    """gate.default takes each CLS part's threshold from gate.<part>.default_threshold: a null there would load
    and only fail later, in EdgePolicy, with a plain ValueError. Refused at load, naming the field."""
    raw = load_manifest_dict(artifacts)
    raw["gate"]["jump"] = {"stats": {"p95": 0.02}, "default_threshold": 0.02, "horizon": 2}
    raw["gate"]["default"] = default
    raw["gate"][metric]["default_threshold"] = None
    write_manifest_dict(artifacts, raw)
    with pytest.raises(ManifestError, match=rf"gate\.{metric}\.default_threshold.*{default}"):
        Manifest.load(artifacts)
    raw["gate"].pop("default")  # no recommendation written: the implicit drift default is the policy's concern
    write_manifest_dict(artifacts, raw)
    Manifest.load(artifacts)


@pytest.mark.parametrize("metric", ["drift", "consistency", "jump"])
def test_a_calibration_horizon_beyond_the_plan_is_refused_by_name(artifacts, metric):
    """Pairs further apart than n_action_steps (6 here) cannot come from one plan: such a horizon is refused."""
    raw = load_manifest_dict(artifacts)
    raw["gate"]["jump"] = {"stats": {"p95": 0.02}, "default_threshold": 0.02, "horizon": 2}
    for h, ok in ((6, True), (7, False), (500, False)):
        raw["gate"][metric]["horizon"] = h
        write_manifest_dict(artifacts, raw)
        if ok:
            assert Manifest.load(artifacts).gate_calibration[metric].horizon == h
        else:
            with pytest.raises(ManifestError, match=rf"gate\.{metric}\.horizon.*n_action_steps"):
                Manifest.load(artifacts)


def test_a_manifest_threshold_that_could_never_fire_is_refused(artifacts):
    """Cosine distance is at most 2 and a gate fires on distance > threshold: 2 is refused like the spec's."""
    raw = load_manifest_dict(artifacts)
    raw["gate"]["consistency"]["default_threshold"] = 2.0
    write_manifest_dict(artifacts, raw)
    with pytest.raises(ManifestError, match="gate.consistency.default_threshold"):
        Manifest.load(artifacts)
