"""Calibrates every threshold gate of the gate benchmark on the same held-out episodes, by one rule.

For each family (drift, consistency, jump, pixel, state) the policy runs with the family's gate at a threshold it
never reaches (so only an empty queue resamples: open-loop chunks) on held-out episodes of every benchmark
kind (seed stream `bench_calibration`, never used for training, export calibration or the benchmark). Each
tick at which the gate checked gives one distance, labelled by what happened since the plan was made:
`quiet` (nothing), `irrelevant` (only irrelevant changes) or `relevant` (the goal moved). `jump` compares
consecutive prefix ticks, so its labels are per tick (`step_label`): what became visible since the previous
tick, with an ongoing goal move as its own label `moving` (kept out of the threshold and the AUROCs: a move
changes the scene a little every tick, which is not what a step detector is for). The default
threshold is the 95th percentile of the `quiet` distances (≈ 5 % spurious resamples when nothing happened),
the rule of the export-time CLS calibration (`export/graphs/gate_calibration.py`, whose rollouts have no
irrelevant changes); the sweep uses other quantiles of the same distribution and 3 × p99. A plan-age-capped gate
(`any:<family>,interval:K`) replans on the clock from plan age K on, so its change part decides only on ages
< K: its p95 is over the quiet distances at those ages (`capped_p95`; the export's horizon rule), since quiet
distances grow with the plan's age. Irrelevant changes are left out
of the threshold on purpose: whether a gate ignores them is what the benchmark measures. The manifest's own
CLS thresholds are added to the sweep as `manifest`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from runtime.gate import MANIFEST_THRESHOLD_GATES, MAX_COSINE_DISTANCE, observing_gate

THRESHOLD_FAMILIES = ("drift", "consistency", "jump", "pixel", "state")
PER_TICK_FAMILIES = ("jump",)  # families whose distance compares consecutive ticks, not now vs the plan
LABELS = ("quiet", "irrelevant", "relevant", "moving")
DEFAULT_QUANTILE = 95.0
SWEEP_QUANTILES = (80.0, 90.0, 95.0, 98.0, 99.0)
ABOVE_P99 = 3.0
MANIFEST_LABEL = "manifest"  # the manifest's own threshold (families it calibrates only)
SWEEP_LABELS = (*(f"p{p:g}" for p in SWEEP_QUANTILES), f"{ABOVE_P99:g}xp99", MANIFEST_LABEL)  # every sweep label


def auroc(negatives: Sequence[float], positives: Sequence[float]) -> float | None:
    """Mann-Whitney AUROC from average ranks: P(positive > negative), ties half."""
    if len(negatives) == 0 or len(positives) == 0:
        return None
    values = np.concatenate([np.asarray(negatives, float), np.asarray(positives, float)])
    order = values.argsort(kind="mergesort")
    ranks = np.empty(len(values))
    sorted_vals = values[order]
    start = 0
    for end in range(1, len(values) + 1):  # average rank over runs of equal values
        if end == len(values) or sorted_vals[end] != sorted_vals[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    n_pos, n_neg = len(positives), len(negatives)
    return float((ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def label(plan_tick: int, tick: int, changes: Sequence[Any]) -> str:
    """What changed since the plan made at `plan_tick`, as seen at `tick`: a change that started after the plan,
    or a lasting one (a move, a noise burst) still acting at planning time (its end changes the image again)."""
    # a goal move's last step is at its end tick (a plan made then saw the final goal); an irrelevant lasting
    # change ending at the planning tick still changes the image back at end + 1
    since = [c for c in changes if c.tick <= tick and (c.tick > plan_tick or (
        c.duration > 1 and (c.end > plan_tick if c.relevant else c.end >= plan_tick)))]
    if any(c.relevant for c in since):
        return "relevant"
    return "irrelevant" if since else "quiet"


def step_label(prev_tick: int, tick: int, changes: Sequence[Any]) -> str:
    """What became visible between the previous prefix tick and `tick` (a per-tick gate's label):
    `relevant` = a goal change started; `irrelevant` = only irrelevant changes started, continue (a noise burst
    redraws its noise every tick) or ended (the image changes back); `moving` = a goal move that started
    earlier is still going (and nothing above); `quiet` = nothing started, ongoing or ending."""
    started = [c for c in changes if prev_tick < c.tick <= tick]
    if any(c.relevant for c in started):
        return "relevant"
    # a lasting change shows a new image on each of its later ticks and (irrelevant: the image changes back)
    # on the tick after its end; a goal move's last step is at its end tick
    lasting = [c for c in changes if c.duration > 1 and c.tick < tick]
    if started or any(not c.relevant and c.end + 1 > prev_tick for c in lasting):
        return "irrelevant"
    return "moving" if any(c.relevant and c.end > prev_tick for c in lasting) else "quiet"


def record_distances(make_policy: Callable[[Any], Any], env: Any, family: str,
                     episodes: Sequence[tuple[int, str]], bar: Any = None) -> dict[str, list[float]]:
    """Distances of `family`'s gate per label over `episodes` ((seed, kind) pairs), never firing. Since-plan
    families are labelled by `label`, per-tick ones (`PER_TICK_FAMILIES`) by `step_label` against the previous
    tick on which the prefix ran. `ages`: per label, each distance's plan age (the policy's ticks_since_plan)."""
    policy = make_policy(observing_gate(family))  # checks, reports its distance, never fires
    per_tick = family in PER_TICK_FAMILIES
    out: dict[str, Any] = {k: [] for k in LABELS}
    ages: dict[str, list[int]] = {k: [] for k in LABELS}  # plan age (ticks since the plan) of each distance
    out["ages"] = ages
    for seed, kind in episodes:
        obs = env.reset(seed, kind)
        policy.reset(seed=seed)
        plan_tick, prefix_tick, done, i = 0, -1, False, 0
        while not done:
            action = policy.step(obs)
            info = policy.last_info
            if info.resampled:
                plan_tick = i
            elif info.gate_checked and info.gate_distance is not None:
                lab = step_label(prefix_tick, i, env.schedule) if per_tick else label(plan_tick, i, env.schedule)
                out[lab].append(float(info.gate_distance))
                ages[lab].append(i - plan_tick)
            if info.prefix_ran:
                prefix_tick = i
            obs, done, _ = env.step(action)
            i += 1
        if bar is not None:
            bar.update(1)
    return out


def summarize_family(dist: dict[str, Any], manifest_default: float | None = None,
                     family: str | None = None, caps: Sequence[int] = ()) -> dict:
    """Quantiles, AUROCs and the threshold sweep of one family (every label of SWEEP_LABELS; `manifest` only
    with a `manifest_default`), and per cap K in `caps` the p95 of the quiet distances at plan ages < K
    (`capped_p95`, needs `dist["ages"]`). A cosine family's (drift, consistency, jump) thresholds from 2 on are
    left out: no distance exceeds them, and `make_gate` refuses such a spec."""
    quiet = dist["quiet"]
    if not quiet:
        raise ValueError("calibration: no quiet distances recorded (too few calibration episodes?)")
    q = {f"p{p:g}": float(np.percentile(quiet, p)) for p in SWEEP_QUANTILES}
    sweep = [(f"p{p:g}", q[f"p{p:g}"]) for p in SWEEP_QUANTILES]
    sweep.append((f"{ABOVE_P99:g}xp99", ABOVE_P99 * q["p99"]))  # above the quiet band: fires on events only
    if manifest_default is not None:
        sweep.append((MANIFEST_LABEL, float(manifest_default)))
    # every label is kept, ties included (p80 = p95 on a coarse distribution): a baseline keyed on a label
    # (`<family>:p95`, `+cap:p95/K`, random matched to p95, --refine names) must always resolve
    upper = MAX_COSINE_DISTANCE if family in MANIFEST_THRESHOLD_GATES else math.inf
    sweep = sorted(((name, thr) for name, thr in sweep if thr < upper), key=lambda s: s[1])

    capped = {}
    if caps:
        ages = dist.get("ages", {}).get("quiet")
        if ages is None or len(ages) != len(quiet):
            raise ValueError("calibration: the quiet distances carry no plan ages, needed for the capped gates")
        for k in caps:
            young = [d for d, a in zip(quiet, ages) if a < k]
            if young and (thr := float(np.percentile(young, DEFAULT_QUANTILE))) < upper:
                capped[str(k)] = thr  # no quiet tick younger than K (K = 1): no capped threshold, warned

    def mean(xs: list[float]) -> float | None:
        return float(np.mean(xs)) if xs else None

    return {"n": {k: len(dist.get(k, [])) for k in LABELS}, "quiet_quantiles": q,
            "mean": {k: mean(dist.get(k, [])) for k in LABELS},
            "default_threshold": q[f"p{DEFAULT_QUANTILE:g}"],
            "auroc_relevant_vs_quiet": auroc(dist["quiet"], dist["relevant"]),
            "auroc_relevant_vs_irrelevant": auroc(dist["irrelevant"], dist["relevant"]),
            "sweep": sweep, "capped_p95": capped}


def missing_labels(calibration: dict, labels: Sequence[str], manifest_families: Sequence[str]) -> list[str]:
    """`family:label` for each requested label a family's sweep lacks (`manifest` only counts for the families
    in `manifest_families`, the ones the manifest calibrates): their policies would silently not run."""
    out = []
    for fam, cal in calibration.items():
        have = {lb for lb, _ in cal.get("sweep", [])}
        out += [f"{fam}:{lb}" for lb in dict.fromkeys(labels) if lb not in have
                and (lb != MANIFEST_LABEL or fam in manifest_families)]
    return out
