"""The one JSON reading and writing of every record the runtime trusts (manifest, engine identity, fingerprints,
tokenizer): an object with a key twice is refused, since JSON tools disagree on which value counts (Python keeps
the last, others the first), so a signed or inspected file could mean two things; NaN / Infinity are refused."""

from __future__ import annotations

import json
import math
from typing import Any


class DuplicateKeyError(ValueError):
    """A JSON object has the same key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(f"key {key[:80]!r} appears twice in one object: JSON readers disagree on which "
                                    "value counts")
        out[key] = value
    return out


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed (JSON numbers must be finite)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to inf
        raise ValueError(f"number {text[:40]} is not finite")
    return value


def strict_loads(data: str | bytes) -> Any:
    """Decoded JSON; ValueError (DuplicateKeyError, JSONDecodeError, UnicodeDecodeError) or RecursionError otherwise."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant,
                      parse_float=_finite_float)


def strict_dumps(value: Any, **kwargs: Any) -> str:
    """`json.dumps(value, **kwargs)` that `strict_loads` reads back (refuses keys like 1 and "1" in one dict)."""
    text = json.dumps(value, allow_nan=False, **kwargs)
    strict_loads(text)
    return text
