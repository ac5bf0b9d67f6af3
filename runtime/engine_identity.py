"""Identity of a TensorRT engine folder: one digest over the ONNX artifact digest and every engine fingerprint.

Each `<graph>.fingerprint.json` pins its `.plan` (engine_sha256, checked by the TensorRT backend), its ONNX
(onnx_sha256) and its external weights (data_sha256). `engines.identity.json` pins the fingerprints and the
artifact folder they were built from:
`{"format_version": 1, "artifact_digest": ..., "fingerprints": {graph: sha256 of the file}, "identity":
{"digest": ..., "signature": ...}}`, digest and signature made as for the manifest (runtime.artifact_identity,
with its own domain prefix). `make engine` writes it unsigned; `python -m export.signing sign-engines` signs it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from runtime.artifact_files import ArtifactFileError, confined_path, sha256_and_size
from runtime.artifact_identity import IdentityError, stamp_identity, verify_identity
from runtime.fingerprint import EngineFingerprint, sha256_bytes
from runtime.manifest_schema import IdentityModel, Key, Sha256Hex, describe
from runtime.strict_json import strict_dumps, strict_loads

RECORD = "engines.identity.json"
DOMAIN = b"smolvla-cls-edge engine set v1\n"
FORMAT_VERSION = 1
MAX_NEIGHBOURS = 64  # folders looked at for the artifact folder a foreign engine set was built from
MAX_MANIFEST_BYTES = 1 << 20


class EngineRecordModel(BaseModel):
    """Every field of `engines.identity.json` the runtime reads, with its type (unknown keys refused)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    format_version: Literal[1]
    artifact_digest: Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]
    fingerprints: dict[Key, Sha256Hex] = Field(min_length=1, max_length=64)
    identity: IdentityModel

    @field_validator("format_version", mode="before")
    @classmethod
    def _integer(cls, value: Any) -> Any:
        if type(value) is not int:  # Literal[1] alone takes true and 1.0
            raise ValueError(f"Input should be the integer {FORMAT_VERSION}")
        return value


def read_engine_record(folder: Path) -> tuple[dict[str, Any], EngineRecordModel]:
    """The folder's record as parsed JSON and as checked structure; IdentityError naming file and field otherwise."""
    path = folder / RECORD
    try:
        with open(confined_path(folder, RECORD), "rb") as fh:  # bounded: a real record is ~1 KB
            data = fh.read(MAX_MANIFEST_BYTES + 1)
    except ArtifactFileError as exc:
        raise IdentityError(str(exc)) from None
    except OSError as exc:  # no permission, I/O error
        raise IdentityError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise IdentityError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes, not an engine identity record")
    try:
        raw = strict_loads(data)
    except RecursionError:  # absurd nesting
        raise IdentityError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a key twice in one object
        raise IdentityError(f"{path}: not valid JSON ({str(exc)[:160]})") from None
    try:
        return raw, EngineRecordModel.model_validate(raw)
    except ValidationError as exc:
        raise IdentityError(f"{path}: not an engine identity record of format {FORMAT_VERSION}: "
                            f"{describe(exc)}") from None


def engine_record(engines_dir: Path, artifact_digest: str, graphs: Iterable[str],
                  checked: Mapping[str, bytes] | None = None) -> dict[str, Any]:
    """The record's body (no identity yet) for the fingerprints now in `engines_dir`, or for the fingerprint
    bytes `checked` (graph → the bytes a caller read once and checked: those, not the file again, are pinned)."""
    if checked is not None:
        prints = {g: sha256_bytes(checked[g]) for g in graphs}
    else:
        prints = {g: sha256_and_size(confined_path(engines_dir, f"{g}.fingerprint.json"))[0] for g in graphs}
    return {"format_version": FORMAT_VERSION, "artifact_digest": artifact_digest, "fingerprints": prints}


def write_engine_record(engines_dir: str | Path, artifact_digest: str, graphs: Iterable[str],
                        private_key: Any = None, checked: Mapping[str, bytes] | None = None) -> str:
    """Write `engines.identity.json` (signed when a key is given) pinning the fingerprint files, or the fingerprint
    bytes `checked` (see `engine_record`); returns its digest."""
    folder = Path(engines_dir)
    body = engine_record(folder, artifact_digest, graphs, checked)
    digest = stamp_identity(body, private_key, domain=DOMAIN)
    tmp = folder / (RECORD + ".tmp")
    tmp.write_text(strict_dumps(body, indent=2) + "\n")
    tmp.replace(folder / RECORD)
    return digest


def _declared_digest(folder: Path) -> str | None:
    """The identity digest a folder's manifest.json declares (unverified: only used to name a folder in a hint)."""
    try:
        with (folder / "manifest.json").open("rb") as f:
            raw = strict_loads(f.read(MAX_MANIFEST_BYTES))
        digest = raw["identity"]["digest"]
    except (OSError, ValueError, RecursionError, KeyError, TypeError):
        return None
    return digest if isinstance(digest, str) else None


