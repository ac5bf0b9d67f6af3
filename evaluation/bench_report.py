"""The gate benchmark's verdict and tables: the mixed-suite headline (best CLS gate, capped or not, vs `always`,
vs the pixel gate and vs a fixed interval / the plan-age cap alone, with paired tests) and `gate_bench.md` /
`gate_bench.json`."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation.gate_report import fmt
from evaluation.gate_stats import fmt_p, mcnemar_exact_p

SUCCESS_TOL = 0.03  # acceptance: within 3 points of always
BUDGET_FRAC = 0.30  # acceptance: at most 30 % of always's resamples
CLS = ("drift", "consistency", "jump", "drift+consistency")  # gate families that read the CLS head
CAP_SUFFIX = "+cap"  # `<family>+cap` = the family's gate with a plan-age cap (`any:<gate>,interval:K`)
SIGNIFICANT_P = 0.05
DEFAULT_FAMILY = "default"  # the manifest's gate.default (evaluation.gate_bench runs it as the policy would)
POOLED = "all"  # `kind` for the headline over every episode kind at once (280 episodes at 40 per kind)


# what --rerender needs of a gate_bench.json (checked up front: one line instead of a KeyError traceback)
REPORT_KEYS = {"config": dict, "policies": list, "calibration": dict}
CONFIG_KEYS = ("artifacts", "episodes_per_kind", "kinds", "seed", "slack", "chunk_size", "n_action_steps", "host")
POLICY_KEYS = ("name", "family", "gate", "label", "refine", "per_kind", "episodes")


def report_problem(report: Any) -> str | None:
    """What makes `report` not a gate_bench.json report (a missing or mistyped key), or None."""
    if not isinstance(report, dict):
        return f"expected a JSON object, got {type(report).__name__}"
    for key, kind in REPORT_KEYS.items():
        if not isinstance(report.get(key), kind):
            return f"no {kind.__name__} '{key}'"
    missing = [k for k in CONFIG_KEYS if k not in report["config"]]
    if missing:
        return f"config lacks {', '.join(missing)}"
    for i, r in enumerate(report["policies"]):
        lacks = [k for k in POLICY_KEYS if not isinstance(r, dict) or k not in r]
        if lacks:
            return f"policies[{i}] lacks {', '.join(lacks)}"
    return None


def null_non_finite(obj: Any) -> Any:
    """`obj` with every NaN / inf float replaced by None (what the strict writer accepts)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: null_non_finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [null_non_finite(v) for v in obj]
    return obj


def base_family(family: str) -> str:
    """`drift+cap` → `drift`: a capped gate belongs to its change family."""
    return family.removesuffix(CAP_SUFFIX)


def _summary(r: dict, kind: str) -> dict:
    return r["all"] if kind == POOLED else r["per_kind"][kind]


def _s(r: dict, kind: str) -> tuple[float, float]:
    p = _summary(r, kind)
    return p["success_rate"], p["resamples"]["mean"]


def _outcomes(r: dict, kind: str) -> dict:
    """(kind, seed) → success, over one kind or (POOLED) every kind: the pairing key of the paired tests."""
    kinds = list(r["episodes"]) if kind == POOLED else [kind]
    return {(k, e["seed"]): e["success"] for k in kinds for e in r["episodes"][k]}


def _paired(a: dict, b: dict, kind: str) -> dict:
    sa, sb = _outcomes(a, kind), _outcomes(b, kind)
    only_a = sum(sa[s] and not sb.get(s, False) for s in sa)
    only_b = sum(sb[s] and not sa.get(s, False) for s in sb)
    return {"vs": b["name"], "only_this": only_a, "only_other": only_b, "mcnemar_p": mcnemar_exact_p(only_a, only_b)}


def _best(pool: Sequence[dict], kind: str, ok: Sequence[dict]) -> dict:
    """The qualifying policy with the best success (fewest resamples on ties); else the best by success."""
    return max(ok or pool, key=lambda r: (_s(r, kind)[0], -_s(r, kind)[1]))


def _cap_alone(best: dict, intervals: Sequence[dict], kind: str) -> dict | None:
    """What the CLS part adds over the plan-age cap alone: the same K's `interval:K` for a capped gate, the best
    interval-only policy otherwise; success and resamples difference with the paired test."""
    if not intervals:
        return None
    ref = None
    if best["family"].endswith(CAP_SUFFIX) and best.get("param") is not None:
        ref = next((r for r in intervals if r.get("param") == best["param"]), None)
    if ref is None:
        ref = max(intervals, key=lambda r: (_s(r, kind)[0], -_s(r, kind)[1]))
    (b_s, b_r), (i_s, i_r) = _s(best, kind), _s(ref, kind)
    paired = _paired(best, ref, kind)
    return {"name": ref["name"], "gate": ref["gate"], "success": i_s, "resamples": i_r,
            "success_gain": b_s - i_s, "extra_resamples": b_r - i_r, "paired": paired,
            "buys_success": b_s > i_s and paired["mcnemar_p"] < SIGNIFICANT_P}


