"""Adversarial manifests (issue #18): every wrong type, range, size or nesting is one ManifestError naming the key.

Each case edits a valid fake manifest, re-stamps its digest as an exporter would (so the schema, not the
identity check, is what refuses it) and expects a one-line `ManifestError` that names the key path. A
property test throws random values at random keys: the loader either accepts the folder or raises
ManifestError, never anything else.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

try:
    from tests.fake_artifacts import cached_fake_artifacts, load_manifest_dict, write_manifest_dict
except ImportError:
    from fake_artifacts import cached_fake_artifacts, load_manifest_dict, write_manifest_dict

from runtime.manifest import MAX_MANIFEST_BYTES, Manifest, ManifestError
from runtime.manifest_schema import json_schema

ROOT = Path(__file__).resolve().parents[1]
INT_DIMS = ("chunk_size", "n_action_steps", "num_steps", "action_dim", "state_dim", "max_action_dim",
            "max_state_dim", "lang_len", "prefix_len", "num_layers", "kv_heads", "head_dim", "num_cls_prefix",
            "num_cls_suffix", "cls_dim")
ROBOT = {"fps": 30, "action_names": ["x", "y"], "state_names": ["x", "y"],
         "cameras": {"observation.images.top": {"height": 64, "width": 64, "channels": 3}}}


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    dst = tmp_path / "art"
    shutil.copytree(cached_fake_artifacts(), dst)
    return dst


def _set(raw: dict, path: str, value: object) -> None:
    """Set `a.b[2].c`-style paths; `value` DELETE removes the key."""
    parts = path.replace("[", ".[").split(".")
    node = raw
    for p in parts[:-1]:
        node = node[int(p[1:-1])] if p.startswith("[") else node[p]
    last = parts[-1]
    key: int | str = int(last[1:-1]) if last.startswith("[") else last
    if value is DELETE:
        del node[key]
    else:
        node[key] = value


DELETE = object()


def _refused(folder: Path, edit, needle: str, restamp: bool = True) -> str:
    raw = load_manifest_dict(folder)
    edit(raw)
    write_manifest_dict(folder, raw, restamp=restamp)
    with pytest.raises(ManifestError) as exc:
        Manifest.load(folder)
    msg = str(exc.value)
    assert needle in msg, msg
    assert "\n" not in msg and len(msg) < 600, msg
    return msg


# ------------------------------------------------------------------ dims: types and ranges
@pytest.mark.parametrize("value", ["5", 2**40, -1, True, 1.5])
@pytest.mark.parametrize("key", INT_DIMS)
def test_dims_wrong_type_or_range(folder, key, value):
    _refused(folder, lambda r: _set(r, f"dims.{key}", value), f"dims.{key}")


# ------------------------------------------------------------------ other sections
SCHEMA_CASES = [
    ("dims.delta_time", "0.5"), ("dims.delta_time", 2.0),
    ("normalization.action.eps", 0.0), ("normalization.action.eps", -1e-8), ("normalization.action.eps", "1e-8"),
    ("normalization.action.std", [-0.03, 0.03]),
    ("normalization.action.std", [0.0, 0.03]), ("normalization.action.std", ["a", 0.03]),
    ("normalization.action.std", None), ("normalization.action.mode", "zscore"),
    ("normalization.observation.state.mean", "0.5"), ("action_bounds.low", [0.09, -0.08]), ("action_bounds.low", "low"), ("state_bounds.high", []),
    ("state_key", 5), ("state_key", ""), ("cameras", []), ("cameras", {"key": "x"}),
    ("cameras[0].channels", 4), ("cameras[0].height", 0), ("cameras[0].key", "k" * 10_000),
    ("cameras[0].width", "64"), ("image_preprocess.pad_value", 1e9), ("image_preprocess.resize", "stretch"),
    ("image_preprocess.height", -32), ("tokenizer.file", "../tokenizer.json"), ("tokenizer.file", "/etc/passwd"),
    ("tokenizer.file", "sub/tokenizer.json"), ("tokenizer.file", ".hidden"), ("tokenizer.pad_token_id", -1),
    ("tokenizer.max_length", "8"), ("tokenizer.append_newline", "yes"), ("tokenizer.padding_side", "middle"),
    ("graphs.prefix.file", "../prefix.onnx"), ("graphs.prefix.file", "/etc/passwd"),
    ("graphs.prefix.data_file", "../../etc/shadow"), ("graphs.prefix.inputs[0].shape", [2**40]),
    ("graphs.prefix.inputs[0].shape", []), ("graphs.prefix.inputs[0].shape", [1.5]),
    ("graphs.prefix.inputs[0].dtype", "float64"), ("graphs.prefix.inputs", "images"),
    ("graphs.main_expert.outputs", []), ("gate.drift.default_threshold", -0.1),
    ("gate.drift.default_threshold", 5.0), ("gate.drift.default_threshold", "0.1"), ("gate.drift.stats", {"p50": "a"}),
    ("gate.consistency", None), ("files", {}), ("files.prefix.onnx.sha256", "xyz"), ("files.prefix.onnx.bytes", -1),
    ("files.prefix.onnx.extra", 1), ("delta_input", 5), ("safety.stop_action", [5.0, 0.0]),
    ("identity.digest", "md5:abc"), ("identity", DELETE), ("identity.signature", {"algorithm": "rsa"}),
    ("graphs.extra_graph", {}),
    # what the runtime feeds the graphs: another producer's pixel range or resampling is refused, not fed wrongly
    ("image_preprocess.input_range", [-1.0, 1.0]), ("image_preprocess.input_range", [0.0, 255.0]),
    ("image_preprocess.input_range", [0.0]), ("image_preprocess.input_range", "0..1"),
    ("image_preprocess.interpolation", "nearest"), ("image_preprocess.interpolation", 1),
    # finite JSON that the runtime's float32 arrays cannot hold: inf bounds, a 0 std, a span that overflows
    ("action_bounds.high", [1e39, 0.08]), ("state_bounds.high", [3.5e38, 1.0]), ("safety.stop_action", [1e39, 0.0]),
    ("normalization.action.std", [1e-50, 0.03]), ("normalization.action.mean", [-1e39, 0.0]),
    ("normalization.action", {"mode": "min_max", "min": [-3e38, -1.0], "max": [3e38, 1.0]}),
    ("normalization.action", {"mode": "min_max", "min": [1.0, -1.0], "max": [1.00000001, 1.0]}),
    ("gate.drift.stats", {"p50": 1e39}), ("gate.metric", "euclidean"),
    # keys one observation dict must carry side by side
    ("cameras[0].key", "task"), ("cameras[0].key", "action"), ("cameras[0].key", "observation.state"),
    ("state_key", "task"),
]


@pytest.mark.parametrize("path, value", SCHEMA_CASES, ids=[f"{p}={str(v)[:20]}" for p, v in SCHEMA_CASES])
def test_section_wrong_type_or_range(folder, path, value):
    def edit(raw: dict) -> None:
        if path.startswith("files.prefix.onnx."):
            _set(raw["files"]["prefix.onnx"], path.rsplit(".", 1)[1], value)
        elif path.startswith("safety."):
            raw["safety"] = {"stop_action": value}
        elif path.startswith("normalization.observation.state."):
            raw["normalization"]["observation.state"][path.rsplit(".", 1)[1]] = value
        else:
            _set(raw, path, value)

    msg = _refused(folder, edit, "", restamp=not path.startswith("identity"))
    head = path.split(".")[0].split("[")[0]
    assert head in msg or (head == "files" and "files" in msg), msg


def test_files_entry_escaping_the_folder_is_refused_by_name(folder):
    msg = _refused(folder, lambda r: r["files"].__setitem__("../outside.onnx", r["files"]["prefix.onnx"]),
                   "../outside.onnx")
    assert "files" in msg


@pytest.mark.parametrize("name", ["/etc/passwd", "..", "a/../../b", "C:\\x", "x\x00y"])
def test_absolute_or_dotted_file_names_are_refused(folder, name):
    _refused(folder, lambda r: r["files"].__setitem__(name, r["files"]["prefix.onnx"]), "files")


@pytest.mark.parametrize("edit, needle", [
    (lambda r: r.__setitem__("robot", {**ROBOT, "fps": 0}), "robot.fps"),
    (lambda r: r.__setitem__("robot", {**ROBOT, "fps": 1001}), "robot.fps"),
    (lambda r: r.__setitem__("robot", {**ROBOT, "fps": "30"}), "robot.fps"),
    (lambda r: r.__setitem__("robot", {**ROBOT, "action_names": ["x"]}), "robot.action_names"),
    (lambda r: r.__setitem__("robot", {**ROBOT, "state_names": "xy"}), "robot.state_names"),
    (lambda r: r.__setitem__("robot", {**ROBOT, "cameras": {"observation.images.side": ROBOT["cameras"][
        "observation.images.top"]}}), "robot.cameras"),
    (lambda r: r.__setitem__("robot", {**ROBOT, "cameras": {"observation.images.top": {"height": 0, "width": 1,
                                                                                       "channels": 3}}}), "robot.cameras"),
])
def test_robot_section_is_validated(folder, edit, needle):
    _refused(folder, edit, needle)


def test_robot_section_is_accepted_when_consistent(folder):
    raw = load_manifest_dict(folder)
    raw["robot"] = ROBOT
    write_manifest_dict(folder, raw)
    assert Manifest.load(folder).robot.fps == 30


# ------------------------------------------------------------------ the file itself
@pytest.mark.parametrize("content, needle", [
    (b"[1, 2]", "JSON object"),
    (b'{"format_version": 2, "x": NaN}', "not valid JSON"),
    (b'{"format_version": 2, "x": Infinity}', "not valid JSON"),
    (b'{"format_version": 2, "model": {"config": {"lr": 1e400}}}', "not finite"),
    (b'{"format_version": 2, "dims": {"delta_time": -1e400}}', "not finite"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[" * 200_000 + b"]" * 200_000, "manifest.json"),
    (b'{"a":' * 40 + b"1" + b"}" * 40, "nests deeper"),
    (b'{"format_version": 1}', "re-export"),
    (b'{"format_version": 2.0}', "format_version"),
    (b'{"format_version": true}', "format_version"),
])
def test_malformed_manifest_file(folder, content, needle):
    (folder / "manifest.json").write_bytes(content)
    with pytest.raises(ManifestError, match=needle):
        Manifest.load(folder)


def test_oversized_manifest_is_refused_before_parsing(folder):
    (folder / "manifest.json").write_bytes(b" " * (MAX_MANIFEST_BYTES + 1))
    with pytest.raises(ManifestError, match="more than"):
        Manifest.load(folder)


def test_several_violations_are_reported_in_one_bounded_line(folder):
    msg = _refused(folder, lambda r: [r["dims"].__setitem__(k, "x") for k in INT_DIMS], "and")
    assert msg.count("dims.") >= 3 and "more" in msg


# ------------------------------------------------------------------ property: nothing but ManifestError
LEAVES = ["dims.num_steps", "dims.delta_time", "normalization.action.std", "normalization.action.eps",
          "action_bounds.low", "action_bounds.high", "cameras[0].height", "tokenizer.file", "graphs.prefix.file",
          "graphs.prefix.inputs[0].shape", "gate.drift.default_threshold", "safety.stop_action", "state_key",
          "image_preprocess.pad_side", "delta_input", "cameras", "graphs.main_expert", "files"]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(LEAVES), value=JSON_VALUES)
def test_random_values_at_random_keys_only_raise_manifest_error(folder, path, value):
    raw = load_manifest_dict(cached_fake_artifacts())
    if path == "safety.stop_action":
        raw.setdefault("safety", {})
    _set(raw, path, value)
    write_manifest_dict(folder, raw)
    try:
        m = Manifest.load(folder)
    except ManifestError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 800
        return
    assert m.dims.num_steps <= 1000 and (m.action_norm.std is None or (m.action_norm.std > 0).all())


# ------------------------------------------------------------------ the schema is the contract document's source
def test_image_preprocess_descriptions_the_runtime_implements_are_accepted(folder):
    """Older producers omit input_range / interpolation; the exporter writes exactly what the runtime does."""
    raw = load_manifest_dict(folder)
    for value in ({}, {"input_range": [0.0, 1.0], "interpolation": "bilinear"}, {"input_range": [0, 1]}):
        raw["image_preprocess"].pop("input_range", None)
        raw["image_preprocess"].pop("interpolation", None)
        raw["image_preprocess"].update(value)
        write_manifest_dict(folder, raw)
        assert Manifest.load(folder).image.height == raw["image_preprocess"]["height"]


def test_schema_file_matches_the_code():
    on_disk = json.loads((ROOT / "docs" / "manifest.schema.json").read_text())
    assert on_disk == json.loads(json.dumps(json_schema())), \
        "regenerate: python -m runtime.manifest_schema > docs/manifest.schema.json"


def test_contract_page_names_every_schema_key():
    page = (ROOT / "docs" / "10-artifact-contract.md").read_text()
    assert "manifest.schema.json" in page
    for key in json_schema()["properties"]:
        assert f'"{key}"' in page, f"docs/10 does not document manifest key {key!r}"
    for model, spec in json_schema()["$defs"].items():  # and every key inside a section
        for key in spec.get("properties", {}):
            assert f'"{key}"' in page or f"`{key}`" in page, f"docs/10 does not document {model}.{key}"
