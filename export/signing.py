"""Artifact identity on the export machine: stamp the digest into a manifest, sign it, generate the key pair.

    python -m export.signing keygen --out keys/export            # keys/export.key (private, 0600) + .pub
    python -m export.signing sign --artifacts artifacts/onnx --key keys/export.key
    python -m export.signing sign-engines --engines artifacts/engines --artifacts artifacts/onnx-fp16 --key …

Copy only the `.pub` file to the robot and run it with `--trusted-key keys/export.pub` (or
`EdgePolicy(..., trusted_keys=[...])`): it then runs only folders signed by this machine. The digest and the
signed message are defined in `runtime.artifact_identity` (docs/10-artifact-contract.md, "Identity").
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from runtime.artifact_files import ArtifactFileError, confined_path
from runtime.artifact_identity import stamp_identity
from runtime.engine_identity import write_engine_record
from runtime.fingerprint import REBUILD_HINT, EngineFingerprint, FingerprintError, FingerprintMismatch, graph_hashes
from runtime.manifest import GRAPH_NAMES, Manifest, ManifestError
from runtime.strict_json import strict_dumps


class SigningError(ValueError):
    """A key or folder cannot be used; the message names the option and the problem (CLI: exit 2)."""


def load_private_key(path: str | Path, flag: str = "--key") -> Any:
    """An Ed25519 private key from an unencrypted PEM file written by `keygen`; errors name `flag`, the option
    the user gave the key with (`--key` here, `--sign-key` in the export)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise SigningError(f"{flag} {path}: cannot be read ({exc.strerror})") from None
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{flag} {path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{flag} {path}: not an Ed25519 private key")
    return key


def generate_keypair(stem: str | Path) -> tuple[Path, Path]:
    """Write `<stem>.key` (PKCS#8 PEM, owner-only) and `<stem>.pub` (SubjectPublicKeyInfo PEM); refuse to overwrite."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    stem = Path(stem)
    private, public = stem.with_name(stem.name + ".key"), stem.with_name(stem.name + ".pub")
    for p in (private, public):
        if p.exists():
            raise SigningError(f"--out {stem}: {p} exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo))
    except OSError as exc:
        raise SigningError(f"--out {stem}: cannot write the key pair there ({exc.strerror}: "
                           f"{exc.filename}); choose a path in a folder you can write") from None
    return private, public


def write_manifest(folder: Path, raw: dict[str, Any]) -> None:
    """manifest.json written under a temporary name and renamed (a half-written manifest never exists);
    SigningError naming --artifacts when the folder cannot take it (the old manifest then stays)."""
    tmp = folder / "manifest.json.tmp"
    try:
        tmp.write_text(strict_dumps(raw, indent=2))
        tmp.replace(folder / "manifest.json")
    except OSError as exc:
        raise SigningError(f"--artifacts {folder}: cannot write the signed manifest.json ({exc.strerror}: "
                           f"{exc.filename}); nothing changed") from None


def sign_folder(folder: str | Path, key_path: str | Path) -> str:
    """Verify an artifact folder (hashes, digest) and sign its digest in place; returns the digest."""
    folder = Path(folder)
    key = load_private_key(key_path)
    try:
        manifest = Manifest.load(folder, verify_hashes=True)
    except ManifestError as exc:
        raise SigningError(f"--artifacts {folder}: not an intact artifact folder: {exc}") from None
    raw = dict(manifest.raw)
    digest = stamp_identity(raw, key)
    write_manifest(folder, raw)
    return digest


def sign_engines(engines: str | Path, artifacts: str | Path, key_path: str | Path) -> str:
    """Check each engine against its fingerprint and the verified ONNX folder (graph and external weights), then
    sign the engine set."""
    engines, key = Path(engines), load_private_key(key_path)
    try:
        manifest = Manifest.load(artifacts, verify_hashes=True)
    except ManifestError as exc:
        raise SigningError(f"--artifacts {artifacts}: not an intact artifact folder: {exc}") from None
    built = [g for g in GRAPH_NAMES if (engines / f"{g}.fingerprint.json").exists()]
    if not built:
        raise SigningError(f"--engines {engines}: no <graph>.fingerprint.json here (build with `make engine`)")
    checked: dict[str, bytes] = {}  # read once: what is checked here is what the record pins and the key signs
    for g in built:
        try:
            name = f"{g}.fingerprint.json"
            raw = EngineFingerprint.read_bytes(confined_path(engines, name))
            fp = EngineFingerprint.from_bytes(raw, str(engines / name))
            spec = manifest.graphs[g]
            found = fp.source_differences(*graph_hashes(manifest.files, spec.file, spec.data_file))
            if found:
                raise SigningError(f"--engines {engines}: {g} was not built from the graph and weights of "
                                   f"--artifacts {artifacts}: " + "; ".join(found) + f" — {REBUILD_HINT}")
            fp.read_plan(engines / f"{g}.plan")
        except (FingerprintError, FingerprintMismatch, ArtifactFileError, OSError) as exc:
            raise SigningError(f"--engines {engines}: {exc}") from None
        checked[g] = raw
    try:
        return write_engine_record(engines, manifest.digest, built, key, checked)
    except OSError as exc:
        raise SigningError(f"--engines {engines}: cannot write the signed engine record ({exc.strerror}: "
                           f"{exc.filename})") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.signing", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    kg = sub.add_parser("keygen", help="generate an Ed25519 key pair: <out>.key (keep here) and <out>.pub (robot)")
    kg.add_argument("--out", type=Path, default=Path("keys/export"))
    sg = sub.add_parser("sign", help="sign an artifact folder's digest in place")
    sg.add_argument("--artifacts", type=Path, default=Path("artifacts/onnx"))
    sg.add_argument("--key", type=Path, required=True, help="private key written by keygen")
    se = sub.add_parser("sign-engines", help="sign a TensorRT engine folder (fingerprints + artifact digest)")
    se.add_argument("--engines", type=Path, default=Path("artifacts/engines"))
    se.add_argument("--artifacts", type=Path, default=Path("artifacts/onnx"), help="the folder the engines came from")
    se.add_argument("--key", type=Path, required=True, help="private key written by keygen")
    args = parser.parse_args(argv)
    try:
        if args.command == "keygen":
            private, public = generate_keypair(args.out)
            print(f"[signing] wrote {private} (private: keep on this machine) and {public} (copy to the robot)")
        elif args.command == "sign":
            digest = sign_folder(args.artifacts, args.key)
            print(f"[signing] signed {args.artifacts}: {digest}")
        else:
            digest = sign_engines(args.engines, args.artifacts, args.key)
            print(f"[signing] signed engine set {args.engines}: {digest}")
    except SigningError as exc:
        print(f"signing: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
