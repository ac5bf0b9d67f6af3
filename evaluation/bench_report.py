"""The gate benchmark's verdict and tables: the mixed-suite headline (best CLS gate vs `always` and vs the
pixel gate, with paired tests) and `gate_bench.md` / `gate_bench.json`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation.gate_report import fmt
from evaluation.gate_stats import mcnemar_exact_p

SUCCESS_TOL = 0.03  # acceptance: within 3 points of always
BUDGET_FRAC = 0.30  # acceptance: at most 30 % of always's resamples
CLS = ("drift", "consistency", "drift+consistency")


def _s(r: dict, kind: str) -> tuple[float, float]:
    p = r["per_kind"][kind]
    return p["success_rate"], p["resamples"]["mean"]


def _paired(a: dict, b: dict, kind: str) -> dict:
    sa = {e["seed"]: e["success"] for e in a["episodes"][kind]}
    sb = {e["seed"]: e["success"] for e in b["episodes"][kind]}
    only_a = sum(sa[s] and not sb.get(s, False) for s in sa)
    only_b = sum(sb[s] and not sa.get(s, False) for s in sb)
    return {"vs": b["name"], "only_this": only_a, "only_other": only_b, "mcnemar_p": mcnemar_exact_p(only_a, only_b)}


def compute_bench_headline(results: Sequence[dict], kind: str = "mixed") -> dict:
    """Best CLS gate on `kind` against the acceptance rule, and the pixel gate at equal or better success."""
    results = [r for r in results if kind in r["per_kind"]]
    always = next((r for r in results if r["family"] == "always" and not r["refine"]), None)
    if always is None:
        return {"error": f"no 'always' run on the {kind} suite"}
    a_s, a_r = _s(always, kind)
    ok = [r for r in results if r["family"] in CLS and _s(r, kind)[0] >= a_s - SUCCESS_TOL - 1e-9
          and _s(r, kind)[1] <= BUDGET_FRAC * a_r + 1e-9]
    cls = [r for r in results if r["family"] in CLS]
    out: dict[str, Any] = {"kind": kind, "always": {"success": a_s, "resamples": a_r},
                           "rule": f"success >= always - {SUCCESS_TOL:.2f} and resamples <= {BUDGET_FRAC:.0%} of always",
                           "qualifying_cls": [r["name"] for r in ok], "cls": None, "pixel": None}
    if not cls:
        return out
    # the qualifying CLS gate with the best success (fewest resamples on ties); else the best CLS gate by success
    best = max(ok or cls, key=lambda r: (_s(r, kind)[0], -_s(r, kind)[1]))
    b_s, b_r = _s(best, kind)
    out["cls"] = {"name": best["name"], "gate": best["gate"], "qualifies": bool(ok), "success": b_s,
                  "resamples": b_r, "resample_fraction": b_r / a_r if a_r else None,
                  "irrelevant": best["per_kind"][kind]["gated_irrelevant"]["mean"],
                  "paired_always": _paired(best, always, kind)}
    pixels = [r for r in results if r["family"] == "pixel"]
    if pixels:
        at_least = [r for r in pixels if _s(r, kind)[0] >= b_s - 1e-9]
        pix = min(at_least, key=lambda r: _s(r, kind)[1]) if at_least else max(pixels, key=lambda r: _s(r, kind)[0])
        p_s, p_r = _s(pix, kind)
        pix_ok = [r for r in pixels if _s(r, kind)[0] >= a_s - SUCCESS_TOL - 1e-9
                  and _s(r, kind)[1] <= BUDGET_FRAC * a_r + 1e-9]
        out["pixel"] = {"name": pix["name"], "gate": pix["gate"], "success": p_s, "resamples": p_r,
                        "irrelevant": pix["per_kind"][kind]["gated_irrelevant"]["mean"],
                        "equal_or_better_success": bool(at_least),
                        "cls_fewer_resamples": bool(at_least) and b_r < p_r,
                        "pixel_meets_rule": [r["name"] for r in pix_ok],
                        "paired_cls": _paired(best, pix, kind)}
    return out


def _ci(c: dict | None, nd: int = 2) -> str:
    if not c:
        return "–"
    if c["n"] < 2:
        return fmt(c["mean"], nd)
    return f"{c['mean']:.{nd}f} ({c['lo']:.{nd}f}–{c['hi']:.{nd}f})"


def headline_lines(h: dict) -> list[str]:
    if "error" in h:
        return [f"- {h['error']}"]
    a = h["always"]
    lines = [f"Suite `{h['kind']}`; rule for the CLS gate: {h['rule']}.", "",
             (f"- `always`: success {a['success']:.3f}, {a['resamples']:.2f} resamples/episode "
             f"(budget {BUDGET_FRAC * a['resamples']:.2f}).")]
    c = h.get("cls")
    if c:
        pa = c["paired_always"]
        lines.append(f"- best CLS gate **{c['name']}** (`{c['gate']}`) {'MEETS' if c['qualifies'] else 'does NOT meet'}"
                     f" the rule: success {c['success']:.3f}, {c['resamples']:.2f} resamples/episode "
                     f"({100 * (c['resample_fraction'] or 0):.0f} % of always), {fmt(c['irrelevant'])} on irrelevant "
                     f"changes; paired vs always: only CLS {pa['only_this']}, only always {pa['only_other']} "
                     f"(McNemar p = {pa['mcnemar_p']:.2f}).")
    p = h.get("pixel")
    if p and c:
        pc = p["paired_cls"]
        if p["equal_or_better_success"]:
            verdict = ("the CLS gate spends FEWER resamples" if p["cls_fewer_resamples"]
                       else "the pixel gate ties or wins (as few or fewer resamples)")
            lines.append(f"- cheapest pixel gate with success ≥ the CLS gate's: **{p['name']}** (`{p['gate']}`) "
                         f"success {p['success']:.3f}, {p['resamples']:.2f} resamples/episode, {fmt(p['irrelevant'])} "
                         f"on irrelevant changes → {verdict}.")
        else:
            lines.append(f"- no pixel gate reaches the CLS gate's success; the best, **{p['name']}**, scores "
                         f"{p['success']:.3f} at {p['resamples']:.2f} resamples/episode → the CLS gate wins on success.")
        lines.append(f"- paired CLS vs that pixel gate: only CLS {pc['only_this']}, only pixel {pc['only_other']} "
                     f"(McNemar p = {pc['mcnemar_p']:.2f}); pixel gates meeting the rule themselves: "
                     f"{', '.join(p['pixel_meets_rule']) or 'none'}.")
    return lines


def markdown(report: dict) -> str:
    cfg = report["config"]
    lines = ["# Gate benchmark (closed loop, simtask change suites)", "",
             (f"Artifacts `{cfg['artifacts']}` · {cfg['episodes_per_kind']} episodes per kind (same seeds for every "
             f"policy, base seed {cfg['seed']}) · deadline = scripted expert + {cfg['slack']} ticks · chunk "
             f"{cfg['chunk_size']} (execute {cfg['n_action_steps']}) · {report.get('elapsed_s', 0) / 60:.1f} min on "
             f"{cfg['host']}."), "", "## Headline", ""] + headline_lines(report["headline"])
    lines += ["", "## Calibration (held-out episodes; default threshold = p95 of the quiet distances)", "",
              ("| family | quiet / irrelevant / relevant n | mean quiet | mean irrelevant | mean relevant | p95 quiet "
              "| AUROC rel vs quiet | AUROC rel vs irrelevant |"), "|---|---|---|---|---|---|---|---|"]
    for fam, c in report["calibration"].items():
        n, m = c["n"], c["mean"]
        lines.append(f"| {fam} | {n['quiet']} / {n['irrelevant']} / {n['relevant']} | {fmt(m['quiet'], 4)} | "
                     f"{fmt(m['irrelevant'], 4)} | {fmt(m['relevant'], 4)} | {c['default_threshold']:.4g} | "
                     f"{fmt(c['auroc_relevant_vs_quiet'], 3)} | {fmt(c['auroc_relevant_vs_irrelevant'], 3)} |")
    for kind in cfg["kinds"]:
        lines += ["", f"## `{kind}`", "",
                  ("success (95 % Wilson CI) · resamples/ep and gate-decided resamples blamed on irrelevant changes "
                  "(mean, 95 % CI) · reaction = ticks from a relevant change to the next resample · recovery = ticks "
                  "from the last relevant change to success"), "",
                  ("| policy | gate | success | resamples/ep | on irrelevant/ep | reaction | recovery | prefix/ep "
                  "| delta/ep | plan enc/ep | ms/tick |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in report["policies"]:
            p = r["per_kind"].get(kind)
            if not p:
                continue
            lo, hi = p["success_ci"]
            lines.append(f"| {r['name']} | `{r['gate']}` | {p['success_rate']:.3f} ({lo:.2f}–{hi:.2f}) | "
                         f"{_ci(p['resamples'])} | {_ci(p['gated_irrelevant'])} | {_ci(p['reaction_ticks'], 1)} | "
                         f"{_ci(p['recovery_ticks'], 1)} | {p['prefix_passes']:.1f} | {p['delta_passes']:.1f} | "
                         f"{p.get('plan_encoder_passes', 0.0):.1f} | {p['ms_per_tick']:.2f} |")
    plots = report.get("plots", {})
    if plots:
        lines += ["", "## Plots", ""] + [f"- {k}: `{v}`" for k, v in plots.items() if v]
    return "\n".join(lines) + "\n"


def write_bench_report(out: Path, report: dict) -> None:
    (out / "gate_bench.json").write_text(json.dumps(report, indent=1))
    (out / "gate_bench.md").write_text(markdown(report))
