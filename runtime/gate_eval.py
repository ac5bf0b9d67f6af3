"""Closed-loop gate evaluation: which gate buys the most task success per full resample?

    python -m runtime.gate_eval --artifacts artifacts/onnx --out reports/gate [--episodes 30] [--seed 0] [--quick]

Every gate policy runs the SAME episode seeds of the simulated reach task (paired comparison: same scenes,
same target jumps, and the policy's noise stream / random gate re-seeded from the episode seed), on
perturbed episodes (the target jumps mid-episode) and on a smaller unperturbed set:

- `always` (resample every tick: the reactive upper bound, maximal compute);
- `interval:k` for k in {1, 2, 3, 5, chunk} (fixed replan interval; `chunk` = open-loop chunking);
- `drift` and `consistency` (the CLS gates) over a threshold sweep built from the manifest's gate
  calibration stats (0.5·p50, p50, p90, p95, p99, 1.5/2/3·p99, and the default threshold), each with
  check_every m in {1, 2};
- `random:p` with p matched to the firing rates the CLS gates showed (the matched-budget baseline);
- `state:thr` (raw-state L2 since planning, LeRobot-async-like), thr = {1, 2, 3, 5, 8} × the task's max step.

Per policy: success rate, full resamples / prefix passes / delta passes per episode, ticks from the
perturbation to the first resample at or after it, wall time per tick. Outputs `<out>/gate_eval.json`,
`<out>/gate_eval.md` (table + headline) and plots (`runtime.plots`, needs matplotlib): the Pareto view
(success vs full resamples per episode) and the gate timeline of one perturbed episode.

Headline: the best calibrated CLS gate whose perturbed success is within 5 points of `always` with at
most 40 % of always's resamples, compared against `interval:k` (and `random:p`) interpolated at the
same resample budget, plus paired per-episode win/loss counts.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.manifest import GateCalibration, Manifest
from runtime.policy import EdgePolicy

FAMILIES = ("always", "interval", "never", "drift", "consistency", "random", "state")
DEFAULT_FAMILIES = tuple(f for f in FAMILIES if f != "never")  # never == interval:chunk
CLS_FAMILIES = ("drift", "consistency")
FORCED_REASONS = ("queue_empty", "pending")  # resamples the gate did not decide
STATE_MULTIPLES = (1, 2, 3, 5, 8)
INTERVAL_KS = (1, 2, 3, 5)
SUCCESS_TOL = 0.05
BUDGET_FRAC = 0.40


# --------------------------------------------------------------------------------------------- specs
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
        ks = (2,) if quick else INTERVAL_KS
        ks = tuple(sorted({k for k in ks if k < chunk} | {chunk}))
        out += [PolicySpec("interval", f"interval:{k}", 1, f"{k}" if k != chunk else f"{k}(chunk)", float(k)) for k in ks]
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


# ------------------------------------------------------------------------------------------ episodes
def run_episode(policy: EdgePolicy, env: Any, seed: int, perturb: bool, timeline: bool = False) -> dict:
    """One closed-loop episode; per-episode numbers (and the per-tick trace when `timeline`)."""
    obs = env.reset(seed=seed, perturb=perturb)
    policy.reset(seed=seed)  # same noise stream / random-gate draws for every policy on this episode
    ticks: list[dict] = []
    ms: list[float] = []
    resample_ticks: list[int] = []
    gated = forced = bad = 0
    done = False
    i = 0
    while not done:
        goal_distance = float(np.linalg.norm(env.agent_position - env.goal_position)) if timeline else 0.0
        action = policy.step(obs)
        info = policy.last_info
        if not (action.shape == (policy.manifest.dims.action_dim,) and np.all(np.isfinite(action))):
            bad += 1
        ms.append(info.total_ms)
        if info.resampled:
            resample_ticks.append(i)
            if info.gate_reason in FORCED_REASONS:
                forced += 1
            else:
                gated += 1
        obs, done, _ = env.step(action)
        if timeline:
            ticks.append({"tick": i, "resampled": info.resampled, "reason": info.gate_reason,
                          "checked": info.gate_checked, "distance": info.gate_distance,
                          "threshold": info.gate_threshold, "prefix": info.prefix_ran,
                          "total_ms": round(info.total_ms, 3), "goal_distance": round(goal_distance, 5)})  # as observed this tick
        i += 1
    c = policy.episode_counters
    ptick = env.perturb_tick
    # the observation returned by env step `ptick` is the first to show the jump; the policy consumes it at
    # tick index `ptick` (0-based), so latency 0 = resampled on the very first perturbed observation
    latency = None
    if ptick is not None:
        after = [t for t in resample_ticks if t >= ptick]
        latency = (after[0] - ptick) if after else None
    ok = bool(env.success)
    rec = {
        "seed": int(seed), "perturbed": perturb, "success": ok, "steps": int(env.t), "perturb_tick": ptick,
        "recovery_ticks": (int(env.t) - ptick) if ok and ptick is not None else None,
        "resamples": c.resamples, "gated_resamples": gated, "forced_resamples": forced,
        "prefix_passes": c.prefix_passes, "delta_passes": c.delta_passes, "gate_checks": c.gate_checks,
        "faults": c.faults, "fallbacks": c.fallbacks, "clipped": c.clipped, "bad_actions": bad,
        "resample_latency": latency, "mean_tick_ms": float(np.mean(ms)) if ms else 0.0,
        "_tick_ms": ms,
    }
    if timeline:
        rec["_timeline"] = ticks
    return rec


def pick_timeline_episode(env: Any, seeds: Sequence[int], chunk: int) -> int:
    """First perturbed episode whose jump falls mid-chunk (not where an open-loop plan runs out anyway), so the
    timeline shows whether the gate itself reacts; 0 when none does."""
    for j, s in enumerate(seeds):
        env.reset(seed=s, perturb=True)
        t = env.perturb_tick
        if t is not None and min(3, chunk // 2) <= t % chunk <= chunk - min(3, chunk // 2):
            return j
    return 0


def _mean(vals: Sequence[float | int | None]) -> float | None:
    v = [float(x) for x in vals if x is not None]
    return float(np.mean(v)) if v else None


def summarize(episodes: Sequence[dict]) -> dict:
    """Aggregate per-episode records of one policy on one episode set."""
    if not episodes:
        return {}
    n = len(episodes)
    ticks = sum(e["steps"] for e in episodes)
    checks = sum(e["gate_checks"] for e in episodes)
    gated = sum(e["gated_resamples"] for e in episodes)
    all_ms = np.concatenate([np.asarray(e["_tick_ms"], dtype=np.float64) for e in episodes])
    lat = [e["resample_latency"] for e in episodes if e["perturb_tick"] is not None]
    return {
        "n_episodes": n,
        "success_rate": sum(e["success"] for e in episodes) / n,
        "ticks_per_episode": ticks / n,
        "resamples_per_episode": sum(e["resamples"] for e in episodes) / n,
        "gated_resamples_per_episode": gated / n,
        "prefix_passes_per_episode": sum(e["prefix_passes"] for e in episodes) / n,
        "delta_passes_per_episode": sum(e["delta_passes"] for e in episodes) / n,
        "gate_checks_per_episode": checks / n,
        "resamples_per_tick": sum(e["resamples"] for e in episodes) / max(ticks, 1),
        "fire_rate": (gated / checks) if checks else None,  # gate-decided resamples per gate check
        "perturb_to_resample_ticks": _mean(lat),
        "perturb_to_resample_p90": float(np.percentile([x for x in lat if x is not None], 90))
        if any(x is not None for x in lat) else None,
        "no_resample_after_perturb": sum(x is None for x in lat),
        "recovery_ticks": _mean([e["recovery_ticks"] for e in episodes]),
        "ms_per_tick": float(all_ms.mean()) if all_ms.size else 0.0,
        "ms_per_tick_p50": float(np.percentile(all_ms, 50)) if all_ms.size else 0.0,
        "ms_per_tick_p90": float(np.percentile(all_ms, 90)) if all_ms.size else 0.0,
        "faults": sum(e["faults"] for e in episodes),
        "bad_actions": sum(e["bad_actions"] for e in episodes),
    }


# ------------------------------------------------------------------------------------------ headline
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


def _paired(a: dict, b: dict) -> dict:
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
            "recovery": {"n": len(both_rec), "faster": faster, "slower": slower, "equal": len(both_rec) - faster - slower,
                         "mean_this": _mean([x for x, _ in both_rec]), "mean_other": _mean([y for _, y in both_rec]),
                         "sign_test_p": mcnemar_exact_p(faster, slower)}}


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar test on the discordant pair counts (binomial, p = 1/2); the same
    computation is the exact sign test on paired wins/losses."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def compute_headline(results: Sequence[dict], success_tol: float = SUCCESS_TOL,
                     budget_frac: float = BUDGET_FRAC) -> dict:
    always = next((r for r in results if r["family"] == "always"), None)
    if always is None:
        return {"error": "no 'always' run to compare against"}
    a_s = always["perturbed"]["success_rate"]
    a_r = always["perturbed"]["resamples_per_episode"]
    budget = budget_frac * a_r
    cls = [r for r in results if r["family"] in CLS_FAMILIES]

    def key(r: dict) -> tuple:
        p = r["perturbed"]
        return (p["success_rate"], -p["resamples_per_episode"], -p["ms_per_tick"])

    qualifying = [r for r in cls if r["perturbed"]["success_rate"] >= a_s - success_tol - 1e-9
                  and r["perturbed"]["resamples_per_episode"] <= budget + 1e-9]
    under_budget = [r for r in cls if r["perturbed"]["resamples_per_episode"] <= budget + 1e-9]
    best = max(qualifying, key=key) if qualifying else None
    pick = best or (max(under_budget, key=key) if under_budget else None)
    out: dict[str, Any] = {
        "criterion": f"CLS gate (drift/consistency, any threshold, m in {{1,2}}) with perturbed success >= "
                     f"always - {success_tol:.2f} and resamples/episode <= {budget_frac:.0%} of always",
        "always": {"success_rate": a_s, "resamples_per_episode": a_r,
                   "unperturbed_success_rate": always.get("unperturbed", {}).get("success_rate"),
                   "ms_per_tick": always["perturbed"]["ms_per_tick"]},
        "budget_resamples_per_episode": budget,
        "qualifying": [r["name"] for r in sorted(qualifying, key=key, reverse=True)],
        "n_cls_configs": len(cls),
        "found": best is not None,
        "gate": None,
    }
    per_family = {}
    for fam in CLS_FAMILIES:
        fam_ub = [r for r in under_budget if r["family"] == fam]
        if fam_ub:
            b = max(fam_ub, key=key)
            per_family[fam] = {"name": b["name"], "success_rate": b["perturbed"]["success_rate"],
                               "resamples_per_episode": b["perturbed"]["resamples_per_episode"]}
    out["best_under_budget_per_family"] = per_family
    if pick is None:
        return out
    p = pick["perturbed"]
    x = p["resamples_per_episode"]
    interval = [r for r in results if r["family"] in ("interval", "always")]
    iv_curve = [(r["perturbed"]["resamples_per_episode"], r["perturbed"]["success_rate"]) for r in interval]
    rnd = [r for r in results if r["family"] == "random"]
    rnd_curve = [(r["perturbed"]["resamples_per_episode"], r["perturbed"]["success_rate"]) for r in rnd]
    iv_s, iv_extra = interp_curve(iv_curve, x)
    rd_s, rd_extra = interp_curve(rnd_curve, x)
    out["gate"] = {
        "name": pick["name"], "spec": pick["spec"], "check_every": pick["check_every"], "label": pick["label"],
        "qualifies": best is not None,
        "success_rate": p["success_rate"], "resamples_per_episode": x,
        "resamples_vs_always": x / a_r if a_r else None,
        "prefix_passes_per_episode": p["prefix_passes_per_episode"],
        "delta_passes_per_episode": p["delta_passes_per_episode"],
        "perturb_to_resample_ticks": p["perturb_to_resample_ticks"],
        "ms_per_tick": p["ms_per_tick"],
        "unperturbed_success_rate": pick.get("unperturbed", {}).get("success_rate"),
    }
    out["interval_at_matched_budget"] = {"success_rate": iv_s, "extrapolated": iv_extra,
                                         "points": sorted(iv_curve)}
    out["random_at_matched_budget"] = {"success_rate": rd_s, "extrapolated": rd_extra, "points": sorted(rnd_curve)}
    out["delta_vs_interval"] = None if iv_s is None else p["success_rate"] - iv_s
    # reaction to the jump at the same budget (ticks from the perturbation to the first resample)
    lat_iv = [(r["perturbed"]["resamples_per_episode"], r["perturbed"]["perturb_to_resample_ticks"]) for r in interval
              if r["perturbed"]["perturb_to_resample_ticks"] is not None]
    lat_rd = [(r["perturbed"]["resamples_per_episode"], r["perturbed"]["perturb_to_resample_ticks"]) for r in rnd
              if r["perturbed"]["perturb_to_resample_ticks"] is not None]
    out["latency_at_matched_budget"] = {"gate": p["perturb_to_resample_ticks"],
                                        "interval": interp_curve(lat_iv, x)[0], "random": interp_curve(lat_rd, x)[0]}
    n_ep = always["perturbed"].get("n_episodes") or 0
    out["success_standard_error"] = (math.sqrt(max(a_s * (1 - a_s), 1e-12) / n_ep) if n_ep else None)
    out["delta_vs_random"] = None if rd_s is None else p["success_rate"] - rd_s
    # paired per-episode comparisons: always, and the interval runs bracketing the gate's budget
    paired = [_paired(pick, always)]
    ivs = sorted((r for r in interval if r["family"] == "interval"), key=lambda r: r["perturbed"]["resamples_per_episode"])
    below = [r for r in ivs if r["perturbed"]["resamples_per_episode"] <= x]
    above = [r for r in ivs if r["perturbed"]["resamples_per_episode"] > x]
    for r in ([below[-1]] if below else []) + ([above[0]] if above else []):
        paired.append(_paired(pick, r) | {"other_resamples_per_episode": r["perturbed"]["resamples_per_episode"],
                                          "other_success_rate": r["perturbed"]["success_rate"]})
    out["paired"] = paired
    return out


# ------------------------------------------------------------------------------------------- running
def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="ep", file=sys.stderr, dynamic_ncols=True, mininterval=1.0)
    except ImportError:
        return None


def _say(bar: Any, msg: str) -> None:
    if bar is not None:
        bar.write(msg)
    else:
        print(msg, flush=True)


def evaluate_spec(spec: PolicySpec, make_policy: Callable[[PolicySpec], EdgePolicy], env: Any,
                  pert_seeds: Sequence[int], unpert_seeds: Sequence[int], timeline_episode: int,
                  bar: Any = None) -> dict:
    policy = make_policy(spec)
    t0 = time.perf_counter()
    pert, unpert = [], []
    timeline = None
    for j, s in enumerate(pert_seeds):
        rec = run_episode(policy, env, s, True, timeline=(j == timeline_episode))
        if "_timeline" in rec:
            timeline = {"seed": rec["seed"], "perturb_tick": rec["perturb_tick"], "success": rec["success"],
                        "ticks": rec.pop("_timeline")}
        pert.append(rec)
        if bar is not None:
            bar.update(1)
    for s in unpert_seeds:
        unpert.append(run_episode(policy, env, s, False))
        if bar is not None:
            bar.update(1)
    out = {"name": spec.name, "family": spec.family, "spec": spec.spec, "gate": policy.gate.spec,
           "check_every": spec.check_every, "label": spec.label, "param": spec.param,
           "perturbed": summarize(pert), "unperturbed": summarize(unpert),
           "wall_s": time.perf_counter() - t0, "timeline": timeline}
    for e in pert + unpert:
        e.pop("_tick_ms", None)
    out["perturbed_episodes"] = pert
    out["unperturbed_episodes"] = unpert
    return out


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def markdown_report(report: dict) -> str:
    cfg = report["config"]
    lines = [
        "# Gate evaluation (closed loop, simtask)",
        "",
        (f"Artifacts `{cfg['artifacts']}` · backend {cfg['backend']}/{cfg['device']} · {cfg['n_perturbed']} perturbed "
        f"+ {cfg['n_unperturbed']} unperturbed episodes (same seeds for every policy, base seed {cfg['seed']}) · "
        f"chunk {cfg['chunk_size']} (execute {cfg['n_action_steps']}), {cfg['num_steps']} Euler steps · "
        f"refine {cfg['refine']} · episode limit {cfg.get('task', {}).get('max_steps', '?')} ticks · "
        f"{report['elapsed_s'] / 60:.1f} min on {cfg['host']}."),
        "",
    ]
    h = report["headline"]
    lines += ["## Headline", "", f"Criterion: {h.get('criterion', '')}.", ""]
    if "always" in h:
        a = h["always"]
        lines.append(f"- `always`: success {a['success_rate']:.3f}, {a['resamples_per_episode']:.1f} full resamples/episode "
                     f"(budget for the headline: ≤ {h['budget_resamples_per_episode']:.1f}).")
    g = h.get("gate")
    if g:
        verdict = "qualifies" if g["qualifies"] else "does NOT qualify (best CLS gate within the budget shown)"
        lines.append(f"- **{g['name']}** (`{g['spec']}`, m={g['check_every']}) {verdict}: success {g['success_rate']:.3f}, "
                     f"{g['resamples_per_episode']:.2f} resamples/episode ({100 * (g['resamples_vs_always'] or 0):.0f} % of always), "
                     f"{g['prefix_passes_per_episode']:.1f} prefix passes/episode, perturbation→resample "
                     f"{_fmt(g['perturb_to_resample_ticks'])} ticks, {g['ms_per_tick']:.2f} ms/tick.")
        iv = h["interval_at_matched_budget"]
        rd = h["random_at_matched_budget"]
        lines.append(f"- `interval:k` interpolated at the same budget: success {_fmt(iv['success_rate'], 3)}"
                     f"{' (extrapolated)' if iv['extrapolated'] else ''} → gate − interval = {_fmt(h['delta_vs_interval'], 3)}.")
        lines.append(f"- `random:p` interpolated at the same budget: success {_fmt(rd['success_rate'], 3)}"
                     f"{' (extrapolated)' if rd['extrapolated'] else ''} → gate − random = {_fmt(h['delta_vs_random'], 3)}.")
        lat = h.get("latency_at_matched_budget")
        if lat:
            lines.append(f"- perturbation→first resample at that budget: gate {_fmt(lat['gate'])} ticks, interval "
                         f"{_fmt(lat['interval'])}, random {_fmt(lat['random'])}.")
        for pr in h.get("paired", []):
            lines.append(f"- paired vs `{pr['vs']}` ({pr['n']} episodes): both succeed {pr['both']}, only the gate "
                         f"{pr['only_this']}, only `{pr['vs']}` {pr['only_other']}, neither {pr['neither']} "
                         f"(exact McNemar p = {pr.get('mcnemar_p', float('nan')):.2f}).")
            rec = pr.get("recovery")
            if rec and rec["n"]:
                lines.append(f"  - recovery (jump → success) where both succeed ({rec['n']} episodes): gate faster in "
                             f"{rec['faster']}, slower in {rec['slower']}, equal in {rec['equal']}; mean "
                             f"{_fmt(rec['mean_this'], 1)} vs {_fmt(rec['mean_other'], 1)} ticks "
                             f"(exact sign test p = {rec['sign_test_p']:.3g}).")
        se = h.get("success_standard_error")
        if se:
            lines.append(f"- sampling noise: one success rate near always's has a standard error of ≈ {se:.3f} "
                         f"(95 % ≈ ±{1.96 * se:.2f}); the headline is the best of "
                         f"{h.get('n_cls_configs', '?')} CLS configurations on the same episodes, so its margin is "
                         "optimistic (winner's curse) — trust the paired counts and p-values.")
    else:
        lines.append("- no CLS gate ran within the resample budget.")
    for fam, b in h.get("best_under_budget_per_family", {}).items():
        lines.append(f"- best {fam} within the budget: `{b['name']}` success {b['success_rate']:.3f} at "
                     f"{b['resamples_per_episode']:.2f} resamples/episode.")
    lines += ["", "## All policies", "",
              ("Success on perturbed (P) and unperturbed (U) episodes; per-episode counts on perturbed episodes; "
              "`pert→rs` = ticks from the jump to the first resample at or after it (0 = on the first observation "
              "showing the jump; `n/r` = episodes with no resample after the jump); ms = wall time per tick."), "",
              ("| policy | gate | m | succ P | succ U | resamples/ep | prefix/ep | delta/ep | ticks/ep | fire rate "
              "| pert→rs | n/r | ms/tick | p90 ms |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["policies"]:
        p, u = r["perturbed"], r.get("unperturbed") or {}
        lines.append(f"| {r['name']} | `{r['gate']}` | {r['check_every']} | {p['success_rate']:.3f} | "
                     f"{_fmt(u.get('success_rate'), 3)} | {p['resamples_per_episode']:.2f} | {p['prefix_passes_per_episode']:.1f} | "
                     f"{p['delta_passes_per_episode']:.1f} | {p['ticks_per_episode']:.1f} | {_fmt(p['fire_rate'], 3)} | "
                     f"{_fmt(p['perturb_to_resample_ticks'])} | {p['no_resample_after_perturb']} | {p['ms_per_tick']:.2f} | "
                     f"{p['ms_per_tick_p90']:.2f} |")
    cal = report.get("calibration", {})
    if cal:
        lines += ["", "## Gate calibration (manifest)", ""]
        for fam, c in cal.items():
            lines.append(f"- {fam}: default {c.get('default_threshold')}, stats {c.get('stats')}"
                         + (f", changed_stats {c['changed_stats']}" if c.get("changed_stats") else "")
                         + (f", auroc {c['auroc']:.3f}" if isinstance(c.get("auroc"), (int, float)) else ""))
    plots = report.get("plots", {})
    if plots:
        lines += ["", "## Plots", ""] + [f"- {k}: `{v}`" for k, v in plots.items() if v]
    return "\n".join(lines) + "\n"


def _timeline_panels(report: dict) -> list[dict]:
    """Which policies' timelines to draw: the headline gate, and the other CLS family near its default."""
    pols = {r["name"]: r for r in report["policies"]}
    chosen: list[str] = []
    g = (report["headline"] or {}).get("gate")
    if g and g["name"] in pols:
        chosen.append(g["name"])
    for fam in CLS_FAMILIES:
        if any(pols[n]["family"] == fam for n in chosen):
            continue
        cands = [r for r in report["policies"] if r["family"] == fam and r["check_every"] == 1 and r["timeline"]]
        if not cands:
            continue
        default = report.get("calibration", {}).get(fam, {}).get("default_threshold")
        if default is not None:
            pick = min(cands, key=lambda r: abs((r["param"] or 0.0) - default))
        else:
            pick = cands[len(cands) // 2]
        chosen.append(pick["name"])
    if not chosen:  # no CLS gates in this run: any gate with a distance
        chosen = [r["name"] for r in report["policies"] if r["timeline"] and r["family"] in ("state", "interval")][:1]
    panels = []
    for n in chosen:
        r = pols[n]
        if r["timeline"]:
            panels.append({"name": n, "family": r["family"], **r["timeline"]})
    return panels


def run_gate_eval(artifacts: str | Path, out: str | Path, episodes: int = 30, unperturbed: int | None = None,
                  seed: int = 0, quick: bool = False, backend: str = "onnxruntime", device: str = "cpu",
                  threads: int = 1, refine: bool = False, check_everys: Sequence[int] = (1, 2),
                  families: Iterable[str] = DEFAULT_FAMILIES, timeline_episode: int = -1, plots: bool = True,
                  progress: bool = True, max_random: int = 6, max_steps: int | None = None) -> dict:
    """Run the whole sweep and write gate_eval.json / gate_eval.md / plots under `out`; returns the report."""
    from simtask import ReachEnv, TaskConfig, episode_seeds  # numpy-only task package

    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if quick:
        episodes = min(episodes, 2)
        unperturbed = 1 if unperturbed is None else min(unperturbed, 1)
    n_unpert = max(1, episodes // 3) if unperturbed is None else unperturbed
    # max_steps: a deadline variant (e.g. 40: a jump at tick 30 leaves 10 ticks) where reaction time decides
    # success instead of only recovery time; TaskConfig validates it against the perturbation window.
    task = TaskConfig() if max_steps is None else TaskConfig(max_steps=max_steps)
    env = ReachEnv(task)
    pert_seeds = episode_seeds(seed, episodes, stream="eval")
    unpert_seeds = episode_seeds(seed + 1, n_unpert, stream="eval") if n_unpert else []

    options: dict[str, Any] = {}
    if backend == "onnxruntime":
        options["intra_op_threads"] = threads
    first = EdgePolicy(artifacts, backend=backend, gate="always", device=device, backend_options=options, seed=seed)
    manifest, shared_backend = first.manifest, first.backend
    if timeline_episode < 0:
        timeline_episode = pick_timeline_episode(env, pert_seeds, chunk=manifest.dims.n_action_steps)
    timeline_episode = min(max(timeline_episode, 0), episodes - 1)
    first.warmup(env.reset(seed=2**31 - 1), runs=3)

    def make_policy(spec: PolicySpec) -> EdgePolicy:
        return EdgePolicy(artifacts, backend=shared_backend, gate=spec.spec, check_every=spec.check_every,
                          refine=refine, seed=seed, verify_hashes=False)

    specs = base_policies(manifest, task.max_step, quick, check_everys, families)
    n_random = 0 if "random" not in set(families) else (1 if quick else max_random)
    eps_per = episodes + n_unpert
    bar = _progress((len(specs) + n_random) * eps_per, progress)
    results: list[dict] = []

    def run_all(batch: Sequence[PolicySpec]) -> None:
        for spec in batch:
            if bar is not None:
                bar.set_description(spec.name[:28])
            r = evaluate_spec(spec, make_policy, env, pert_seeds, unpert_seeds, timeline_episode, bar)
            results.append(r)
            p = r["perturbed"]
            _say(bar, f"{spec.name:<28} succ {p['success_rate']:.3f} (U {r['unperturbed'].get('success_rate', float('nan')):.3f})  "
                      f"resamples/ep {p['resamples_per_episode']:6.2f}  prefix/ep {p['prefix_passes_per_episode']:6.1f}  "
                      f"pert→rs {_fmt(p['perturb_to_resample_ticks'])}  {p['ms_per_tick']:.2f} ms/tick  ({r['wall_s']:.0f} s)")

    run_all(specs)
    if n_random:
        rnd = matched_random(results, max_random, quick)
        if bar is not None:
            bar.total = (len(specs) + len(rnd)) * eps_per
            bar.refresh()
        run_all(rnd)
    if bar is not None:
        bar.close()
    shared_backend.close()

    order = {f: i for i, f in enumerate(FAMILIES)}
    results.sort(key=lambda r: (order.get(r["family"], 99), r["check_every"], r["param"] or 0.0))
    raw_gate = manifest.raw.get("gate", {}) if isinstance(manifest.raw.get("gate"), dict) else {}
    calibration = {fam: {k: raw_gate[fam].get(k) for k in ("stats", "changed_stats", "default_threshold", "auroc")
                         if k in raw_gate[fam]}
                   for fam in CLS_FAMILIES if isinstance(raw_gate.get(fam), dict)}
    d = manifest.dims
    report: dict[str, Any] = {
        "config": {"artifacts": str(artifacts), "backend": backend, "device": device, "threads": threads,
                   "refine": refine, "quick": quick, "seed": seed, "n_perturbed": episodes, "n_unperturbed": n_unpert,
                   "perturbed_seeds": pert_seeds, "unperturbed_seeds": unpert_seeds, "timeline_episode": timeline_episode,
                   "chunk_size": d.chunk_size, "n_action_steps": d.n_action_steps, "num_steps": d.num_steps,
                   "task": task.to_dict(), "host": platform.node() or "?", "producer": manifest.raw.get("producer"),
                   "success_tolerance": SUCCESS_TOL, "budget_fraction": BUDGET_FRAC},
        "calibration": calibration,
        "policies": results,
        "headline": compute_headline(results),
        "plots": {},
    }
    report["elapsed_s"] = time.perf_counter() - t_start
    _write(out, report)  # results first: a plotting problem must not lose a long run
    if plots:
        from runtime import plots as plotmod

        for key, fn in (("pareto", lambda: plotmod.pareto_plot(results, out / "gate_pareto.png", report["headline"])),
                        ("timeline", lambda: plotmod.timeline_plot(_timeline_panels(report), out / "gate_timeline.png"))):
            try:
                report["plots"][key] = fn()
            except Exception as exc:  # noqa: BLE001 — plots are a convenience; the numbers are already written
                report["plots"][key] = None
                print(f"warning: {key} plot failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        report["elapsed_s"] = time.perf_counter() - t_start
        _write(out, report)
    return report


def rerender(json_path: str | Path, plots: bool = True) -> dict:
    """Recompute the headline, markdown and plots from an existing gate_eval.json (no episodes are run)."""
    path = Path(json_path)
    report = json.loads(path.read_text())
    report["headline"] = compute_headline(report["policies"])
    out = path.parent
    if plots:
        from runtime import plots as plotmod

        report["plots"] = {"pareto": plotmod.pareto_plot(report["policies"], out / "gate_pareto.png", report["headline"]),
                           "timeline": plotmod.timeline_plot(_timeline_panels(report), out / "gate_timeline.png")}
    _write(out, report)
    return report


def _write(out: Path, report: dict) -> None:
    (out / "gate_eval.json").write_text(json.dumps(report, indent=1, default=_json_default))
    (out / "gate_eval.md").write_text(markdown_report(report))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.gate_eval", description=__doc__.split("\n")[0])
    p.add_argument("--artifacts", default="artifacts/onnx")
    p.add_argument("--out", default="reports/gate")
    p.add_argument("--episodes", type=int, default=30, help="perturbed episodes per policy")
    p.add_argument("--unperturbed", type=int, default=None, help="unperturbed episodes per policy (default episodes//3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="CI mode: a few policies, 2 perturbed + 1 unperturbed episode")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (0 = library default)")
    p.add_argument("--refine", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--check-every", type=int, nargs="+", default=[1, 2], help="m values for the CLS gates")
    p.add_argument("--families", nargs="+", default=list(DEFAULT_FAMILIES), choices=list(FAMILIES))
    p.add_argument("--max-random", type=int, default=6, help="number of matched-rate random gates")
    p.add_argument("--timeline-episode", type=int, default=-1,
                   help="perturbed episode index drawn in the timeline plot (-1: first with a mid-chunk jump)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="episode limit in ticks (default: the task's 60); e.g. 40 makes reaction time decide success")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--rerender", metavar="GATE_EVAL_JSON", default=None,
                   help="only recompute headline/markdown/plots from an existing gate_eval.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rerender:
        rerender(args.rerender, not args.no_plots)
        print((Path(args.rerender).parent / "gate_eval.md").read_text())
        return 0
    if args.episodes < 1:
        print("error: --episodes must be >= 1", file=sys.stderr)
        return 2
    try:
        report = run_gate_eval(args.artifacts, args.out, args.episodes, args.unperturbed, args.seed, args.quick,
                               args.backend, args.device, args.threads, args.refine, tuple(args.check_every),
                               args.families, args.timeline_episode, not args.no_plots, not args.no_progress,
                               args.max_random, args.max_steps)
    except (ValueError, RuntimeError, ImportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((Path(args.out) / "gate_eval.md").read_text())
    print(f"wrote {Path(args.out) / 'gate_eval.json'} ({report['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
