"""Engine-folder identity (issue #18): fingerprints pinned to the artifact digest, signed like the manifest.

No TensorRT needed: the record covers the fingerprint files, which pin the .plan bytes (checked by the
TensorRT backend) and the ONNX hash; the policy checks the record before it imports the TensorRT backend.
"""

from __future__ import annotations

import json
import re
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


def fake_engine_folder(root: Path) -> tuple[Path, Path, Manifest]:
    """A copy of the fake artifacts under `root`/onnx and an `engines` folder of fake plans with valid fingerprints."""
    art = root / "onnx"
    shutil.copytree(cached_fake_artifacts(), art)
    m = Manifest.load(art)
    engines = root / "engines"
    engines.mkdir()
    for g in GRAPH_NAMES:
        plan = f"plan of {g}".encode()
        (engines / f"{g}.plan").write_bytes(plan)
        EngineFingerprint(graph=g, onnx_sha256=m.files[m.graphs[g].file]["sha256"], tensorrt_version="10.3.0",
                          gpu_name="Orin", compute_capability=(8, 7), precision="fp16", strongly_typed=True,
                          builder_optimization_level=3, workspace_bytes=1 << 30, build_seconds=1.0,
                          engine_bytes=len(plan), engine_sha256=sha256_bytes(plan)).write(engines / f"{g}.fingerprint.json")
    return art, engines, m


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Path, Path, Manifest]:
    return fake_engine_folder(tmp_path)


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


def test_engines_of_a_neighbouring_folder_name_it(setup, tmp_path):
    """`make engine` builds from artifacts/onnx-fp16: engines used with artifacts/onnx name the folder to pass,
    instead of a `make engine` hint that would rebuild from onnx-fp16 again."""
    art, engines, _ = setup
    fp16 = tmp_path / "onnx-fp16"
    fp16.mkdir()
    other = "sha256:" + "2" * 64
    (fp16 / "manifest.json").write_text(json.dumps({"identity": {"digest": other}}))
    write_engine_record(engines, other, GRAPH_NAMES)
    with pytest.raises(IdentityError, match=re.escape(f"were built from {fp16} (sha256:2222222222")) as exc:
        EdgePolicy(art, backend="tensorrt", backend_options={"engines": str(engines)})  # before TensorRT loads
    assert f"not from these artifacts ({art})" in str(exc.value) and f"pass --artifacts {fp16}," in str(exc.value)
    (fp16 / "manifest.json").write_text("{not json")  # no folder found: say what to pass, and how to find it
    with pytest.raises(IdentityError, match="pass --artifacts with the folder they were built from") as exc:
        EdgePolicy(art, backend="tensorrt", backend_options={"engines": str(engines)})
    assert "python -m runtime info" in str(exc.value) and "rebuild them with `make engine`" not in str(exc.value)


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


# ------------------------------------------------------------------ malformed records: every field, every wrong type

WRONG_VALUES = (None, True, 0, 1.5, "x", [], ["a"], {})


def _record_cases(good: dict) -> list[tuple[str, dict, bool]]:
    """(field the error must name, record, restamp the digest) for a wrong type or a missing key of each field."""
    cases = []
    for key in ("format_version", "artifact_digest", "fingerprints", "identity"):
        for value in (*WRONG_VALUES, "missing"):
            body = json.loads(json.dumps(good))
            if value == "missing":
                del body[key]
            else:
                body[key] = value
            cases.append((key, body, key != "identity"))
    for graph_value in (5, None, [], "f" * 63, "F" * 64):
        body = json.loads(json.dumps(good))
        body["fingerprints"]["prefix"] = graph_value
        cases.append(("fingerprints.prefix", body, True))
    for sub, value in (("digest", 5), ("digest", None), ("signature", []), ("signature", ["key_id", "value"]),
                       ("signature", {"key_id": 5, "value": "x"}), ("parts", [])):
        body = json.loads(json.dumps(good))
        body["identity"][sub] = value
        cases.append((f"identity.{sub}", body, False))
    cases.append(("unexpected", {**json.loads(json.dumps(good)), "unexpected": 1}, True))
    return cases


