"""Artifact identity: one SHA-256 digest over the manifest (and so every file it lists), and its Ed25519 signature.

The digest is `sha256:` + SHA-256 of DOMAIN + the canonical JSON of manifest.json without its `identity` key
(keys sorted, no whitespace, ASCII, no NaN). The manifest's `files` section holds the SHA-256 and size of every
file the folder uses, so the digest pins the graphs, external data and tokenizer too (a hash tree of depth 1).
A signature is Ed25519 over SIGNED_PREFIX + the digest string, made with `python -m export.signing` on the
export machine; the robot holds only public keys. See docs/09-reliability.md for what this does and does not
protect against.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

DOMAIN = b"smolvla-cls-edge artifact manifest v2\n"
SIGNED_PREFIX = b"smolvla-cls-edge artifact signature v1\n"
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


class IdentityError(ValueError):
    """The folder is not the one expected: digest differs, signature missing / wrong / from an untrusted key."""


def canonical_bytes(raw: Mapping[str, Any], domain: bytes = DOMAIN) -> bytes:
    """The bytes the digest covers: the record minus `identity`, canonically serialised after a domain prefix."""
    return domain + _canonical({k: v for k, v in raw.items() if k != "identity"})


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def part_hashes(raw: Mapping[str, Any]) -> dict[str, str]:
    """A short hash per top-level section and per `files` entry (`files/<name>`). Recorded next to the digest at
    export, they only serve to *name* what changed when the digest does not match (they are not trusted)."""
    parts = {}
    for key, value in raw.items():
        if key == "identity":
            continue
        if key == "files" and isinstance(value, Mapping):
            parts.update({f"files/{name}": hashlib.sha256(_canonical(entry)).hexdigest()[:16]
                          for name, entry in value.items()})
        else:
            parts[key] = hashlib.sha256(_canonical(value)).hexdigest()[:16]
    return parts


def _changed_parts(raw: Mapping[str, Any], recorded: Any) -> str:
    """'' or ' (…: what differs from the export's record)', e.g. ' (the recorded hash of prefix.onnx)'."""
    if not isinstance(recorded, Mapping):
        return ""
    now = part_hashes(raw)
    names = sorted(k for k in set(now) | set(recorded) if now.get(k) != recorded.get(k))
    if not names:
        return ""
    shown = [f"the recorded hash of {n[6:]}" if n.startswith("files/") else f"'{n}'" for n in names[:4]]
    more = f" and {len(names) - 4} more" if len(names) > 4 else ""
    return f" ({', '.join(shown)}{more} changed)"


def artifact_digest(raw: Mapping[str, Any], domain: bytes = DOMAIN) -> str:
    """`sha256:<hex>` identifying this manifest and every file it lists."""
    return "sha256:" + hashlib.sha256(canonical_bytes(raw, domain)).hexdigest()


def check_digest_text(value: str, what: str) -> str:
    """Normalise a user-given digest (`sha256:` prefix optional, any case); raise naming `what` if malformed."""
    if not isinstance(value, str):
        raise IdentityError(f"{what} must be a string like sha256:<64 hex digits>, got {type(value).__name__}")
    text = value.strip().lower()
    text = text if text.startswith("sha256:") else "sha256:" + text
    if not DIGEST_RE.match(text):
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise IdentityError(f"{what} must look like sha256:<64 hex digits>, got {shown!r}")
    return text


def key_id(public_raw: bytes) -> str:
    """Short id of an Ed25519 public key: the first 16 hex digits of SHA-256 of its 32 raw bytes."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def load_public_key(source: str | Path | bytes) -> Any:
    """An Ed25519 public key from a PEM file (path) or PEM bytes; IdentityError naming the file otherwise."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        key = serialization.load_pem_public_key(data[:65536])
    except OSError as exc:
        raise IdentityError(f"trusted key '{name}' cannot be read ({exc.strerror})") from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise IdentityError(f"trusted key '{name}' is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise IdentityError(f"trusted key '{name}' is not an Ed25519 public key")
    return key


def public_raw(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def signature_record(private_key: Any, digest: str) -> dict[str, str]:
    """The manifest's `identity.signature` for `digest`, signed with an Ed25519 private key."""
    value = private_key.sign(SIGNED_PREFIX + digest.encode("ascii"))
    return {"algorithm": "ed25519", "key_id": key_id(public_raw(private_key.public_key())),
            "value": base64.b64encode(value).decode("ascii")}


def stamp_identity(raw: dict[str, Any], private_key: Any = None, domain: bytes = DOMAIN) -> str:
    """Set `raw["identity"]` to the digest of `raw` (and its signature when a key is given); return the digest."""
    digest = artifact_digest(raw, domain)
    raw["identity"] = {"digest": digest, "parts": part_hashes(raw)}
    if private_key is not None:
        raw["identity"]["signature"] = signature_record(private_key, digest)
    return digest


def verify_identity(raw: Mapping[str, Any], *, expected_digest: str | None = None, trusted_keys: Iterable[Any] = (),
                    domain: bytes = DOMAIN, what: str = "manifest.json") -> str:
    """Check the recorded digest, an expected digest and (when keys are given) the signature; return the digest.

    `trusted_keys` are Ed25519 public keys (see `load_public_key`); with any given, an unsigned folder or one
    signed by another key is refused.
    """
    from cryptography.exceptions import InvalidSignature

    digest = artifact_digest(raw, domain)
    identity = raw.get("identity") if isinstance(raw.get("identity"), Mapping) else {}
    if identity.get("digest") != digest:
        raise IdentityError(f"{what} was changed after export{_changed_parts(raw, identity.get('parts'))}: its "
                            f"contents hash to {digest[:19]}…, its recorded digest is {str(identity.get('digest'))[:19]}…")
    if expected_digest is not None and check_digest_text(expected_digest, "expected digest") != digest:
        raise IdentityError(f"artifact digest {digest} is not the expected "
                            f"{check_digest_text(expected_digest, 'expected digest')}: another or changed export")
    keys = {key_id(public_raw(k)): k for k in trusted_keys}
    if keys:
        sig = identity.get("signature")
        if isinstance(sig, Mapping) and not (isinstance(sig.get("key_id"), str) and isinstance(sig.get("value"), str)):
            sig = None  # malformed records are refused as unsigned (the manifest schema already refuses them)
        if not sig:
            raise IdentityError(f"{what} is unsigned but a trusted key is required "
                                "(sign it on the export machine: python -m export.signing sign)")
        key = keys.get(sig["key_id"])
        if key is None:
            raise IdentityError(f"{what} is signed by key {sig['key_id']}, which is not a trusted key "
                                f"({', '.join(sorted(keys))})")
        try:
            key.verify(base64.b64decode(sig["value"], validate=True), SIGNED_PREFIX + digest.encode("ascii"))
        except (InvalidSignature, ValueError):
            raise IdentityError(f"{what}: the signature by key {sig['key_id']} does not verify "
                                "(signature or contents altered)") from None
    return digest