def _verdict(r: dict, always: dict, kind: str, qualifies: bool) -> dict:
    """One gate against the rule: success, resamples (and their fraction of always's), paired test vs always."""
    s, res = _s(r, kind)
    a_r = _s(always, kind)[1]
    return {"name": r["name"], "gate": r["gate"], "qualifies": qualifies, "success": s, "resamples": res,
            "resample_fraction": res / a_r if a_r else None,
            "irrelevant": _summary(r, kind)["gated_irrelevant"]["mean"], "paired_always": _paired(r, always, kind)}


def _verdict_line(what: str, short: str, v: dict) -> str:
    pa = v["paired_always"]
    return (f"- {what} **{v['name']}** (`{v['gate']}`) {'MEETS' if v['qualifies'] else 'does NOT meet'}"
            f" the rule: success {v['success']:.3f}, {v['resamples']:.2f} resamples/episode "
            f"({100 * (v['resample_fraction'] or 0):.0f} % of always), {fmt(v['irrelevant'])} on irrelevant "
            f"changes; paired vs always: only {short} {pa['only_this']}, only always {pa['only_other']} "
            f"(McNemar p = {fmt_p(pa['mcnemar_p'])}).")


def compute_bench_headline(results: Sequence[dict], kind: str = "mixed") -> dict:
    """Best CLS gate (capped or not) on `kind` against the acceptance rule; the cheapest pixel gate (capped or
    not) at equal or better success; the best interval-only policy by the same rule; and what the CLS part
    buys over the plan-age cap alone."""
    results = [r for r in results if kind in r["per_kind"] or (kind == POOLED and r.get("all"))]
    if not results:
        return {"error": f"the {kind} suite was not run (--kinds)"}
    always = next((r for r in results if r["family"] == "always" and not r["refine"]), None)
    if always is None:
        return {"error": f"no 'always' run on the {kind} suite"}
    a_s, a_r = _s(always, kind)

    def meets(r: dict) -> bool:
        return _s(r, kind)[0] >= a_s - SUCCESS_TOL - 1e-9 and _s(r, kind)[1] <= BUDGET_FRAC * a_r + 1e-9

    cls = [r for r in results if base_family(r["family"]) in CLS]
    ok = [r for r in cls if meets(r)]
    out: dict[str, Any] = {"kind": kind, "always": {"success": a_s, "resamples": a_r},
                           "rule": f"success >= always - {SUCCESS_TOL:.2f} and resamples <= {BUDGET_FRAC:.0%} of always",
                           "qualifying_cls": [r["name"] for r in ok], "cls": None, "pixel": None,
                           "interval": None, "cap_alone": None, "default": None}
    default = next((r for r in results if r["family"] == DEFAULT_FAMILY and not r["refine"]), None)
    if default is not None:  # the manifest's own gate: does what deployments run meet the rule?
        out["default"] = _verdict(default, always, kind, meets(default))
    if not cls:
        return out
    best = _best(cls, kind, ok)
    b_s, b_r = _s(best, kind)
    out["cls"] = _verdict(best, always, kind, bool(ok))
    pixels = [r for r in results if base_family(r["family"]) == "pixel"]
    if pixels:
        at_least = [r for r in pixels if _s(r, kind)[0] >= b_s - 1e-9]
        pix = min(at_least, key=lambda r: _s(r, kind)[1]) if at_least else max(pixels, key=lambda r: _s(r, kind)[0])
        p_s, p_r = _s(pix, kind)
        out["pixel"] = {"name": pix["name"], "gate": pix["gate"], "success": p_s, "resamples": p_r,
                        "irrelevant": _summary(pix, kind)["gated_irrelevant"]["mean"],
                        "equal_or_better_success": bool(at_least),
                        "cls_fewer_resamples": bool(at_least) and b_r < p_r,
                        "pixel_meets_rule": [r["name"] for r in pixels if meets(r)],
                        "paired_cls": _paired(best, pix, kind)}
    intervals = [r for r in results if r["family"] == "interval" and not r["refine"]]
    if intervals:
        iv = _best(intervals, kind, [r for r in intervals if meets(r)])
        i_s, i_r = _s(iv, kind)
        out["interval"] = {"name": iv["name"], "gate": iv["gate"], "qualifies": meets(iv), "success": i_s,
                           "resamples": i_r, "paired_cls": _paired(best, iv, kind)}
        out["cap_alone"] = _cap_alone(best, intervals, kind)
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
    suite = "all kinds pooled" if h["kind"] == POOLED else f"`{h['kind']}`"
    lines = [f"Suite {suite}; rule for the CLS gate: {h['rule']}.", "",
             (f"- `always`: success {a['success']:.3f}, {a['resamples']:.2f} resamples/episode "
             f"(budget {BUDGET_FRAC * a['resamples']:.2f}).")]
    if h.get("default"):
        lines.append(_verdict_line("the manifest's default gate", "default", h["default"]))
    c = h.get("cls")
    if c:
        lines.append(_verdict_line("best CLS gate", "CLS", c))
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
                     f"(McNemar p = {fmt_p(pc['mcnemar_p'])}); pixel gates meeting the rule themselves: "
                     f"{', '.join(p['pixel_meets_rule']) or 'none'}.")
    lines += _interval_lines(h)
    return lines


