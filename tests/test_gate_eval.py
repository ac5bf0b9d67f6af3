"""Closed-loop gate evaluation (evaluation.gate_eval) in --quick mode on the fake artifacts, plus its pure helpers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation.gate_eval import main
from evaluation.gate_headline import compute_headline
from evaluation.gate_policies import PolicySpec, matched_random, threshold_sweep
from evaluation.gate_stats import interp_curve
from runtime.manifest import GateCalibration
from tests.fake_artifacts import cached_fake_artifacts

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory) -> tuple[dict, Path]:
    art = cached_fake_artifacts()
    out = tmp_path_factory.mktemp("gate")
    rc = main(["--artifacts", str(art), "--out", str(out), "--quick", "--no-progress", "--threads", "1"])
    assert rc == 0
    return json.loads((out / "gate_eval.json").read_text()), out


def test_quick_report_has_every_policy_family(quick_report):
    report, out = quick_report
    pols = report["policies"]
    fams = {(p["family"], p["check_every"]) for p in pols}
    for want in [("always", 1), ("interval", 1), ("drift", 1), ("drift", 2), ("consistency", 1), ("random", 1),
                 ("state", 1)]:
        assert want in fams, (want, fams)
    names = [p["name"] for p in pols]
    assert len(names) == len(set(names))
    specs = {p["spec"] for p in pols}
    assert {"always", "interval:2", "interval:6"} <= specs  # fake artifacts: chunk 6
    cfg = report["config"]
    for p in pols:  # the same (paired) seeds for every policy
        assert [e["seed"] for e in p["perturbed_episodes"]] == cfg["perturbed_seeds"]
        assert [e["seed"] for e in p["unperturbed_episodes"]] == cfg["unperturbed_seeds"]
        assert all(e["perturb_tick"] is not None for e in p["perturbed_episodes"])
        assert all(e["perturb_tick"] is None for e in p["unperturbed_episodes"])
        assert p["perturbed"]["bad_actions"] == 0 and p["perturbed"]["faults"] == 0
        for key in ("success_rate", "resamples_per_episode", "prefix_passes_per_episode", "ms_per_tick"):
            assert math.isfinite(p["perturbed"][key])
    assert (out / "gate_eval.md").read_text().count("\n| ") >= len(pols)
    assert "headline" in report and report["headline"]["always"]["resamples_per_episode"] > 0


def test_resample_counts_match_the_gate_definitions(quick_report):
    report, _ = quick_report
    by_spec = {(p["spec"], p["check_every"]): p for p in report["policies"]}
    for e in by_spec[("always", 1)]["perturbed_episodes"] + by_spec[("always", 1)]["unperturbed_episodes"]:
        assert e["resamples"] == e["steps"]
        assert e["resample_latency"] in (None, 0)
    for k in (2, 6):
        for e in by_spec[(f"interval:{k}", 1)]["perturbed_episodes"]:
            assert abs(e["resamples"] - e["steps"] / k) <= 1.0, (k, e)
            assert e["prefix_passes"] == e["resamples"]  # interval never needs the prefix to decide
    for e in by_spec[("always", 1)]["perturbed_episodes"]:
        assert e["gated_resamples"] + e["forced_resamples"] == e["resamples"]
    # CLS gates run the prefix on every checked tick; consistency also the delta expert
    drift = next(p for p in report["policies"] if p["family"] == "drift" and p["check_every"] == 1)
    assert drift["perturbed"]["prefix_passes_per_episode"] == pytest.approx(drift["perturbed"]["ticks_per_episode"])
    drift2 = next(p for p in report["policies"] if p["family"] == "drift" and p["check_every"] == 2)
    assert drift2["perturbed"]["prefix_passes_per_episode"] < drift["perturbed"]["prefix_passes_per_episode"]
    cons = next(p for p in report["policies"] if p["family"] == "consistency")
    assert cons["perturbed"]["delta_passes_per_episode"] > 0


def test_plots_and_timeline_written(quick_report):
    pytest.importorskip("matplotlib")
    report, out = quick_report
    assert (out / "gate_timeline.png").is_file() and (out / "gate_timeline.png").stat().st_size > 1000
    assert (out / "gate_pareto.png").is_file()
    assert report["plots"]["timeline"].endswith("gate_timeline.png")
    tl = next(p["timeline"] for p in report["policies"] if p["family"] == "drift")
    assert tl["perturb_tick"] is not None and len(tl["ticks"]) >= 1
    assert any(t["resampled"] for t in tl["ticks"])


def test_threshold_sweep_sorted_and_deduplicated():
    cal = GateCalibration({"p50": 0.01, "p90": 0.05, "p95": 0.08, "p99": 0.15}, default_threshold=0.08)
    sweep = threshold_sweep(cal)
    values = [v for _, v in sweep]
    assert values == sorted(values)
    assert len(values) == len(set(values))
    labels = dict(sweep)
    assert "p95" in labels and "default" not in labels  # default == p95 keeps the stats label
    assert labels["0.5xp50"] == pytest.approx(0.005) and labels["3xp99"] == pytest.approx(0.45)
    assert threshold_sweep(cal, quick=True) == [("default", 0.08)]
    assert threshold_sweep(None) == []


def test_interp_curve():
    pts = [(60.0, 0.9), (30.0, 0.8), (6.0, 0.4)]
    assert interp_curve(pts, 18.0) == (pytest.approx(0.6), False)
    assert interp_curve(pts, 3.0) == (pytest.approx(0.4), True)
    assert interp_curve([], 1.0) == (None, True)


def _result(name, family, success, resamples, m=1, fire_rate=None, per_ep=None):
    per_ep = per_ep or [success >= 0.5] * 4
    return {"name": name, "family": family, "spec": name, "check_every": m, "label": "", "param": None,
            "perturbed": {"success_rate": success, "resamples_per_episode": resamples, "ms_per_tick": 1.0,
                          "prefix_passes_per_episode": 10.0, "delta_passes_per_episode": 0.0,
                          "perturb_to_resample_ticks": 1.0, "fire_rate": fire_rate},
            "unperturbed": {"success_rate": 1.0},
            "perturbed_episodes": [{"seed": i, "success": s} for i, s in enumerate(per_ep)]}


def test_headline_picks_best_qualifying_cls_gate_and_interpolates_interval():
    results = [
        _result("always", "always", 0.90, 50.0),
        _result("interval:2", "interval", 0.85, 25.0),
        _result("interval:10", "interval", 0.55, 5.0),
        _result("drift:a", "drift", 0.88, 15.0),  # qualifies
        _result("drift:b", "drift", 0.90, 30.0),  # over budget (40 % of 50 = 20)
        _result("consistency:a", "consistency", 0.70, 8.0),  # too low
        _result("random:0.3", "random", 0.60, 15.0),
    ]
    h = compute_headline(results)
    assert h["found"] and h["gate"]["name"] == "drift:a"
    assert h["budget_resamples_per_episode"] == pytest.approx(20.0)
    assert h["interval_at_matched_budget"]["success_rate"] == pytest.approx(0.55 + 0.30 * 10 / 20)
    assert h["delta_vs_interval"] == pytest.approx(0.88 - 0.70)
    assert h["random_at_matched_budget"]["success_rate"] == pytest.approx(0.60)
    assert h["paired"][0]["vs"] == "always"
    assert {p["vs"] for p in h["paired"][1:]} == {"interval:10", "interval:2"}
    none = compute_headline([r for r in results if r["name"] != "drift:a"])
    assert not none["found"] and none["gate"]["name"] == "consistency:a" and not none["gate"]["qualifies"]


def test_matched_random_uses_cls_fire_rates():
    results = [_result("drift:a", "drift", 0.5, 10.0, fire_rate=0.12), _result("drift:b", "drift", 0.5, 5.0, fire_rate=0.03),
               _result("drift:a/m2", "drift", 0.5, 10.0, m=2, fire_rate=0.5), _result("state:x", "state", 0.5, 9.0, fire_rate=0.9)]
    specs = matched_random(results)
    assert [s.spec for s in specs] == ["random:0.03", "random:0.12"]
    assert all(isinstance(s, PolicySpec) and s.family == "random" for s in specs)


def test_gate_eval_and_soak_do_not_import_matplotlib_or_training_stacks():
    code = ("import sys, evaluation.gate_eval, evaluation.soak, evaluation.plots; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'matplotlib', 'torch', 'lerobot', 'transformers', 'smolvla_cls', 'export'}); "
            "assert not bad, bad; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr


def test_mcnemar_exact_p():
    from evaluation.gate_stats import mcnemar_exact_p

    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(5, 2) == pytest.approx(0.453125)
    assert mcnemar_exact_p(10, 0) == pytest.approx(2 / 1024)


def test_rerender_recomputes_from_json(quick_report, tmp_path):
    import shutil

    from evaluation.gate_eval import rerender

    _, out = quick_report
    shutil.copy(out / "gate_eval.json", tmp_path / "gate_eval.json")
    report = rerender(tmp_path / "gate_eval.json", plots=False)
    assert (tmp_path / "gate_eval.md").is_file()
    assert report["headline"]["always"]["resamples_per_episode"] > 0
    assert all("mcnemar_p" in p for p in report["headline"].get("paired", []))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.integers(0, 30), st.integers(0, 30)), min_size=1,
                max_size=40))
def test_paired_recovery_counts_follow_the_episodes(rows):
    """Recovery is compared only where both succeed; faster + slower + equal = that count; the sign test
    is symmetric in the two policies."""
    from evaluation.gate_stats import paired_comparison

    def res(name, idx):
        return {"name": name, "perturbed_episodes": [
            {"seed": i, "success": r[idx], "recovery_ticks": r[2 + idx] if r[idx] else None}
            for i, r in enumerate(rows)]}

    a, b = res("gate", 0), res("interval:10", 1)
    ab, ba = paired_comparison(a, b), paired_comparison(b, a)
    both = [(r[2], r[3]) for r in rows if r[0] and r[1]]
    rec = ab["recovery"]
    assert rec["n"] == len(both) == ab["both"]
    assert rec["faster"] == sum(x < y for x, y in both) and rec["slower"] == sum(x > y for x, y in both)
    assert rec["faster"] + rec["slower"] + rec["equal"] == rec["n"]
    assert ba["recovery"]["faster"] == rec["slower"] and ba["recovery"]["sign_test_p"] == rec["sign_test_p"]
    assert 0.0 < rec["sign_test_p"] <= 1.0


def test_max_steps_option_is_validated(tmp_path, capsys):
    """Refused by argparse, naming the flag (it named TaskConfig's field before)."""
    art = cached_fake_artifacts()
    with pytest.raises(SystemExit) as exc:
        main(["--artifacts", str(art), "--out", str(tmp_path), "--quick", "--no-progress", "--max-steps", "20"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --max-steps" in err and "TaskConfig" not in err


def test_a_small_mcnemar_p_is_not_printed_as_zero(quick_report):
    """gate_eval.md printed p to two decimals: p = 0.004 read 'p = 0.00'. Three significant digits, as gate_bench."""
    import copy

    from evaluation.gate_report import markdown_report

    report = copy.deepcopy(quick_report[0])
    assert report["headline"]["paired"], "the quick run has a paired comparison"
    report["headline"]["paired"][0]["mcnemar_p"] = 0.004
    md = markdown_report(report)
    assert "McNemar p = 0.00400)" in md and "McNemar p = 0.00)" not in md


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), k_frac=st.floats(0.0, 1.0))
def test_the_sampling_noise_line_never_claims_zero_uncertainty(n, k_frac, quick_report):
    """always at 30/30 (or 0/n) printed 'a standard error of ≈ 0.000 (95 % ≈ ±0.00)': the binomial SE at p = 1
    is 0, but n episodes cannot pin a rate down. The line gives always's 95 % Wilson interval instead."""
    from evaluation.gate_report import markdown_report

    k = round(k_frac * n)
    results = [_result("always", "always", k / n, 50.0, per_ep=[i < k for i in range(n)]),
               _result("drift:a", "drift", k / n, 15.0, per_ep=[i < k for i in range(n)])]
    results[0]["perturbed"]["n_episodes"] = n
    h = compute_headline(results)
    lo, hi = h["always_success_ci"]
    assert lo <= k / n <= hi and hi - lo > 0.02
    report = {**quick_report[0], "headline": h}
    line = next(ln for ln in markdown_report(report).splitlines() if "sampling noise" in ln)
    assert f"{lo:.3f}–{hi:.3f}" in line and "±0.00" not in line
