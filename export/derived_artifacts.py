"""A new artifact folder derived from an exported one (int8 for onnxruntime, fp16/bf16 for TensorRT):
the checks on source and destination, and the manifest bookkeeping both derivations share.

A derived folder keeps the source's contract (docs/10-artifact-contract.md) — same I/O names, dtypes, shapes,
normalisation, tokenizer, gate calibration — and records how it was made under one key (`quantization`,
`mixed_precision`), which also marks it as derived: a derived folder is never derived again, and only a
folder carrying some derivation key is ever replaced at the destination.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from export.signing import stamp_identity
from runtime.atomic_folder import destination_problem
from runtime.fingerprint import file_records, sha256_file
from runtime.manifest import GRAPH_NAMES, Manifest, ManifestError
from runtime.strict_json import strict_dumps

DERIVATION_KEYS = ("quantization", "mixed_precision")


class DerivationInputError(ValueError):
    """Source / destination cannot be used; the message names the option and the problem (CLI: exit 2)."""


def derivation_of(raw: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(key, record) of the derivation that made this manifest, or None for a plain export."""
    for key in DERIVATION_KEYS:
        record = raw.get(key)
        if isinstance(record, dict) and record:
            return key, record
    return None


def check_patterns(flag: str, patterns: Sequence[str]) -> None:
    """Every module/node-name pattern of `flag` must compile; the error names the flag and the pattern."""
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise DerivationInputError(f"{flag} {pattern!r} is not a valid regular expression ({exc})") from None


def check_source(src: Path) -> Manifest:
    """An intact, underived artifact folder (hashes verified)."""
    if not src.exists():
        raise DerivationInputError(f"--src {src} does not exist (export it first: `make export`)")
    if not src.is_dir():
        raise DerivationInputError(f"--src {src} is not a folder (expected an artifact folder with manifest.json)")
    if not (src / "manifest.json").is_file():
        raise DerivationInputError(f"--src {src} has no manifest.json: not an artifact folder (`make export` writes one)")
    try:
        manifest = Manifest.load(src, verify_hashes=True)
    except ManifestError as exc:
        raise DerivationInputError(f"--src {src} is not a usable artifact folder: {exc}") from None
    derived = derivation_of(manifest.raw)
    if derived:
        key, record = derived
        what = "quantized" if key == "quantization" else "mixed precision"
        raise DerivationInputError(f"--src {src} is already {what} ({record.get('mode', record.get('precision'))}); "
                                   f"start from the float32 export it came from ({record.get('source', '?')})")
    return manifest


def source_unchanged(src: Path, manifest: Manifest) -> str:
    """Verify `src` again once everything was read from it and return its manifest.json's SHA-256 (the record's
    `source_manifest_sha256`): a re-export landing in `src` half way would mix two models, all hashes fresh."""
    try:
        before = sha256_file(src / "manifest.json")
        digest = Manifest.load(src, verify_hashes=True).digest
        after = sha256_file(src / "manifest.json")
    except (ManifestError, OSError) as exc:
        raise DerivationInputError(f"--src {src} changed while it was being derived ({str(exc)[:200]}); nothing "
                                   "written: run again") from None
    if digest != manifest.digest or before != after:
        raise DerivationInputError(f"--src {src} changed while it was being derived (digest {manifest.digest[:19]}… "
                                   f"at the start, {digest[:19]}… now: another export?); nothing written: run again")
    return after


def check_destination(src: Path, dst: Path) -> None:
    """`dst` must be outside `src`, and new, empty, or an earlier derived folder (which is replaced)."""
    problem = destination_problem(
        dst, "--dst", lambda raw: derivation_of(raw) is not None,
        "exists and is not a derived artifact folder; choose another --dst (only an earlier quantized or "
        "mixed-precision folder is replaced)", keep_apart=[("--src", src)])
    if problem:
        raise DerivationInputError(problem)


def copy_unchanged(src: Path, tmp: Path, manifest: Manifest) -> None:
    """Copy every recorded file that is not a graph (tokenizer, calibration, plots) into the new folder."""
    graph_files = {f for g in GRAPH_NAMES for f in (manifest.graphs[g].file, manifest.graphs[g].data_file) if f}
    for fname in manifest.files:
        if fname not in graph_files:
            shutil.copyfile(src / fname, tmp / fname)


def finish_manifest(tmp: Path, raw: dict[str, Any], producer: str, key: str, record: dict[str, Any]) -> Manifest:
    """Stamp hashes, producer, the derivation record and the identity digest (unsigned: sign the new folder
    with `python -m export.signing sign`); write manifest.json and load it back verified."""
    raw["files"] = file_records(tmp)
    raw["producer"] = producer
    raw["created_utc"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    raw[key] = record
    stamp_identity(raw)
    (tmp / "manifest.json").write_text(strict_dumps(raw, indent=2))
    return Manifest.load(tmp, verify_hashes=True)


def check_loads(folder: Path, manifest: Manifest) -> None:
    """Every graph of the new folder must load in onnxruntime (CPU) with exactly the manifest's I/O."""
    import onnxruntime as ort

    from runtime.backend_onnxruntime import check_session_io

    for g in GRAPH_NAMES:
        sess = ort.InferenceSession(str(folder / manifest.graphs[g].file), providers=["CPUExecutionProvider"])
        check_session_io(sess, manifest.graphs[g])
        del sess
