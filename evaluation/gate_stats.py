"""Paired statistics for the gate evaluation: exact McNemar / sign tests on per-episode pairs and the
piecewise-linear interpolation of a success-vs-budget curve."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def mean_or_none(vals: Sequence[float | int | None]) -> float | None:
    """Mean of the values that are not None; None when there are none."""
    v = [float(x) for x in vals if x is not None]
    return float(np.mean(v)) if v else None


def interp_curve(points: Sequence[tuple[float, float]], x: float) -> tuple[float | None, bool]:
    """Piecewise-linear y(x) through (x, y) points (duplicates in x averaged); (y, extrapolated?)."""
    if not points:
        return None, True
    by_x: dict[float, list[float]] = {}
    for px, py in points:
        by_x.setdefault(float(px), []).append(float(py))
    xs = np.array(sorted(by_x))
    ys = np.array([np.mean(by_x[v]) for v in xs])
    return float(np.interp(x, xs, ys)), bool(x < xs[0] or x > xs[-1])


def paired_comparison(a: dict, b: dict) -> dict:
    """Per-episode pairs of two policies on the same (perturbed) seeds: success (McNemar) and, where both
    succeed, recovery time from the jump to success (sign test). When every policy succeeds, recovery time
    is what still separates a gate that reacts from one that waits for its interval."""
    sa = {e["seed"]: e["success"] for e in a["perturbed_episodes"]}
    sb = {e["seed"]: e["success"] for e in b["perturbed_episodes"]}
    ra = {e["seed"]: e.get("recovery_ticks") for e in a["perturbed_episodes"]}
    rb = {e["seed"]: e.get("recovery_ticks") for e in b["perturbed_episodes"]}
    common = [s for s in sa if s in sb]
    only_this = sum(sa[s] and not sb[s] for s in common)
    only_other = sum(sb[s] and not sa[s] for s in common)
    both_rec = [(ra[s], rb[s]) for s in common if ra.get(s) is not None and rb.get(s) is not None]
    faster = sum(x < y for x, y in both_rec)
    slower = sum(x > y for x, y in both_rec)
    return {"vs": b["name"], "n": len(common),
            "both": sum(sa[s] and sb[s] for s in common),
            "only_this": only_this, "only_other": only_other,
            "neither": sum(not sa[s] and not sb[s] for s in common),
            "mcnemar_p": mcnemar_exact_p(only_this, only_other),
            "recovery": {"n": len(both_rec), "faster": faster, "slower": slower,
                         "equal": len(both_rec) - faster - slower,
                         "mean_this": mean_or_none([x for x, _ in both_rec]),
                         "mean_other": mean_or_none([y for _, y in both_rec]),
                         "sign_test_p": mcnemar_exact_p(faster, slower)}}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate (sane at 0/n and n/n, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # exactly 0 / 1 at 0/n and n/n (rounding left 2.8e-17 at 0/11: an interval that missed its own estimate)
    return (0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half))


def fmt_p(p: float | None) -> str:
    """A p-value to 3 significant digits (0.125, 1.00, 0.00400): two decimals printed 0.004 as 0.00."""
    return "–" if p is None else f"{p:#.3g}"


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar test on the discordant pair counts (binomial, p = 1/2); the same
    computation is the exact sign test on paired wins/losses."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)
