"""The gate evaluation's outputs: `gate_eval.md` (headline and policy table), `gate_eval.json`, and which
policies the timeline plot shows."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.gate_policies import CLS_FAMILIES
from evaluation.gate_stats import fmt_p


def fmt(v: Any, nd: int = 2) -> str:
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
        lines.append(f"- `always`: success {a['success_rate']:.3f}, "
                     f"{a['resamples_per_episode']:.1f} full resamples/episode "
                     f"(budget for the headline: ≤ {h['budget_resamples_per_episode']:.1f}).")
    g = h.get("gate")
    if g:
        verdict = "qualifies" if g["qualifies"] else "does NOT qualify (best CLS gate within the budget shown)"
        lines.append(f"- **{g['name']}** (`{g['spec']}`, m={g['check_every']}) {verdict}: "
                     f"success {g['success_rate']:.3f}, {g['resamples_per_episode']:.2f} resamples/episode "
                     f"({100 * (g['resamples_vs_always'] or 0):.0f} % of always), "
                     f"{g['prefix_passes_per_episode']:.1f} prefix passes/episode, perturbation→resample "
                     f"{fmt(g['perturb_to_resample_ticks'])} ticks, {g['ms_per_tick']:.2f} ms/tick.")
        iv = h["interval_at_matched_budget"]
        rd = h["random_at_matched_budget"]
        lines.append(f"- `interval:k` interpolated at the same budget: success {fmt(iv['success_rate'], 3)}"
                     f"{' (extrapolated)' if iv['extrapolated'] else ''} → gate − interval = "
                     f"{fmt(h['delta_vs_interval'], 3)}.")
        lines.append(f"- `random:p` interpolated at the same budget: success {fmt(rd['success_rate'], 3)}"
                     f"{' (extrapolated)' if rd['extrapolated'] else ''} → gate − random = "
                     f"{fmt(h['delta_vs_random'], 3)}.")
        lat = h.get("latency_at_matched_budget")
        if lat:
            lines.append(f"- perturbation→first resample at that budget: gate {fmt(lat['gate'])} ticks, interval "
                         f"{fmt(lat['interval'])}, random {fmt(lat['random'])}.")
        for pr in h.get("paired", []):
            lines.append(f"- paired vs `{pr['vs']}` ({pr['n']} episodes): both succeed {pr['both']}, only the gate "
                         f"{pr['only_this']}, only `{pr['vs']}` {pr['only_other']}, neither {pr['neither']} "
                         f"(exact McNemar p = {fmt_p(pr.get('mcnemar_p'))}).")
            rec = pr.get("recovery")
            if rec and rec["n"]:
                lines.append(f"  - recovery (jump → success) where both succeed ({rec['n']} episodes): gate faster in "
                             f"{rec['faster']}, slower in {rec['slower']}, equal in {rec['equal']}; mean "
                             f"{fmt(rec['mean_this'], 1)} vs {fmt(rec['mean_other'], 1)} ticks "
                             f"(exact sign test p = {rec['sign_test_p']:.3g}).")
        ci = h.get("always_success_ci")
        if ci:
            lines.append(f"- sampling noise: {h['always'].get('n_episodes', '?')} episodes pin always's success down only to "
                         f"{ci[0]:.3f}–{ci[1]:.3f} (95 % Wilson), a gate's likewise; the headline is the best of "
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
              ("| policy | gate | m | succ P | succ U | resamples/ep | prefix/ep | delta/ep | plan enc/ep | ticks/ep "
              "| fire rate | pert→rs | n/r | ms/tick | p90 ms |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["policies"]:
        p, u = r["perturbed"], r.get("unperturbed") or {}
        lines.append(f"| {r['name']} | `{r['gate']}` | {r['check_every']} | {p['success_rate']:.3f} | "
                     f"{fmt(u.get('success_rate'), 3)} | {p['resamples_per_episode']:.2f} | "
                     f"{p['prefix_passes_per_episode']:.1f} | {p['delta_passes_per_episode']:.1f} | "
                     f"{p.get('plan_encoder_passes_per_episode', 0.0):.1f} | {p['ticks_per_episode']:.1f} | {fmt(p['fire_rate'], 3)} | "
                     f"{fmt(p['perturb_to_resample_ticks'])} | {p['no_resample_after_perturb']} | "
                     f"{p['ms_per_tick']:.2f} | {p['ms_per_tick_p90']:.2f} |")
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


def timeline_panels(report: dict) -> list[dict]:
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


def write_report(out: Path, report: dict) -> None:
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
