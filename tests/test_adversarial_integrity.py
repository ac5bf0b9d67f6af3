"""Adversarial artifact folders (issue #18): identity digest, signatures, path confinement, external data.

The acceptance cases: a tampered manifest, a re-hashed graph, a path or symlink escape and an unlisted
external-data file are each refused in one line naming the file; an unsigned or wrongly signed folder is
refused when a key is required.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

try:
    from tests.fake_artifacts import (
        build_fake_artifacts,
        cached_fake_artifacts,
        load_manifest_dict,
        make_observation,
        write_manifest_dict,
    )
except ImportError:
    from fake_artifacts import (
        build_fake_artifacts,
        cached_fake_artifacts,
        load_manifest_dict,
        make_observation,
        write_manifest_dict,
    )

from export.signing import generate_keypair, sign_folder
from export.signing import main as signing_main
from runtime.artifact_identity import artifact_digest, load_public_key
from runtime.cli import main as runtime_main
from runtime.manifest import Manifest, ManifestError
from runtime.policy import EdgePolicy

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
PUB, OTHER_PUB = KEY.public_key(), OTHER.public_key()


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    dst = tmp_path / "art"
    shutil.copytree(cached_fake_artifacts(), dst)
    return dst


@pytest.fixture()
def signed(folder: Path) -> Path:
    write_manifest_dict(folder, load_manifest_dict(folder), signing_key=KEY)
    return folder


def _one_line_naming(exc: pytest.ExceptionInfo, name: str) -> None:
    msg = str(exc.value)
    assert name in msg and "\n" not in msg, msg


def _sha(path: Path) -> dict:
    data = path.read_bytes()
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


# ------------------------------------------------------------------ the acceptance lines
@pytest.mark.parametrize("edit", [
    lambda r: r["normalization"]["action"].__setitem__("std", [9.03, 0.03]),  # pins every action at the bound
    lambda r: r["action_bounds"].__setitem__("high", [315.0, 315.0]),  # widened bounds
    lambda r: r["dims"].__setitem__("num_steps", 1000),
    lambda r: r["gate"]["drift"].__setitem__("default_threshold", 1.99),  # all but disables the gate
    lambda r: r.__setitem__("safety", {"stop_action": [0.08, 0.08]}),
])
def test_tampered_manifest_is_refused_naming_manifest_json(folder, edit):
    raw = load_manifest_dict(folder)
    edit(raw)
    write_manifest_dict(folder, raw, restamp=False)
    with pytest.raises(ManifestError) as exc:
        Manifest.load(folder)
    _one_line_naming(exc, "manifest.json")
    assert "changed after export" in str(exc.value)


def test_rehashed_graph_is_refused(folder):
    """prefix.onnx replaced and its hash re-listed: the digest no longer matches; the line names the manifest and
    the graph whose recorded hash changed."""
    shutil.copyfile(folder / "main_expert.onnx", folder / "prefix.onnx")
    raw = load_manifest_dict(folder)
    raw["files"]["prefix.onnx"] = _sha(folder / "prefix.onnx")
    write_manifest_dict(folder, raw, restamp=False)
    with pytest.raises(ManifestError) as exc:
        Manifest.load(folder)
    _one_line_naming(exc, "manifest.json")
    assert "the recorded hash of prefix.onnx changed" in str(exc.value)
    assert "main_expert.onnx" not in str(exc.value)  # only what changed is named


def test_rehashed_and_restamped_graph_is_refused_by_expected_digest(folder):
    good = Manifest.load(folder).digest
    data = bytearray((folder / "prefix.onnx").read_bytes())
    data[-1] ^= 1
    (folder / "prefix.onnx").write_bytes(bytes(data))
    raw = load_manifest_dict(folder)
    raw["files"]["prefix.onnx"] = _sha(folder / "prefix.onnx")
    write_manifest_dict(folder, raw)  # the attacker recomputes the digest too
    with pytest.raises(ManifestError) as exc:
        Manifest.load(folder, expected_digest=good)
    _one_line_naming(exc, good)
    assert Manifest.load(folder).digest != good  # without a pin it loads: integrity is not authenticity


def test_rehashed_and_restamped_graph_is_refused_by_signature(signed):
    raw = load_manifest_dict(signed)
    raw["files"]["prefix.onnx"] = _sha(signed / "main_expert.onnx")
    shutil.copyfile(signed / "main_expert.onnx", signed / "prefix.onnx")
    write_manifest_dict(signed, raw)  # restamped, but the attacker cannot sign
    with pytest.raises(ManifestError) as exc:
        Manifest.load(signed, trusted_keys=[PUB])
    _one_line_naming(exc, "manifest.json is unsigned")


def test_symlink_escape_is_refused_naming_the_file(folder, tmp_path):
    outside = tmp_path / "outside.onnx"
    shutil.copyfile(folder / "prefix.onnx", outside)  # identical bytes: only confinement can refuse it
    (folder / "prefix.onnx").unlink()
    os.symlink(outside, folder / "prefix.onnx")
    with pytest.raises(ManifestError) as exc:
        Manifest.load(folder)
    _one_line_naming(exc, "prefix.onnx")
    assert "outside the artifact folder" in str(exc.value)


def test_symlink_inside_the_folder_is_allowed(folder):
    (folder / "prefix.onnx").rename(folder / "prefix-real.onnx")
    os.symlink("prefix-real.onnx", folder / "prefix.onnx")
    Manifest.load(folder)


@pytest.mark.parametrize("name", ["tokenizer.json", "prefix.onnx"])
def test_a_symlink_loop_is_refused_naming_the_file(folder, name):
    (folder / name).unlink()
    os.symlink(name, folder / name)  # points at itself
    with pytest.raises(ManifestError) as exc:
        Manifest.load(folder)
    _one_line_naming(exc, name)
    assert "symlink loop" in str(exc.value)


def test_manifest_json_symlinked_outside_is_refused(folder, tmp_path):
    shutil.move(folder / "manifest.json", tmp_path / "m.json")
    os.symlink(tmp_path / "m.json", folder / "manifest.json")
    with pytest.raises(ManifestError) as exc:
        Manifest.load(folder)
    _one_line_naming(exc, "manifest.json")


@pytest.mark.parametrize("name", ["../prefix.onnx", "/etc/passwd", "sub/../../x.onnx"])
def test_path_escape_in_graph_file_is_refused_naming_it(folder, name):
    raw = load_manifest_dict(folder)
    raw["graphs"]["prefix"]["file"] = name
    raw["files"][name] = raw["files"]["prefix.onnx"]
    write_manifest_dict(folder, raw)
    with pytest.raises(ManifestError) as exc:
        Manifest.load(folder)
    _one_line_naming(exc, name)


def _with_external_data(folder: Path, location: str, list_it: bool) -> None:
    model = onnx.load(str(folder / "prefix.onnx"))
    onnx.save_model(model, str(folder / "prefix.onnx"), save_as_external_data=True, location="weights.bin",
                    size_threshold=1024)
    if location != "weights.bin":  # rewrite the location the graph points to
        model = onnx.load(str(folder / "prefix.onnx"), load_external_data=False)
        for t in model.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = location
        onnx.save_model(model, str(folder / "prefix.onnx"))
    raw = load_manifest_dict(folder)
    raw["files"]["prefix.onnx"] = _sha(folder / "prefix.onnx")
    if list_it:
        raw["graphs"]["prefix"]["data_file"] = "weights.bin"
        raw["files"]["weights.bin"] = _sha(folder / "weights.bin")
    write_manifest_dict(folder, raw)


def test_unlisted_external_data_is_refused_naming_the_file(folder):
    _with_external_data(folder, "weights.bin", list_it=False)
    with pytest.raises(ManifestError) as exc:
        Manifest.load(folder)
    _one_line_naming(exc, "weights.bin")
    assert "prefix.onnx" in str(exc.value)


def test_external_data_outside_the_folder_is_refused(folder):
    _with_external_data(folder, "../weights.bin", list_it=False)
    with pytest.raises(ManifestError) as exc:
        Manifest.load(folder)
    _one_line_naming(exc, "../weights.bin")


def test_listed_external_data_loads_and_a_scaled_copy_is_refused(folder):
    _with_external_data(folder, "weights.bin", list_it=True)
    with EdgePolicy(folder, gate="always") as policy:
        assert np.all(np.isfinite(policy.step(make_observation(0))))
    weights = np.frombuffer((folder / "weights.bin").read_bytes(), dtype=np.uint8).copy()
    weights[: weights.size // 2] = (weights[: weights.size // 2].astype(np.int32) * 3 % 256).astype(np.uint8)
    (folder / "weights.bin").write_bytes(weights.tobytes())
    with pytest.raises(ManifestError) as exc:
        Manifest.load(folder)
    _one_line_naming(exc, "weights.bin")


def test_graph_swapped_between_check_and_load_is_refused(folder, monkeypatch):
    """The onnxruntime backend loads the bytes it hashed, so a swap after Manifest.load is caught."""
    from runtime.backend_onnxruntime import OnnxRuntimeBackend

    m = Manifest.load(folder)
    shutil.copyfile(folder / "delta_expert.onnx", folder / "prefix.onnx")
    with pytest.raises(ManifestError) as exc:
        OnnxRuntimeBackend(folder, m)
    _one_line_naming(exc, "prefix.onnx")


def test_tokenizer_swapped_after_check_is_refused(folder):
    m = Manifest.load(folder)
    (folder / "tokenizer.json").write_text("{}")
    from runtime.tokenizer import InstructionTokenizer

    with pytest.raises(ManifestError) as exc:
        InstructionTokenizer(m.tokenizer_path, m.tokenizer, expected_sha256=m.files["tokenizer.json"]["sha256"])
    _one_line_naming(exc, "tokenizer.json")


def test_broken_tokenizer_with_valid_hash_is_a_manifest_error(folder):
    (folder / "tokenizer.json").write_text('{"model": 5}')
    raw = load_manifest_dict(folder)
    raw["files"]["tokenizer.json"] = _sha(folder / "tokenizer.json")
    write_manifest_dict(folder, raw)
    with pytest.raises(ManifestError) as exc:
        EdgePolicy(folder)
    _one_line_naming(exc, "tokenizer.json")


# ------------------------------------------------------------------ signatures
def test_signed_folder_loads_with_its_key_and_reports_the_signer(signed):
    m = Manifest.load(signed, trusted_keys=[OTHER_PUB, PUB])
    assert m.signed_by is not None and m.digest.startswith("sha256:")


def test_unsigned_folder_is_refused_when_a_key_is_required(folder):
    with pytest.raises(ManifestError, match="unsigned"):
        Manifest.load(folder, trusted_keys=[PUB])


def test_folder_signed_by_another_key_is_refused(folder):
    write_manifest_dict(folder, load_manifest_dict(folder), signing_key=OTHER)
    with pytest.raises(ManifestError, match="not a trusted key"):
        Manifest.load(folder, trusted_keys=[PUB])


@pytest.mark.parametrize("flip", [0, 10, 40, 63])
def test_altered_signature_is_refused(signed, flip):
    raw = load_manifest_dict(signed)
    sig = bytearray(base64.b64decode(raw["identity"]["signature"]["value"]))
    sig[flip] ^= 0x40
    raw["identity"]["signature"]["value"] = base64.b64encode(bytes(sig)).decode()
    write_manifest_dict(signed, raw, restamp=False)
    with pytest.raises(ManifestError, match="does not verify"):
        Manifest.load(signed, trusted_keys=[PUB])


def test_signature_copied_onto_another_export_is_refused(signed, tmp_path):
    other = build_fake_artifacts(tmp_path / "other", seed=3)
    raw = load_manifest_dict(other)
    raw["identity"]["signature"] = load_manifest_dict(signed)["identity"]["signature"]
    write_manifest_dict(other, raw, restamp=False)
    with pytest.raises(ManifestError, match="does not verify"):
        Manifest.load(other, trusted_keys=[PUB])


@pytest.mark.parametrize("content, needle", [
    (b"not a key", "not a PEM public key"),
    (rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), "not an Ed25519"),
])
def test_bad_trusted_key_files_are_named(tmp_path, folder, content, needle):
    path = tmp_path / "robot.pub"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=needle):
        EdgePolicy(folder, trusted_keys=[path])


def test_keygen_sign_and_verify_round_trip(folder, tmp_path, capsys):
    assert signing_main(["keygen", "--out", str(tmp_path / "keys" / "export")]) == 0
    private, public = tmp_path / "keys" / "export.key", tmp_path / "keys" / "export.pub"
    assert private.stat().st_mode & 0o077 == 0  # private key is owner-only
    assert signing_main(["keygen", "--out", str(tmp_path / "keys" / "export")]) == 2  # never overwrites
    digest = sign_folder(folder, private)
    m = Manifest.load(folder, trusted_keys=[load_public_key(public)], expected_digest=digest)
    assert m.digest == digest
    assert runtime_main(["info", "--artifacts", str(folder), "--trusted-key", str(public),
                         "--expect-digest", digest]) == 0
    out = capsys.readouterr().out
    assert digest in out and "signed by key" in out


def test_signing_refuses_a_damaged_folder(folder, tmp_path):
    private, _ = generate_keypair(tmp_path / "k")
    (folder / "prefix.onnx").write_bytes(b"x")
    assert signing_main(["sign", "--artifacts", str(folder), "--key", str(private)]) == 2
    assert signing_main(["sign", "--artifacts", str(folder), "--key", str(tmp_path / "missing.key")]) == 2


@pytest.mark.parametrize("argv, needle", [
    (["--expect-digest", "sha256:" + "0" * 64], "not the expected"),
    (["--expect-digest", "abc"], "sha256:<64 hex digits>"),
    (["--trusted-key", "/nonexistent.pub"], "cannot be read"),
])
def test_runtime_info_identity_refusals_are_one_line(folder, capsys, argv, needle):
    assert runtime_main(["info", "--artifacts", str(folder), *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_expected_digest_accepts_bare_and_uppercase_hex(folder):
    digest = Manifest.load(folder).digest
    Manifest.load(folder, expected_digest=digest.removeprefix("sha256:").upper())


# ------------------------------------------------------------------ properties of the digest
@settings(max_examples=60, deadline=None)
@given(path=st.sampled_from([("dims", "num_steps"), ("normalization", "action", "std", 0), ("action_bounds", "low", 1),
                             ("gate", "drift", "default_threshold"), ("files", "prefix.onnx", "sha256"),
                             ("model", "config"), ("producer",)]),
       value=st.one_of(st.integers(-5, 5), st.floats(-1, 1, allow_nan=False), st.text(max_size=5)))
def test_any_change_changes_the_digest(path, value):
    raw = load_manifest_dict(cached_fake_artifacts())
    before = artifact_digest(raw)
    node = raw
    for k in path[:-1]:
        node = node[k]
    if node[path[-1]] == value and type(node[path[-1]]) is type(value):
        return
    node[path[-1]] = value
    assert artifact_digest(raw) != before


def test_digest_ignores_formatting_and_key_order_but_not_identity_contents():
    raw = load_manifest_dict(cached_fake_artifacts())
    reordered = json.loads(json.dumps(dict(reversed(list(raw.items())))))
    assert artifact_digest(reordered) == artifact_digest(raw) == raw["identity"]["digest"]


@pytest.mark.parametrize("name", ["prefix.onnx", "manifest.json", "tokenizer.json"])
def test_a_folder_where_a_file_should_be_is_refused_naming_it(folder, name):
    (folder / name).unlink()
    (folder / name).mkdir()
    with pytest.raises(ManifestError) as exc:
        Manifest.load(folder)
    _one_line_naming(exc, name)


def test_signing_write_failures_are_one_line_naming_the_option(folder, tmp_path, capsys):
    """An --out under a file (keygen) or a folder that cannot take a new manifest.json (sign) died in a
    FileExistsError / IsADirectoryError traceback."""
    (tmp_path / "plain").write_text("")
    assert signing_main(["keygen", "--out", str(tmp_path / "plain" / "export")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and "Traceback" not in err[0], err
    private, _ = generate_keypair(tmp_path / "k")
    (folder / "manifest.json.tmp").mkdir()  # where the new manifest is staged: cannot be written
    before = (folder / "manifest.json").read_bytes()
    assert signing_main(["sign", "--artifacts", str(folder), "--key", str(private)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--artifacts" in err[0] and "manifest.json" in err[0], err
    assert (folder / "manifest.json").read_bytes() == before
