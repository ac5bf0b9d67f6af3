"""A key twice in one JSON object is refused in every record the runtime trusts, in one line naming the file
and the key (Python keeps the last value, other JSON tools the first: a signed file must mean one thing), and
the writers never produce one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from export.signing import write_manifest
from runtime.artifact_identity import IdentityError
from runtime.engine_identity import RECORD, verify_engine_record, write_engine_record
from runtime.fingerprint import EngineFingerprint, FingerprintError
from runtime.manifest import GRAPH_NAMES, Manifest, ManifestError
from runtime.strict_json import DuplicateKeyError, strict_dumps, strict_loads
from runtime.tokenizer import InstructionTokenizer
from tests.fake_artifacts import cached_fake_artifacts
from tests.test_adversarial_engines import fake_engine_folder

DECOY = "first-value"


def _objects(value: Any, path: tuple = ()) -> list[tuple]:
    """The path of every non-empty JSON object inside `value` (list indices and keys)."""
    found = [path] if isinstance(value, dict) and value else []
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for k, v in children:
        found += _objects(v, (*path, k))
    return found


def _dump_with_twin(value: Any, target: tuple, key: str, path: tuple = ()) -> str:
    """JSON text of `value` where the object at `target` lists `key` twice: a decoy value first, then its own."""
    if isinstance(value, dict):
        items = [f"{json.dumps(k)}: {_dump_with_twin(v, target, key, (*path, k))}" for k, v in value.items()]
        if path == target:
            items.insert(0, f"{json.dumps(key)}: {json.dumps(DECOY)}")
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_dump_with_twin(v, target, key, (*path, i)) for i, v in enumerate(value)) + "]"
    return json.dumps(value)


def _twin_somewhere(path: Path, data: st.DataObject) -> str:
    """Rewrite the JSON file at `path` with one key of one of its objects (drawn) listed twice; return the key."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    target = data.draw(st.sampled_from(_objects(raw)), label="object")
    node = raw
    for step in target:
        node = node[step]
    key = data.draw(st.sampled_from(sorted(node)), label="key")
    path.write_text(_dump_with_twin(raw, target, key), encoding="utf-8")
    return key


def _refusal(exc: BaseException, file: str, key: str) -> None:
    text = str(exc)
    assert "\n" not in text and file in text and repr(key[:80]) in text and "twice" in text, text


@pytest.fixture(scope="module")
def engine_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    _art, engines, m = fake_engine_folder(tmp_path_factory.mktemp("dup"))
    write_engine_record(engines, m.digest, GRAPH_NAMES)
    return engines, m


def _copy(src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("case") / src.name
    shutil.copytree(src, dst)
    return dst


_PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_PROPERTY
@given(data=st.data())
def test_manifest_with_a_key_twice_is_refused_naming_file_and_key(tmp_path_factory, data):
    art = _copy(cached_fake_artifacts(), tmp_path_factory)
    key = _twin_somewhere(art / "manifest.json", data)
    with pytest.raises(ManifestError) as err:
        Manifest.load(art)
    _refusal(err.value, "manifest.json", key)


@_PROPERTY
@given(data=st.data())
def test_engine_record_with_a_key_twice_is_refused_naming_file_and_key(tmp_path_factory, engine_folder, data):
    engines = _copy(engine_folder[0], tmp_path_factory)
    key = _twin_somewhere(engines / RECORD, data)
    with pytest.raises(IdentityError) as err:
        verify_engine_record(engines, engine_folder[1].digest, GRAPH_NAMES)
    _refusal(err.value, RECORD, key)


@_PROPERTY
@given(data=st.data(), graph=st.sampled_from(GRAPH_NAMES))
def test_fingerprint_with_a_key_twice_is_refused_naming_file_and_key(tmp_path_factory, engine_folder, data, graph):
    engines = _copy(engine_folder[0], tmp_path_factory)
    key = _twin_somewhere(engines / f"{graph}.fingerprint.json", data)
    with pytest.raises(FingerprintError) as err:
        EngineFingerprint.read(engines / f"{graph}.fingerprint.json")
    _refusal(err.value, f"{graph}.fingerprint.json", key)


@_PROPERTY
@given(data=st.data())
def test_tokenizer_with_a_key_twice_is_refused_naming_file_and_key(tmp_path_factory, data):
    art = _copy(cached_fake_artifacts(), tmp_path_factory)
    m = Manifest.load(art)
    key = _twin_somewhere(m.tokenizer_path, data)
    with pytest.raises(ManifestError) as err:
        InstructionTokenizer(m.tokenizer_path, m.tokenizer)
    _refusal(err.value, m.tokenizer.file, key)


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                     | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
                     max_leaves=20)


@given(_JSON)
def test_strict_reading_accepts_every_json_the_writer_makes(value):
    assert strict_loads(strict_dumps(value, indent=2)) == value


@pytest.mark.parametrize("clash", [{1: "a", "1": "b"}, {True: "a", "true": "b"}, {"x": {None: 1, "null": 2}}])
def test_writers_never_write_a_key_twice(tmp_path, clash):
    """json.dumps turns 1 / True / None keys into "1" / "true" / "null": next to that string they would repeat."""
    with pytest.raises(DuplicateKeyError):
        strict_dumps(clash)
    with pytest.raises(DuplicateKeyError):
        write_manifest(tmp_path, {"format_version": 3, "extra": clash})
    assert not (tmp_path / "manifest.json").exists()