def test_every_malformed_record_field_is_refused_naming_file_and_field(setup):
    """Each wrong type / missing key, with or without trusted keys: IdentityError naming the record and the field."""
    from runtime.artifact_identity import stamp_identity
    from runtime.engine_identity import DOMAIN

    _, engines, m = setup
    write_engine_record(engines, m.digest, GRAPH_NAMES, KEY)
    good = json.loads((engines / RECORD).read_text())
    cases = _record_cases(good)
    for field, body, restamp in cases:
        if restamp:  # a consistent digest: only the structure is wrong
            stamp_identity(body, KEY, domain=DOMAIN)
        (engines / RECORD).write_text(json.dumps(body))
        for keys in ((), [KEY.public_key()]):
            with pytest.raises(IdentityError) as info:
                verify_engine_record(engines, m.digest, GRAPH_NAMES, keys)
            message = str(info.value)
            assert str(engines / RECORD) in message and f"'{field}" in message, (field, body, message)
    assert len(cases) > 40


@pytest.mark.parametrize("text", ["[]", '"record"', "1", "null", "[" * 100_000, "{\"format_version\": NaN}"])
def test_record_that_is_not_an_object_is_refused(setup, text):
    _, engines, m = setup
    (engines / RECORD).write_text(text)
    with pytest.raises(IdentityError, match=re.escape(str(engines / RECORD))):
        verify_engine_record(engines, m.digest, GRAPH_NAMES)


def test_an_unreadable_record_is_refused_naming_it(setup, monkeypatch):
    """A record the runtime's account cannot read (an owner-only copy): one IdentityError line, no traceback."""
    import builtins
    import io

    _, engines, m = setup
    write_engine_record(engines, m.digest, GRAPH_NAMES)
    real = builtins.open

    def denied(file, *args, **kwargs):
        if str(file).endswith(RECORD):
            raise PermissionError(13, "Permission denied", str(file))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", denied)
    monkeypatch.setattr(io, "open", denied)
    with pytest.raises(IdentityError, match=re.escape(f"{engines / RECORD}: cannot be read (Permission denied)")):
        verify_engine_record(engines, m.digest, GRAPH_NAMES)


def test_an_oversized_record_is_refused_without_reading_it_whole(setup):
    _, engines, m = setup
    (engines / RECORD).write_text("{" + " " * (2 << 20) + "}")
    with pytest.raises(IdentityError, match="larger than"):
        verify_engine_record(engines, m.digest, GRAPH_NAMES)


@pytest.mark.parametrize("swapped", GRAPH_NAMES)
@pytest.mark.parametrize("when", ["after its check", "after every check"])
def test_sign_engines_signs_exactly_the_fingerprint_bytes_it_checked(setup, tmp_path, monkeypatch, swapped, when):
    """A fingerprint swapped on disk after sign-engines checked it must not be what the key signs: the record pins
    the checked bytes, so the swapped file is refused at load."""
    art, engines, m = setup
    private, public = generate_keypair(tmp_path / "k")
    path = engines / f"{swapped}.fingerprint.json"
    checked = path.read_bytes()
    real = EngineFingerprint.check_engine_bytes

    def check_then_swap(self, data):
        real(self, data)
        if self.graph == (swapped if when == "after its check" else GRAPH_NAMES[-1]):
            forged = json.loads(path.read_text())
            forged["engine_sha256"] = "0" * 64  # would let another .plan through
            path.write_text(json.dumps(forged))

    monkeypatch.setattr(EngineFingerprint, "check_engine_bytes", check_then_swap)
    sign_engines(engines, art, private)
    record = json.loads((engines / RECORD).read_text())
    assert record["fingerprints"][swapped] == sha256_bytes(checked)
    with pytest.raises(IdentityError, match=f"{swapped}.fingerprint.json"):
        verify_engine_record(engines, m.digest, GRAPH_NAMES, [load_public_key(public)])


