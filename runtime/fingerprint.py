"""Engine fingerprint: the JSON next to each `<graph>.plan` that ties it to one ONNX graph and its weights,
one GPU and one TensorRT.

A TensorRT engine only runs on the GPU model and TensorRT version that built it, and only matches the ONNX
it was built from. Export writes this record (docs/10-artifact-contract.md, "Engine fingerprint"); the runtime
reads it and refuses a stale or foreign engine with a message that says what differs. Stdlib only, so
both `export` and `runtime` can import it without torch, TensorRT or CUDA.

Format 2 adds `data_sha256`, the hash of the graph's external-data file (`<graph>.onnx.data`, null when the
weights are inside the .onnx): with external data the .onnx holds only offsets, so its hash alone does not
name the weights. A format-1 fingerprint is still accepted for a graph without external data (its .onnx hash
covers the weights) and refused, with a rebuild hint, for a graph with external data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from runtime.strict_json import strict_dumps, strict_loads

FORMAT_VERSION = 2  # what export writes
READABLE_VERSIONS = (1, 2)  # 1: no data_sha256 (read as None; see source_differences)
REBUILD_HINT = "rebuild the engines with `make engine` on this device"


class FingerprintError(ValueError):
    """A fingerprint file is missing, unreadable, or has a missing / ill-typed field."""


class FingerprintMismatch(RuntimeError):
    """An engine was built from another ONNX file, on another GPU, or with another TensorRT version."""


@dataclass(frozen=True)
class EngineFingerprint:
    """Exactly the fields of the contract's engine fingerprint (format version 2; version 1 lacks data_sha256)."""

    graph: str
    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: tuple[int, int]
    precision: str
    strongly_typed: bool
    builder_optimization_level: int
    workspace_bytes: int
    build_seconds: float
    engine_bytes: int
    engine_sha256: str
    data_sha256: str | None = None  # SHA-256 of the graph's external-data file; None: weights inside the .onnx
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the contract's key order (format_version first)."""
        body = dataclasses.asdict(self)
        body["compute_capability"] = list(self.compute_capability)
        if self.format_version == 1:  # a version-1 record read back is written back as it was
            del body["data_sha256"]
        return {"format_version": body.pop("format_version"), **body}

    def write(self, path: str | Path) -> None:
        """Write the fingerprint as pretty JSON (atomically: a half-written file would read as corrupt)."""
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(strict_dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(target)

    @classmethod
    def from_dict(cls, data: Any, source: str = "fingerprint") -> EngineFingerprint:
        """Validate a decoded JSON object; the error names the first missing or ill-typed field."""
        if not isinstance(data, dict):
            raise FingerprintError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if "format_version" not in data:
            raise FingerprintError(f"{source}: missing field 'format_version'")
        version = _checked("format_version", data["format_version"], source)
        if version not in READABLE_VERSIONS:
            raise FingerprintError(
                f"{source}: format_version {version} is not supported "
                f"(this runtime reads {', '.join(map(str, READABLE_VERSIONS))}); {REBUILD_HINT}"
            )
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise FingerprintError(f"{source}: unknown field {unknown[0]!r} (not part of format_version {version})")
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name == "data_sha256" and version == 1:
                if field.name in data:
                    raise FingerprintError(f"{source}: field 'data_sha256' is not part of format_version 1; "
                                           f"{REBUILD_HINT}")
                continue  # stays None: a version-1 fingerprint records no external-data hash
            if field.name not in data:
                raise FingerprintError(f"{source}: missing field {field.name!r}")
            values[field.name] = _checked(field.name, data[field.name], source)
        return cls(**values)

    @classmethod
    def read(cls, path: str | Path) -> EngineFingerprint:
        """Load and validate `<graph>.fingerprint.json`."""
        return cls.from_bytes(cls.read_bytes(path), str(path))

    @staticmethod
    def read_bytes(path: str | Path) -> bytes:
        """The bytes of a fingerprint file, read once and bounded (check and hash these, never the file again)."""
        p = Path(path)
        try:
            with open(p, "rb") as fh:
                raw = fh.read(MAX_FINGERPRINT_BYTES + 1)
        except FileNotFoundError:
            raise FingerprintError(f"{p}: fingerprint file not found; {REBUILD_HINT}") from None
        except OSError as exc:  # a folder in its place, no permission
            raise FingerprintError(f"{p}: cannot be read ({exc.strerror or exc}); {REBUILD_HINT}") from None
        if len(raw) > MAX_FINGERPRINT_BYTES:
            raise FingerprintError(f"{p}: larger than {MAX_FINGERPRINT_BYTES} bytes, not a fingerprint; {REBUILD_HINT}")
        return raw

    @classmethod
    def from_bytes(cls, raw: bytes, source: str) -> EngineFingerprint:
        """Validate the bytes of `<graph>.fingerprint.json`; errors name `source`."""
        try:
            data = strict_loads(raw)
        except UnicodeDecodeError as exc:
            raise FingerprintError(f"{source}: not UTF-8 text (byte {exc.start}); {REBUILD_HINT}") from None
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, a key twice in one object; absurd nesting
            raise FingerprintError(f"{source}: not valid JSON ({str(exc)[:120]}); {REBUILD_HINT}") from None
        return cls.from_dict(data, source=source)

    def source_differences(self, manifest_file_sha256: str, manifest_data_sha256: str | None) -> list[str]:
        """What differs between the graph the engine was built from and the manifest's graph and weights.

        `manifest_data_sha256` is the manifest's hash of the graph's external-data file, None when it has none.
        """
        found: list[str] = []
        if self.onnx_sha256 != manifest_file_sha256:
            found.append(
                f"ONNX sha256 {self.onnx_sha256[:12]}… != manifest {manifest_file_sha256[:12]}… "
                "(the ONNX artifacts changed since the engine was built)"
            )
        if manifest_data_sha256 is None:
            if self.data_sha256 is not None:
                found.append(f"external weights sha256 {self.data_sha256[:12]}… (built) but the manifest's graph "
                             "has no external-data file (the ONNX artifacts changed since the engine was built)")
        elif self.data_sha256 is None:
            found.append(
                f"the fingerprint (format_version {self.format_version}) records no hash of the graph's external "
                "weights, so it does not show which weights the engine was built from"
            )
        elif self.data_sha256 != manifest_data_sha256:
            found.append(
                f"external weights sha256 {self.data_sha256[:12]}… != manifest {manifest_data_sha256[:12]}… "
                "(the weights changed since the engine was built)"
            )
        return found

    def differences(
        self,
        manifest_file_sha256: str,
        trt_version: str,
        gpu_name: str,
        compute_capability: tuple[int, int] | list[int],
        *,
        manifest_data_sha256: str | None,
    ) -> list[str]:
        """Human-readable list of what differs from the running setup (empty when the engine fits).

        `manifest_data_sha256`: the manifest's hash of the graph's external-data file (None: it has none); keyword
        and required, so that no caller checks the .onnx alone.
        """
        found = self.source_differences(manifest_file_sha256, manifest_data_sha256)
        if self.tensorrt_version != trt_version:
            found.append(f"TensorRT {self.tensorrt_version} (built) != {trt_version} (running)")
        if self.gpu_name != gpu_name:
            found.append(f"GPU {self.gpu_name!r} (built) != {gpu_name!r} (running)")
        running_cc = (int(compute_capability[0]), int(compute_capability[1]))
        if self.compute_capability != running_cc:
            built = ".".join(map(str, self.compute_capability))
            found.append(f"compute capability {built} (built) != {running_cc[0]}.{running_cc[1]} (running)")
        return found

    def check_against(
        self,
        manifest_file_sha256: str,
        trt_version: str,
        gpu_name: str,
        compute_capability: tuple[int, int] | list[int],
        *,
        manifest_data_sha256: str | None,
    ) -> None:
        """Raise FingerprintMismatch naming every difference; return quietly when the engine fits."""
        found = self.differences(manifest_file_sha256, trt_version, gpu_name, compute_capability,
                                 manifest_data_sha256=manifest_data_sha256)
        if found:
            raise FingerprintMismatch(
                f"engine {self.graph!r} does not fit this setup: " + "; ".join(found) + f" — {REBUILD_HINT}"
            )

    def check_engine_bytes(self, plan: bytes) -> None:
        """Raise FingerprintMismatch if the .plan on disk is not the one this fingerprint describes."""
        if len(plan) != self.engine_bytes or sha256_bytes(plan) != self.engine_sha256:
            self._plan_mismatch(len(plan))

    def read_plan(self, path: str | Path) -> bytes:
        """The .plan this fingerprint describes, read once; one of another size is refused before it is read (a
        truncated copy, another engine, a huge file), so no more than engine_bytes + 1 bytes are ever read."""
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size != self.engine_bytes:
                self._plan_mismatch(size)
            plan = fh.read(self.engine_bytes + 1)  # +1: a file that grew since fstat shows as too long
        self.check_engine_bytes(plan)
        return plan

    def _plan_mismatch(self, size: int) -> NoReturn:
        raise FingerprintMismatch(
            f"engine {self.graph!r}: the .plan file does not match its fingerprint "
            f"({size} bytes vs {self.engine_bytes} recorded) — {REBUILD_HINT}"
        )


def graph_hashes(files: Mapping[str, Any], file: str, data_file: str | None) -> tuple[str, str | None]:
    """The manifest's SHA-256 of a graph's .onnx and of its external-data file (None when it has none)."""
    return files[file]["sha256"], (files[data_file]["sha256"] if data_file else None)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of an in-memory blob (engine plans)."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed (ONNX external data can be GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _checked(name: str, value: Any, source: str) -> Any:
    """Type-check one decoded field; bools are rejected where ints are expected (JSON has no int/bool split)."""

    def bad(expected: str) -> FingerprintError:
        return FingerprintError(f"{source}: field {name!r} must be {expected}, got {value!r}")

    if name == "compute_capability":
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise bad("a [major, minor] list of two ints")
        return (value[0], value[1])
    if name == "strongly_typed":
        if not isinstance(value, bool):
            raise bad("a bool")
        return value
    if name == "build_seconds":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise bad("a finite number >= 0")
        return float(value)
    if name in _SHA256_FIELDS:
        if value is None and name == "data_sha256":
            return value
        if not isinstance(value, str) or not _is_sha256(value):
            raise bad("64 lower-case hex digits (a SHA-256)" + (" or null" if name == "data_sha256" else ""))
        return value
    if name in _INT_RANGES:
        low, high = _INT_RANGES[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise bad(f"an int in [{low}, {high}]")
        return value
    if not isinstance(value, str) or not value or len(value) > 256:
        raise bad("a non-empty string of at most 256 characters")
    return value


MAX_FINGERPRINT_BYTES = 1 << 20  # a real one is ~600 bytes
_SHA256_FIELDS = ("onnx_sha256", "engine_sha256", "data_sha256")
_INT_RANGES = {"format_version": (0, 1 << 31), "builder_optimization_level": (0, 5),
               "workspace_bytes": (0, 1 << 50), "engine_bytes": (0, 1 << 50)}


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def file_records(folder: str | Path) -> dict[str, dict[str, int | str]]:
    """The manifest's `files` section: {name: {sha256, bytes}} for every file directly in `folder`."""
    return {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(Path(folder).iterdir()) if p.is_file()}
