"""Engine-folder identity (issue #18): fingerprints pinned to the artifact digest, signed like the manifest.

No TensorRT needed: the record covers the fingerprint files, which pin the .plan bytes (checked by the
TensorRT backend) and the ONNX hash; the policy checks the record before it imports the TensorRT backend.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

try:
    from tests.fake_artifacts import cached_fake_artifacts
except ImportError:
    from fake_artifacts import cached_fake_artifacts

from export.signing import generate_keypair, sign_engines
from export.signing import main as signing_main
from runtime.artifact_identity import IdentityError, load_public_key
from runtime.engine_identity import RECORD, verify_engine_record, write_engine_record
from runtime.fingerprint import EngineFingerprint, sha256_bytes
from runtime.manifest import GRAPH_NAMES, Manifest
from runtime.policy import EdgePolicy

KEY = Ed25519PrivateKey.generate()


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Path, Path, Manifest]:
    art = tmp_path / "onnx"
    shutil.copytree(cached_fake_artifacts(), art)
    m = Manifest.load(art)
    engines = tmp_path / "engines"
    engines.mkdir()
    for g in GRAPH_NAMES:
        plan = f"plan of {g}".encode()
        (engines / f"{g}.plan").write_bytes(plan)
        EngineFingerprint(graph=g, onnx_sha256=m.files[m.graphs[g].file]["sha256"], tensorrt_version="10.3.0",
                          gpu_name="Orin", compute_capability=(8, 7), precision="fp16", strongly_typed=True,
                          builder_optimization_level=3, workspace_bytes=1 << 30, build_seconds=1.0,
                          engine_bytes=len(plan), engine_sha256=sha256_bytes(plan)).write(engines / f"{g}.fingerprint.json")
    return art, engines, m


def test_record_round_trip_and_signature(setup):
    _, engines, m = setup
    write_engine_record(engines, m.digest, GRAPH_NAMES)
    assert verify_engine_record(engines, m.digest, GRAPH_NAMES) is not None
    with pytest.raises(IdentityError, match="unsigned"):
        verify_engine_record(engines, m.digest, GRAPH_NAMES, [KEY.public_key()])
    write_engine_record(engines, m.digest, GRAPH_NAMES, KEY)
    verify_engine_record(engines, m.digest, GRAPH_NAMES, [KEY.public_key()])


def test_changed_fingerprint_is_refused_naming_it(setup):
    _, engines, m = setup
    write_engine_record(engines, m.digest, GRAPH_NAMES, KEY)
    fp = json.loads((engines / "main_expert.fingerprint.json").read_text())
    fp["engine_sha256"] = "0" * 64  # a swapped .plan with a matching fingerprint
    (engines / "main_expert.fingerprint.json").write_text(json.dumps(fp))
    with pytest.raises(IdentityError, match="main_expert.fingerprint.json"):
        verify_engine_record(engines, m.digest, GRAPH_NAMES, [KEY.public_key()])


def test_engines_of_another_export_are_refused(setup):
    _, engines, m = setup
    write_engine_record(engines, "sha256:" + "1" * 64, GRAPH_NAMES)
    with pytest.raises(IdentityError, match="built from artifacts"):
        verify_engine_record(engines, m.digest, GRAPH_NAMES)


def test_edited_record_is_refused(setup):
    _, engines, m = setup
    write_engine_record(engines, m.digest, GRAPH_NAMES)
    raw = json.loads((engines / RECORD).read_text())
    raw["fingerprints"]["prefix"] = "f" * 64
    (engines / RECORD).write_text(json.dumps(raw))
    with pytest.raises(IdentityError, match="changed after export"):
        verify_engine_record(engines, m.digest, GRAPH_NAMES)


def test_missing_record_only_allowed_without_keys(setup):
    _, engines, m = setup
    assert verify_engine_record(engines, m.digest, GRAPH_NAMES) is None
    with pytest.raises(IdentityError, match="missing"):
        verify_engine_record(engines, m.digest, GRAPH_NAMES, [KEY.public_key()])


def test_policy_refuses_unsigned_engines_before_loading_tensorrt(setup):
    art, engines, _ = setup
    write_engine_record(engines, Manifest.load(art).digest, GRAPH_NAMES)  # unsigned
    raw = json.loads((art / "manifest.json").read_text())
    from runtime.artifact_identity import stamp_identity

    stamp_identity(raw, KEY)
    (art / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(IdentityError, match=f"{RECORD} is unsigned"):
        EdgePolicy(art, backend="tensorrt", backend_options={"engines": str(engines)}, trusted_keys=[KEY.public_key()])


def test_sign_engines_command_checks_plans_and_onnx(setup, tmp_path):
    art, engines, m = setup
    private, public = generate_keypair(tmp_path / "k")
    digest = sign_engines(engines, art, private)
    assert verify_engine_record(engines, m.digest, GRAPH_NAMES, [load_public_key(public)]) == digest
    (engines / "prefix.plan").write_bytes(b"another engine")
    assert signing_main(["sign-engines", "--engines", str(engines), "--artifacts", str(art), "--key", str(private)]) == 2