def test_tensorrt_backend_loads_the_fingerprint_bytes_the_signed_record_checked(tmp_path, monkeypatch):
    """A fingerprint + plan swapped after the engine record was verified (a writer racing the robot's start) must not
    load: the backend uses the fingerprint bytes the record check read, so the swapped plan fails its sha check."""
    import sys

    import tests.fake_tensorrt as fake_trt
    from export.trt.build_engines import main as build_main
    from runtime import backend_factory
    from runtime.fingerprint import FingerprintMismatch
    from tests.fake_cuda import install_cuda

    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt.make_tensorrt("10.3", install_cuda(monkeypatch, "12.x")))
    art, engines = tmp_path / "onnx", tmp_path / "engines"
    shutil.copytree(cached_fake_artifacts(), art)
    assert build_main(["--artifacts", str(art), "--out", str(engines), "--precision", "fp32"]) == 0
    private, public = generate_keypair(tmp_path / "k")
    sign_engines(engines, art, private)
    m, keys = Manifest.load(art), [load_public_key(public)]
    backend_factory.make_backend("tensorrt", m, "cuda", {"engines": str(engines)}, True, keys).close()  # signed: runs

    real = backend_factory.verify_engine_record

    def verify_then_swap(*args, **kwargs):
        digest = real(*args, **kwargs)
        plan = json.loads((engines / "prefix.plan").read_bytes())
        plan["io"] = plan["io"][::-1]  # another, unsigned engine that still matches this export's I/O
        forged = json.dumps(plan).encode()
        (engines / "prefix.plan").write_bytes(forged)
        fp = json.loads((engines / "prefix.fingerprint.json").read_text())
        fp.update(engine_bytes=len(forged), engine_sha256=sha256_bytes(forged))
        (engines / "prefix.fingerprint.json").write_text(json.dumps(fp))
        return digest

    monkeypatch.setattr(backend_factory, "verify_engine_record", verify_then_swap)
    with pytest.raises(FingerprintMismatch, match="'prefix': the .plan file does not match its fingerprint"):
        backend_factory.make_backend("tensorrt", m, "cuda", {"engines": str(engines)}, True, keys)


def test_a_pinned_fingerprint_that_is_gone_is_refused_naming_it(setup):
    """The record pins every graph's fingerprint: one missing on disk is refused before TensorRT is imported,
    with the rebuild hint (not the manifest's re-export hint)."""
    from runtime.backend_factory import make_backend

    _, engines, m = setup
    write_engine_record(engines, m.digest, GRAPH_NAMES)
    (engines / "delta_expert.fingerprint.json").unlink()
    with pytest.raises(IdentityError, match=r"delta_expert.fingerprint.json is missing from .* pins it; rebuild the engines with .make engine."):
        make_backend("tensorrt", m, "cuda", {"engines": str(engines)}, True, [])


@pytest.fixture()
def address_space_cap():
    """Caps this process's address space a few GiB above its current size while the test runs, so a whole-file
    read of a huge sparse .plan fails with MemoryError instead of exhausting the machine."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    status = Path("/proc/self/status").read_text().splitlines()
    size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (size + (4 << 30), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_a_plan_of_another_size_is_refused_before_it_is_read(setup, tmp_path, monkeypatch, address_space_cap):
    """A .plan whose size is not the fingerprint's engine_bytes (a truncated copy, another engine, a 1 TiB sparse
    file) is refused by its size, before any of it is read, by sign-engines and by the TensorRT backend."""
    import os
    import sys

    import tests.fake_tensorrt as fake_trt
    from export.signing import SigningError
    from export.trt.build_engines import main as build_main
    from runtime.backend_tensorrt import TensorRTBackend
    from runtime.fingerprint import FingerprintMismatch
    from tests.fake_cuda import install_cuda

    art, engines, _ = setup
    private, _ = generate_keypair(tmp_path / "k")
    os.truncate(engines / "main_expert.plan", 1 << 40)
    with pytest.raises(SigningError, match=r"'main_expert': .*\(1099511627776 bytes vs \d+ recorded\)"):
        sign_engines(engines, art, private)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt.make_tensorrt("10.3", install_cuda(monkeypatch, "12.x")))
    built = tmp_path / "built"
    assert build_main(["--artifacts", str(art), "--out", str(built), "--precision", "fp32"]) == 0
    os.truncate(built / "prefix.plan", 1 << 40)
    with pytest.raises(FingerprintMismatch, match=r"'prefix': the .plan file does not match its fingerprint "
                                                  r"\(1099511627776 bytes vs \d+ recorded\)"):
        TensorRTBackend(art, built)