def _interval_lines(h: dict) -> list[str]:
    """The honest part: does a fixed interval alone do as well, and what does the CLS part add to a cap?"""
    iv, cap, c = h.get("interval"), h.get("cap_alone"), h.get("cls")
    if not (iv and c):
        return []
    pi = iv["paired_cls"]
    lines = [(f"- best interval-only policy by the same rule: **{iv['name']}** (`{iv['gate']}`) "
             f"{'meets' if iv['qualifies'] else 'does not meet'} it: success {iv['success']:.3f}, "
             f"{iv['resamples']:.2f} resamples/episode (the CLS gate: {c['success']:.3f} at {c['resamples']:.2f}, "
             f"{c['resamples'] - iv['resamples']:+.2f}); paired CLS vs it: only CLS {pi['only_this']}, only interval "
             f"{pi['only_other']} (McNemar p = {fmt_p(pi['mcnemar_p'])}).")]
    if cap:
        gain, extra, pc = cap["success_gain"], cap["extra_resamples"], cap["paired"]
        if cap["buys_success"]:
            verdict = f"the CLS part BUYS {100 * gain:+.1f} points of success (significant)"
        elif gain > 0:
            verdict = f"the CLS part adds {100 * gain:+.1f} points, NOT significant: it buys nothing shown"
        else:
            verdict = f"the CLS part buys NOTHING on success ({100 * gain:+.1f} points)"
        lines.append(f"- CLS gate vs the cap alone (`{cap['gate']}`: success {cap['success']:.3f}, "
                     f"{cap['resamples']:.2f} resamples/episode): {verdict}, for {extra:+.2f} resamples/episode "
                     f"(paired: only CLS {pc['only_this']}, only cap {pc['only_other']}, McNemar p = "
                     f"{fmt_p(pc['mcnemar_p'])}).")
    return lines


def markdown(report: dict) -> str:
    cfg = report["config"]
    lines = ["# Gate benchmark (closed loop, simtask change suites)", "",
             (f"Artifacts `{cfg['artifacts']}` · {cfg['episodes_per_kind']} episodes per kind (same seeds for every "
             f"policy, base seed {cfg['seed']}) · deadline = scripted expert + {cfg['slack']} ticks · chunk "
             f"{cfg['chunk_size']} (execute {cfg['n_action_steps']}) · {len(report['policies'])} policies × "
             f"{len(cfg['kinds'])} kinds · {report.get('elapsed_s', 0) / 60:.1f} min on {cfg['host']}."), "",
             "## Headline", ""] + headline_lines(report["headline"])
    if report.get("headline_pooled"):
        lines += ["", "### The same rule over all kinds pooled (more episodes, less selection noise)", ""]
        lines += headline_lines(report["headline_pooled"])
    lines += ["", "## Calibration (held-out episodes; default threshold = p95 of the quiet distances)", "",
              ("| family | quiet / irrelevant / relevant n | mean quiet | mean irrelevant | mean relevant | p95 quiet "
              "| p95 quiet, plan age < cap K (capped gates) | AUROC rel vs quiet | AUROC rel vs irrelevant |"),
              "|---|---|---|---|---|---|---|---|---|"]
    for fam, c in report["calibration"].items():
        n, m = c["n"], c["mean"]
        moving = f" (+{n['moving']} moving)" if n.get("moving") else ""
        lines.append(f"| {fam} | {n['quiet']} / {n['irrelevant']} / {n['relevant']}{moving} | {fmt(m['quiet'], 4)} | "
                     f"{fmt(m['irrelevant'], 4)} | {fmt(m['relevant'], 4)} | {c['default_threshold']:.4g} | "
                     f"{', '.join(f'K {k}: {t:.4g}' for k, t in c.get('capped_p95', {}).items()) or '–'} | "
                     f"{fmt(c['auroc_relevant_vs_quiet'], 3)} | {fmt(c['auroc_relevant_vs_irrelevant'], 3)} |")
    for kind in cfg["kinds"]:
        lines += ["", f"## `{kind}`", "",
                  ("success (95 % Wilson CI) · resamples/ep and resamples a change-detecting gate (not a clock: "
                  "interval, always, random) fired within 5 ticks after an irrelevant change (mean, 95 % CI) · "
                  "reaction = ticks from a relevant change to the next resample · recovery = ticks from the end of "
                  "the last relevant change to the first tick within the success radius"), "",
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
    """Strict JSON (a NaN or inf raises instead of writing a non-standard token), then the markdown."""
    (out / "gate_bench.json").write_text(json.dumps(report, indent=1, allow_nan=False))
    (out / "gate_bench.md").write_text(markdown(report))
