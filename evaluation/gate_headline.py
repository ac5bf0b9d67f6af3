"""The gate evaluation's headline: the best CLS gate within the resample budget, compared with `always` and with
`interval:k` / `random:p` at the same budget (interpolated and per-episode paired)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from evaluation.gate_policies import CLS_FAMILIES
from evaluation.gate_stats import interp_curve, paired_comparison, wilson

SUCCESS_TOL = 0.05
BUDGET_FRAC = 0.40


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
                   "ms_per_tick": always["perturbed"]["ms_per_tick"],
                   "n_episodes": always["perturbed"].get("n_episodes")},
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
        "plan_encoder_passes_per_episode": p.get("plan_encoder_passes_per_episode", 0.0),
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
    # how well n episodes pin always's success down (its binomial SE is 0 at 0/n and n/n: no help there)
    out["always_success_ci"] = wilson(round(a_s * n_ep), n_ep) if n_ep else None
    out["delta_vs_random"] = None if rd_s is None else p["success_rate"] - rd_s
    # paired per-episode comparisons: always, and the interval runs bracketing the gate's budget
    paired = [paired_comparison(pick, always)]
    ivs = sorted((r for r in interval if r["family"] == "interval"),
                 key=lambda r: r["perturbed"]["resamples_per_episode"])
    below = [r for r in ivs if r["perturbed"]["resamples_per_episode"] <= x]
    above = [r for r in ivs if r["perturbed"]["resamples_per_episode"] > x]
    for r in ([below[-1]] if below else []) + ([above[0]] if above else []):
        paired.append(paired_comparison(pick, r) | {
            "other_resamples_per_episode": r["perturbed"]["resamples_per_episode"],
            "other_success_rate": r["perturbed"]["success_rate"]})
    out["paired"] = paired
    return out