def find_artifacts(digest: str, near: Iterable[Path]) -> Path | None:
    """An artifact folder next to `near` (e.g. `artifacts/onnx-fp16` next to `artifacts/onnx` and
    `artifacts/engines`) whose manifest declares `digest`; None if there is none (at most MAX_NEIGHBOURS
    folders are looked at in each place)."""
    for parent in dict.fromkeys(p.parent for p in near):
        try:
            folders = sorted(f for f in parent.iterdir() if f.is_dir())[:MAX_NEIGHBOURS]
        except OSError:
            continue
        for folder in folders:
            if _declared_digest(folder) == digest:
                return folder
    return None


def _foreign_artifacts(path: Path, built_from: str, artifact_digest: str, artifacts_dir: Path | None) -> str:
    """The refusal for engines built from another artifact folder, naming that folder when it is found nearby
    (`make engine` builds fp16 engines from <artifacts>-fp16, not from the fp32 export next to it)."""
    near = [path.parent] + ([artifacts_dir] if artifacts_dir is not None else [])
    source = find_artifacts(built_from, near)
    given = f" ({artifacts_dir})" if artifacts_dir is not None else ""
    if source is not None:
        return (f"{path}: the engines were built from {source} ({built_from[:19]}…), not from these artifacts"
                f"{given} ({artifact_digest[:19]}…): pass --artifacts {source}, or --engines with engines built "
                "from these artifacts")
    return (f"{path}: the engines were built from artifacts {built_from[:19]}…, not {artifact_digest[:19]}…{given}: "
            "pass --artifacts with the folder they were built from (`make engine` builds from <artifacts>-fp16 "
            "by default; `python -m runtime info` prints a folder's digest), or build engines from these "
            "artifacts (python -m export.trt.build_engines --artifacts <this folder>) and pass --engines")


def read_fingerprints(engines_dir: str | Path, graphs: Iterable[str]) -> dict[str, bytes]:
    """The `<graph>.fingerprint.json` bytes present, each read once (bounded, confined to the folder): the record
    check and the TensorRT backend both use these, so a file swapped between the two is never what loads. An absent
    one is left out (the record check, or the backend after its TensorRT check, says so)."""
    folder, out = Path(engines_dir), {}
    for g in graphs:
        name = f"{g}.fingerprint.json"
        if not (folder / name).exists() and not (folder / name).is_symlink():
            continue
        try:
            out[g] = EngineFingerprint.read_bytes(confined_path(folder, name))
        except ArtifactFileError as exc:  # a link out of the folder, a folder in its place
            raise IdentityError(str(exc)) from None
    return out


def verify_engine_record(engines_dir: str | Path, artifact_digest: str, graphs: Iterable[str],
                         trusted_keys: Iterable[Any] = (), artifacts_dir: str | Path | None = None,
                         checked: Mapping[str, bytes] | None = None) -> str | None:
    """Check the engine folder's record; None when there is none and no key is required.

    Refused (IdentityError, one line naming the file): a record for another artifact folder, a fingerprint that
    changed since the record was written, a changed record, and — with trusted keys — a missing, unsigned or
    foreign-signed record. `artifacts_dir` (the folder `artifact_digest` belongs to) only sharpens the message
    for engines of another artifact folder. `checked` (from `read_fingerprints`): the fingerprint bytes to check,
    instead of reading the files again.
    """
    folder, keys, graphs = Path(engines_dir), list(trusted_keys), list(graphs)
    path = folder / RECORD
    if not path.exists():
        if keys:
            raise IdentityError(f"{path} is missing but a trusted key is required "
                                "(sign the engines: python -m export.signing sign-engines)")
        return None
    raw, record = read_engine_record(folder)
    try:
        digest = verify_identity(raw, trusted_keys=keys, domain=DOMAIN, what=RECORD)
        if record.artifact_digest != artifact_digest:
            raise IdentityError(_foreign_artifacts(path, record.artifact_digest, artifact_digest,
                                                   None if artifacts_dir is None else Path(artifacts_dir)))
        absent = [g for g in graphs if checked is not None and g not in checked]
        if absent:
            raise IdentityError(f"{absent[0]}.fingerprint.json is missing from {folder} but {RECORD} pins it; "
                                "rebuild the engines with `make engine`")
        want = engine_record(folder, artifact_digest, graphs, checked)["fingerprints"]
    except ArtifactFileError as exc:
        raise IdentityError(str(exc)) from None
    for graph, sha in want.items():
        if record.fingerprints.get(graph) != sha:
            raise IdentityError(f"{graph}.fingerprint.json in {folder} differs from {RECORD}: "
                                "the engine changed after the record was written; rebuild with `make engine`")
    return digest
