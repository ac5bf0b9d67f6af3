"""Identity of a TensorRT engine folder: one digest over the ONNX artifact digest and every engine fingerprint.

Each `<graph>.fingerprint.json` pins its `.plan` (engine_sha256, checked by the TensorRT backend), its ONNX
(onnx_sha256) and its external weights (data_sha256). `engines.identity.json` pins the fingerprints and the
artifact folder they were built from:
`{"format_version": 1, "artifact_digest": ..., "fingerprints": {graph: sha256 of the file}, "identity":
{"digest": ..., "signature": ...}}`, digest and signature made as for the manifest (runtime.artifact_identity,
with its own domain prefix). `make engine` writes it unsigned; `python -m export.signing sign-engines` signs it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from runtime.artifact_files import ArtifactFileError, confined_path, sha256_and_size
from runtime.artifact_identity import IdentityError, stamp_identity, verify_identity
from runtime.manifest_schema import IdentityModel, Key, Sha256Hex, describe

RECORD = "engines.identity.json"
DOMAIN = b"smolvla-cls-edge engine set v1\n"
FORMAT_VERSION = 1


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
        raw = json.loads(confined_path(folder, RECORD).read_text(encoding="utf-8")[:1 << 20])
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, absurd nesting
        raise IdentityError(f"{path}: not valid JSON") from None
    except ArtifactFileError as exc:
        raise IdentityError(str(exc)) from None
    try:
        return raw, EngineRecordModel.model_validate(raw)
    except ValidationError as exc:
        raise IdentityError(f"{path}: not an engine identity record of format {FORMAT_VERSION}: "
                            f"{describe(exc)}") from None


def engine_record(engines_dir: Path, artifact_digest: str, graphs: Iterable[str]) -> dict[str, Any]:
    """The record's body for the fingerprints now in `engines_dir` (no identity yet)."""
    prints = {g: sha256_and_size(confined_path(engines_dir, f"{g}.fingerprint.json"))[0] for g in graphs}
    return {"format_version": FORMAT_VERSION, "artifact_digest": artifact_digest, "fingerprints": prints}


def write_engine_record(engines_dir: str | Path, artifact_digest: str, graphs: Iterable[str],
                        private_key: Any = None) -> str:
    """Write `engines.identity.json` (signed when a key is given); returns its digest."""
    folder = Path(engines_dir)
    body = engine_record(folder, artifact_digest, graphs)
    digest = stamp_identity(body, private_key, domain=DOMAIN)
    tmp = folder / (RECORD + ".tmp")
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    tmp.replace(folder / RECORD)
    return digest


def verify_engine_record(engines_dir: str | Path, artifact_digest: str, graphs: Iterable[str],
                         trusted_keys: Iterable[Any] = ()) -> str | None:
    """Check the engine folder's record; None when there is none and no key is required.

    Refused (IdentityError, one line naming the file): a record for another artifact folder, a fingerprint that
    changed since the record was written, a changed record, and — with trusted keys — a missing, unsigned or
    foreign-signed record.
    """
    folder, keys = Path(engines_dir), list(trusted_keys)
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
            raise IdentityError(f"{path}: the engines were built from artifacts {record.artifact_digest[:19]}…,"
                                f" not {artifact_digest[:19]}…; rebuild them with `make engine`")
        want = engine_record(folder, artifact_digest, graphs)["fingerprints"]
    except ArtifactFileError as exc:
        raise IdentityError(str(exc)) from None
    for graph, sha in want.items():
        if record.fingerprints.get(graph) != sha:
            raise IdentityError(f"{graph}.fingerprint.json in {folder} differs from {RECORD}: "
                                "the engine changed after the record was written; rebuild with `make engine`")
    return digest
