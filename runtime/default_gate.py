"""The grammar of the manifest's `gate.default`: which gate an export may recommend (docs/10-artifact-contract.md).

A default is a CLS gate that takes its thresholds from the manifest's calibration, optionally with a plan-age
cap: `PART` or `any:PART,PART[,...]`, PART = drift | consistency | jump | interval:k, with at least one CLS part
(drift, consistency, jump), each part at most once, at most one `interval:k` (1 <= k <= n_action_steps) and no
explicit thresholds. `jump` needs the manifest's `gate.jump` calibration. Why a cap: on the gate benchmark a pure
change gate loses episodes to staleness in quiet stretches, and `any:drift,interval:6` does not (docs/11).
The schema checks the grammar (`check_default_gate`); `runtime.manifest` checks the parts that need other
sections (`check_default_gate_fits`). Export uses the same functions, so both sides agree on one rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

CLS_PARTS = ("drift", "consistency", "jump")
_PART = r"(?:drift|consistency|jump|interval:[1-9][0-9]{0,3})"
# the JSON Schema pattern of gate.default (docs/manifest.schema.json): the shape; `check_default_gate` the rest
PATTERN = rf"^(?:drift|consistency|jump|any:{_PART}(?:,{_PART})+)$"
FIELD = "gate.default"


def default_gate_parts(spec: str) -> tuple[tuple[str, ...], int | None]:
    """(CLS parts, cap k or None) of a gate.default spec; ValueError naming gate.default if it breaks the grammar."""
    if not isinstance(spec, str) or re.fullmatch(PATTERN, spec) is None:
        raise ValueError(f"{FIELD}: expected drift | consistency | jump or any: of those (each once, no thresholds) "
                         f"plus at most one interval:k, e.g. 'any:drift,interval:6'")
    parts = spec.removeprefix("any:").split(",")
    if len(set(parts)) != len(parts):
        raise ValueError(f"{FIELD}: a part appears twice")
    caps = [int(p.partition(":")[2]) for p in parts if p.startswith("interval:")]
    if len(caps) > 1:
        raise ValueError(f"{FIELD}: at most one interval:k (the plan-age cap)")
    cls = tuple(p for p in parts if p in CLS_PARTS)
    if not cls:
        raise ValueError(f"{FIELD}: needs a CLS part (drift, consistency or jump) besides the cap")
    return cls, (caps[0] if caps else None)


def check_default_gate(spec: str) -> str:
    """`spec` if it follows the grammar (the schema's field rule), else ValueError naming gate.default."""
    default_gate_parts(spec)
    return spec


def check_default_gate_fits(spec: str, n_action_steps: int, has_jump: bool,
                            thresholds: Mapping[str, float | None] | None = None) -> None:
    """The cross-section rules: the cap lies in 1..n_action_steps (a longer one never fires: the plan runs out
    first), `jump` comes with its calibration (gate.jump), and with `thresholds` (metric → default_threshold, the
    manifest's) every CLS part has one — the default gate takes it from there. ValueError naming the field."""
    cls, cap = default_gate_parts(spec)
    if cap is not None and not 1 <= cap <= n_action_steps:
        raise ValueError(f"{FIELD}: interval:{cap} is out of range 1..{n_action_steps} (dims.n_action_steps) in {spec!r}")
    if "jump" in cls and not has_jump:
        raise ValueError(f"{FIELD}: {spec!r} uses jump, but the manifest has no gate.jump calibration")
    for part in cls if thresholds is not None else ():
        if thresholds.get(part) is None:
            raise ValueError(f"gate.{part}.default_threshold: not set, but {FIELD} {spec!r} takes its {part} "
                             "threshold from there")


def capped(base: str, cap: int | None) -> str:
    """`base` (a default spec without a cap) with `interval:cap` appended as an `any:` part; `base` if cap is None."""
    if cap is None:
        return base
    cls, own = default_gate_parts(base)
    if own is not None:
        raise ValueError(f"{FIELD}: {base!r} already has a cap (interval:{own})")
    return f"any:{','.join(cls)},interval:{cap}"
