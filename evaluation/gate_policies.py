"""Which gate configurations the gate evaluation runs: the policy specs, the calibrated threshold sweep and the
random gates matched to the CLS gates' firing rates."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from runtime.manifest import GateCalibration, Manifest

FAMILIES = ("always", "interval", "never", "drift", "consistency", "random", "state")
DEFAULT_FAMILIES = tuple(f for f in FAMILIES if f != "never")  # never == interval:chunk
CLS_FAMILIES = ("drift", "consistency")
STATE_MULTIPLES = (1, 2, 3, 5, 8)
INTERVAL_KS = (1, 2, 3, 5)


@dataclass(frozen=True)
class PolicySpec:
    """One gate configuration: `spec` is a `runtime.gate.make_gate` string."""

    family: str
    spec: str
    check_every: int = 1
    label: str = ""  # parameter label, e.g. "p95" (thresholds) or "k=5"
    param: float | None = None

    @property
    def name(self) -> str:
        base = f"{self.family}:{self.label}" if self.label else self.spec
        return base if self.check_every == 1 else f"{base}/m{self.check_every}"


def threshold_sweep(cal: GateCalibration | None, quick: bool = False) -> list[tuple[str, float]]:
    """(label, threshold) pairs from the calibration stats, sorted by value, duplicates dropped."""
    if cal is None:
        return []
    s = dict(cal.stats)
    pts: list[tuple[str, float]] = []
    if quick:
        if cal.default_threshold is not None:
            pts.append(("default", cal.default_threshold))
        elif "p95" in s:
            pts.append(("p95", s["p95"]))
    else:
        if "p50" in s:
            pts.append(("0.5xp50", 0.5 * s["p50"]))
        for q in ("p50", "p90", "p95", "p99"):
            if q in s:
                pts.append((q, s[q]))
        if "p99" in s:
            pts += [(f"{mult:g}xp99", mult * s["p99"]) for mult in (1.5, 2.0, 3.0)]
        if cal.default_threshold is not None:
            pts.append(("default", cal.default_threshold))
    out: list[tuple[str, float]] = []
    for label, thr in sorted(pts, key=lambda p: p[1]):
        if not math.isfinite(thr) or thr >= 2.0:  # cosine distance is <= 2: such a gate never fires
            continue
        if any(abs(thr - t) <= 1e-9 * max(1.0, abs(t)) for _, t in out):
            continue  # e.g. default == p95: keep the stats label
        out.append((label, float(thr)))
    return out


def base_policies(manifest: Manifest, max_step: float, quick: bool = False,
                  check_everys: Sequence[int] = (1, 2), families: Iterable[str] = FAMILIES) -> list[PolicySpec]:
    """Every deterministic policy of the sweep (random gates are added after, matched to CLS rates)."""
    fams = set(families)
    chunk = manifest.dims.n_action_steps
    out: list[PolicySpec] = []
    if "always" in fams:
        out.append(PolicySpec("always", "always"))
    if "interval" in fams:
        ks: tuple[int, ...] = (2,) if quick else INTERVAL_KS
        ks = tuple(sorted({k for k in ks if k < chunk} | {chunk}))
        out += [PolicySpec("interval", f"interval:{k}", 1, f"{k}" if k != chunk else f"{k}(chunk)", float(k))
                for k in ks]
    if "never" in fams:
        out.append(PolicySpec("never", "never"))
    for fam in CLS_FAMILIES:
        if fam not in fams:
            continue
        sweep = threshold_sweep(manifest.gate_calibration.get(fam), quick)
        ms = check_everys if not quick or fam == "drift" else (1,)
        for m in ms:
            out += [PolicySpec(fam, f"{fam}:{thr:.6g}", m, label, thr) for label, thr in sweep]
    if "state" in fams:
        mults = (3,) if quick else STATE_MULTIPLES
        out += [PolicySpec("state", f"state:{k * max_step:.6g}", 1, f"{k * max_step:.3g}", k * max_step) for k in mults]
    return out


def matched_random(results: Sequence[dict], max_n: int = 6, quick: bool = False) -> list[PolicySpec]:
    """random:p at the per-check firing rates the CLS gates (m=1) showed on perturbed episodes."""
    raw = [r["perturbed"]["fire_rate"] for r in results if r["family"] in CLS_FAMILIES and r["check_every"] == 1]
    rates = sorted({round(x, 3) for x in raw if x is not None} - {0.0})
    if not rates:
        rates = [0.1] if quick else [0.05, 0.1, 0.2, 0.5]
    if len(rates) > max_n:  # spread over the range in log space (low rates are crowded by high thresholds)
        targets = np.geomspace(rates[0], rates[-1], max_n)
        picked: list[float] = []
        for tgt in targets:
            left = [r for r in rates if r not in picked]
            picked.append(min(left, key=lambda r: abs(math.log(r) - math.log(tgt))))
        rates = sorted(picked)
    if quick:
        rates = rates[:1]
    return [PolicySpec("random", f"random:{p:g}", 1, f"{p:g}", float(p)) for p in rates]
