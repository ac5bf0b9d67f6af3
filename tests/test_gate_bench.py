"""The gate benchmark (evaluation.gate_bench) in --quick mode on the fake artifacts, and its pure parts: change
attribution, calibration labels, AUROC, CIs and the headline verdict (including where the pixel gate wins)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation.bench_calibration import auroc, label, step_label, summarize_family
from evaluation.bench_report import POOLED, compute_bench_headline, headline_lines
from evaluation.bench_runner import attribute, mean_ci, wilson
from evaluation.gate_bench import main, policy_specs
from simtask.events import Change
from tests.fake_artifacts import cached_fake_artifacts

KINDS = ["jump", "distractor", "mixed"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench")
    rc = main(["--artifacts", str(cached_fake_artifacts()), "--out", str(out), "--quick", "--no-progress",
               "--kinds", *KINDS, "--caps", "2"])
    assert rc == 0
    return json.loads((out / "gate_bench.json").read_text()), out


def test_quick_run_covers_every_gate_family_on_paired_seeds(quick):
    report, out = quick
    fams = {r["family"] for r in report["policies"]}
    assert {"always", "default", "interval", "state", "pixel", "drift", "consistency", "jump", "random",
            "drift+consistency", "drift+cap", "jump+cap", "pixel+cap"} <= fams
    default = next(r for r in report["policies"] if r["family"] == "default")
    assert default["gate"] == "drift:0.05"  # the fake folder has no gate.default: drift at its manifest threshold
    assert report["headline"]["default"]["name"] == "default:drift"
    both = next(r for r in report["policies"] if r["family"] == "drift+consistency")
    drift = next(r for r in report["policies"] if r["family"] == "drift" and r["label"] == both["label"])
    assert both["gate"].startswith("any:drift:") and ",consistency:" in both["gate"]
    for kind in KINDS:  # the union fires at least as often as drift alone on the same seeds
        assert both["per_kind"][kind]["resamples"]["mean"] >= drift["per_kind"][kind]["resamples"]["mean"] - 1e-9
    assert any(r["refine"] for r in report["policies"])
    seeds = report["config"]["seeds"]
    for r in report["policies"]:
        assert set(r["per_kind"]) == set(KINDS)
        for kind in KINDS:
            assert [e["seed"] for e in r["episodes"][kind]] == seeds[kind]
            assert r["per_kind"][kind]["faults"] == 0
    always = next(r for r in report["policies"] if r["family"] == "always")
    chunk = next(r for r in report["policies"] if r["label"] == "chunk")
    for kind in KINDS:  # always resamples on every tick; open-loop only when its chunk runs out
        a, c = always["per_kind"][kind], chunk["per_kind"][kind]
        assert a["resamples"]["mean"] == pytest.approx(a["ticks"])
        assert c["resamples"]["mean"] <= a["resamples"]["mean"] / 2
    for fam in ("drift", "consistency", "jump", "pixel", "state"):
        cal = report["calibration"][fam]
        assert cal["n"]["quiet"] > 0 and cal["default_threshold"] == cal["quiet_quantiles"]["p95"]
    md = (out / "gate_bench.md").read_text()
    assert "## Headline" in md and all(f"## `{k}`" in md for k in KINDS)
    assert Path(report["plots"]["success_vs_resamples"]).is_file()


def test_attribution_blames_the_latest_live_change():
    changes = [{"tick": 10, "end": 10, "relevant": False}, {"tick": 13, "end": 13, "relevant": True}]
    assert attribute(9, changes) == "none"
    assert attribute(11, changes) == "irrelevant"
    assert attribute(13, changes) == attribute(18, changes) == "relevant"
    assert attribute(19, changes) == "none"


def test_calibration_labels():
    jump, burst = Change(12, "jump"), Change(5, "noise", duration=4)
    assert label(0, 11, [jump]) == "quiet" and label(0, 12, [jump]) == "relevant"
    assert label(12, 15, [jump]) == "quiet"  # the plan already saw the jump
    assert label(6, 7, [burst]) == "irrelevant"  # planned during the burst: its end changes the image again
    assert label(9, 12, [burst]) == "quiet"
    assert label(8, 9, [burst]) == "irrelevant"  # planned on the burst's last tick: the image changes back at 9


def test_a_plan_made_at_a_moves_last_step_saw_its_final_goal():
    move = Change(15, "move", duration=6, speed=0.01)  # goal positions at ticks 15..20
    assert move.end == 20
    assert label(19, 23, [move]) == "relevant"  # the step at 20 came after the plan
    assert label(20, 23, [move]) == label(21, 30, [move]) == "quiet"  # the plan saw the final position
    assert label(10, 15, [move]) == "relevant"


@settings(max_examples=60, deadline=None)
@given(neg=st.lists(st.integers(0, 5), min_size=1, max_size=12), pos=st.lists(st.integers(0, 5), min_size=1,
                                                                             max_size=12))
def test_auroc_matches_the_pairwise_definition(neg, pos):
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auroc(neg, pos) == pytest.approx(brute)


def test_cis_contain_the_estimate():
    for k, n in ((0, 40), (40, 40), (17, 40)):
        lo, hi = wilson(k, n)
        assert 0.0 <= lo <= k / n <= hi <= 1.0
    c = mean_ci([1, 2, 3, None])
    assert c["n"] == 3 and c["lo"] < c["mean"] == 2.0 < c["hi"]
    cal = summarize_family({"quiet": list(range(100)), "irrelevant": [50.0], "relevant": [200.0]}, 7.0)
    assert [lab for lab, _ in cal["sweep"]] == ["manifest", "p80", "p90", "p95", "p98", "p99", "3xp99"]


@settings(max_examples=40, deadline=None)
@given(scale=st.floats(0.01, 1.99), spread=st.floats(0.0, 2.0))
def test_every_benchmarked_spec_is_one_make_gate_accepts(scale, spread):
    """A cosine family's sweep (3 x p99, …) can land at or above 2, which no distance exceeds: it is left out of
    the sweep, so every spec the benchmark builds parses (make_gate refuses such thresholds, naming the spec)."""
    from runtime.gate import make_gate

    quiet = list(np.linspace(scale * (1 - spread / 2), scale, 50).clip(0, 2))
    dist = {"quiet": quiet, "irrelevant": [scale], "relevant": [2.0]}
    cal = {fam: summarize_family(dist, None, family=fam) for fam in ("drift", "consistency", "jump")}
    cal["state"] = summarize_family(dist, None, family="state")
    assert all(thr < 2.0 for fam in ("drift", "consistency", "jump") for _, thr in cal[fam]["sweep"])
    assert [lab for lab, _ in cal["state"]["sweep"]][-1] == "3xp99"  # not a cosine distance: kept
    specs = policy_specs(cal, 10, (3,), [lab for lab, _ in cal["state"]["sweep"]], [], (6,))
    for s in specs:
        if s.spec != "default":
            make_gate(s.spec)


def _res(name, family, succ, resamples, irrelevant=0.0, n=40):
    ci = {"mean": resamples, "lo": resamples, "hi": resamples, "n": n}
    eps = [{"seed": i, "success": i < round(succ * n)} for i in range(n)]
    return {"name": name, "family": family, "gate": name, "refine": False, "episodes": {"mixed": eps},
            "per_kind": {"mixed": {"success_rate": round(succ * n) / n, "resamples": ci,
                                   "gated_irrelevant": {"mean": irrelevant, "lo": 0, "hi": 0, "n": n}}}}


def test_headline_cls_beats_pixel():
    rs = [_res("always", "always", 1.0, 30), _res("drift:p95", "drift", 0.975, 6, 0.1),
          _res("pixel:p95", "pixel", 0.975, 9, 3.0), _res("pixel:p99", "pixel", 0.8, 4)]
    h = compute_bench_headline(rs)
    assert h["cls"]["name"] == "drift:p95" and h["cls"]["qualifies"]
    assert h["pixel"]["name"] == "pixel:p95" and h["pixel"]["cls_fewer_resamples"]
    assert "FEWER" in "\n".join(headline_lines(h))


def test_headline_states_where_pixel_wins_or_cls_fails():
    rs = [_res("always", "always", 1.0, 30), _res("drift:p95", "drift", 0.9, 5),
          _res("pixel:p95", "pixel", 0.95, 5)]
    h = compute_bench_headline(rs)
    assert not h["cls"]["qualifies"]  # 10 points below always
    assert not h["pixel"]["cls_fewer_resamples"]
    text = "\n".join(headline_lines(h))
    assert "does NOT meet" in text and "pixel gate ties or wins" in text
    assert "error" in compute_bench_headline(rs[1:])


def test_plan_only_consistency_episodes_count_plan_encoder_passes():
    """With act_cls.wiring=plan_only every consistency check runs plan_encoder (not the delta expert): the
    benchmark must record those passes per episode and show them, or plan-only consistency looks free."""
    from evaluation.bench_runner import run_episode, summarize
    from runtime.gate import observing_gate
    from runtime.policy import EdgePolicy
    from simtask.bench_env import BenchEnv

    art = cached_fake_artifacts(act_cls_wiring="plan_only")
    env = BenchEnv(slack=5)
    recs = []
    for spec in (observing_gate("consistency"), "always"):
        policy = EdgePolicy(art, gate=spec, seed=0)
        rec = run_episode(policy, env, 11, "mixed")
        assert rec["plan_encoder_passes"] == policy.episode_counters.plan_encoder_passes
        recs.append(rec)
    cons, always = recs
    assert cons["gate_checks"] > 0 and cons["plan_encoder_passes"] == cons["gate_checks"]
    assert cons["delta_passes"] == 0 and always["plan_encoder_passes"] == 0
    assert summarize([cons, cons])["plan_encoder_passes"] == pytest.approx(cons["plan_encoder_passes"])


def test_report_table_has_a_plan_encoder_column(quick):
    report, out = quick
    md = (out / "gate_bench.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| policy | gate | success"))
    assert "plan enc/ep" in header
    row = next(line for line in md.splitlines() if line.startswith("| always |"))
    assert row.count("|") == header.count("|")
    assert all("plan_encoder_passes" in r["per_kind"]["mixed"] for r in report["policies"])


def test_per_tick_labels_for_the_jump_gate():
    """jump compares consecutive prefix ticks: a change counts on the tick it becomes visible, a noise burst on
    every tick it lasts and on the tick after (the image changes back), an ongoing goal move is `moving`."""
    jump, burst, move = Change(12, "jump"), Change(5, "noise", duration=4), Change(20, "move", duration=3)
    assert step_label(11, 12, [jump]) == "relevant" and step_label(12, 13, [jump]) == "quiet"
    assert step_label(10, 11, [jump]) == "quiet"
    assert [step_label(t - 1, t, [burst]) for t in range(4, 11)] == \
        ["quiet", "irrelevant", "irrelevant", "irrelevant", "irrelevant", "irrelevant", "quiet"]
    assert [step_label(t - 1, t, [move]) for t in range(19, 24)] == ["quiet", "relevant", "moving", "moving", "quiet"]
    assert step_label(20, 21, [move, Change(21, "distractor")]) == "irrelevant"  # the new change outranks a move
    assert step_label(9, 12, [jump]) == "relevant"  # a gap between prefix ticks: anything in it counts
    # the since-plan label of the same tick differs: the plan made at 0 has not seen the jump yet
    assert label(0, 13, [jump]) == "relevant"


def test_capped_specs_and_their_intervals():
    cal = {"drift": {"sweep": [("p90", 0.5), ("p95", 0.7), ("manifest", 0.9)], "capped_p95": {"6": 0.6, "8": 0.65}},
           "pixel": {"sweep": [("p95", 1.7)], "capped_p95": {"6": 1.6}},
           "jump": {"sweep": [("p95", 0.25), ("p99", 0.6)], "capped_p95": {"6": 0.2, "8": 0.25}},
           "consistency": {"sweep": []}}
    specs = policy_specs(cal, chunk=10, intervals=[3], sweep=["p95"], refine=[], caps=[6, 8])
    by_name = {s.name: s for s in specs}
    # the capped copies use the p95 of the plan ages they decide on, the uncapped gate the all-ages one
    assert by_name["drift+cap:p95/6"].spec == "any:drift:0.6,interval:6" and by_name["drift:p95"].spec == "drift:0.7"
    assert by_name["drift+cap:manifest/8"].spec == "any:drift:0.9,interval:8"
    assert by_name["jump+cap:p95/8"].spec == "any:jump:0.25,interval:8" and "jump:p95" in by_name
    assert by_name["pixel+cap:p95/6"].param == 6.0 and not any(n.startswith("consistency+cap") for n in by_name)
    assert {s.spec for s in specs if s.family == "interval"} == {"interval:3", "interval:6", "interval:8",
                                                                   "interval:10"}
    assert "jump+cap:p99/6" not in by_name  # only p95 and manifest get a capped copy
    # a cap that never binds (K >= chunk) is left out; a repeated K runs once
    again = [s.name for s in policy_specs(cal, chunk=10, intervals=[3], sweep=["p95"], refine=[], caps=[6, 6, 10, 12])]
    assert len(again) == len(set(again)) and "drift+cap:p95/6" in again
    assert not any(n.endswith(("/10", "/12")) for n in again)


def _capped(name, family, succ, resamples, k, n=40):
    r = _res(name, family, succ, resamples, n=n)
    r["param"] = float(k)
    return r


def test_headline_counts_capped_cls_gates_and_compares_with_the_cap_alone():
    rs = [_res("always", "always", 1.0, 36), _res("drift:p95", "drift", 0.85, 5),
          _capped("jump+cap:p95/6", "jump+cap", 1.0, 8, 6), _capped("interval:6", "interval", 0.975, 6.8, 6),
          _capped("interval:3", "interval", 1.0, 12.4, 3), _capped("pixel+cap:p95/6", "pixel+cap", 1.0, 12, 6),
          _res("pixel:p95", "pixel", 0.95, 10)]
    h = compute_bench_headline(rs)
    assert h["cls"]["name"] == "jump+cap:p95/6" and h["cls"]["qualifies"]
    assert h["pixel"]["name"] == "pixel+cap:p95/6" and h["pixel"]["cls_fewer_resamples"]
    assert h["interval"]["name"] == "interval:6" and h["interval"]["qualifies"]  # 12.4 > 30 % of 36
    cap = h["cap_alone"]
    assert cap["name"] == "interval:6" and cap["success_gain"] == pytest.approx(0.025)
    assert cap["paired"]["only_this"] == 1 and not cap["buys_success"]  # one episode: not significant
    text = "\n".join(headline_lines(h))
    assert "NOT significant" in text and "interval-only" in text and "`interval:6`" in text


def test_headline_says_whether_the_manifest_default_meets_the_rule():
    always = _res("always", "always", 1.0, 30)
    good = _res("default:any:drift,interval:6", "default", 0.975, 6)
    h = compute_bench_headline([always, good, _res("drift:p95", "drift", 0.8, 4)])
    assert h["default"]["qualifies"] and h["default"]["resample_fraction"] == pytest.approx(0.2)
    assert h["cls"]["name"] == "drift:p95"  # the default is reported, not counted as a CLS family of its own
    assert "default gate **default:any:drift,interval:6** (`default:any:drift,interval:6`) MEETS" in \
        "\n".join(headline_lines(h))
    stale = compute_bench_headline([always, _res("default:drift", "default", 0.85, 4.5)])
    assert not stale["default"]["qualifies"] and "does NOT meet" in "\n".join(headline_lines(stale))
    assert compute_bench_headline([always])["default"] is None


def test_policy_specs_run_the_default_right_after_always():
    specs = policy_specs({}, 10, (), ("p95",), (), (6,), default="any:drift,interval:6")
    assert [(s.family, s.spec, s.name) for s in specs[:2]] == [("always", "always", "always"),
                                                                ("default", "default", "default:any:drift,interval:6")]
    assert all(s.family != "default" for s in policy_specs({}, 10, (), ("p95",), (), (6,)))


def test_cap_alone_verdicts():
    always, cap = _res("always", "always", 1.0, 36), _capped("interval:6", "interval", 0.6, 6, 6)
    strong = compute_bench_headline([always, cap, _capped("jump+cap:p95/6", "jump+cap", 1.0, 8, 6)])
    assert strong["cap_alone"]["buys_success"] and strong["cap_alone"]["paired"]["mcnemar_p"] < 0.05
    assert "BUYS" in "\n".join(headline_lines(strong))
    weak = compute_bench_headline([always, cap, _capped("drift+cap:p95/6", "drift+cap", 0.6, 7, 6)])
    assert not weak["cap_alone"]["buys_success"] and "buys NOTHING" in "\n".join(headline_lines(weak))
    # an uncapped CLS gate is compared with the best interval-only policy
    plain = compute_bench_headline([always, cap, _capped("interval:3", "interval", 0.9, 12, 3),
                                    _res("jump:p95", "jump", 0.95, 6)])
    assert plain["cap_alone"]["name"] == "interval:3"


def test_pooled_headline_pairs_episodes_by_kind_and_seed():
    """Seeds repeat across kinds; the pooled test must pair (kind, seed), not seed alone."""
    def pooled(name, family, per_kind_success, resamples):
        r = _res(name, family, 1.0, resamples)
        r["episodes"] = {k: [{"seed": i, "success": i < round(s * 40)} for i in range(40)]
                         for k, s in per_kind_success.items()}
        ok = sum(e["success"] for v in r["episodes"].values() for e in v)
        r["all"] = {"success_rate": ok / 80, "resamples": {"mean": resamples},
                    "gated_irrelevant": {"mean": 0.0}}
        return r

    rs = [pooled("always", "always", {"mixed": 1.0, "jump": 1.0}, 30),
          pooled("jump:p95", "jump", {"mixed": 1.0, "jump": 0.5}, 6),
          pooled("interval:6", "interval", {"mixed": 0.5, "jump": 1.0}, 6)]
    h = compute_bench_headline(rs, POOLED)
    assert h["cls"]["success"] == 0.75 and not h["cls"]["qualifies"]
    assert (h["interval"]["paired_cls"]["only_this"], h["interval"]["paired_cls"]["only_other"]) == (20, 20)
    assert "all kinds pooled" in "\n".join(headline_lines(h))


@settings(max_examples=30, deadline=None)
@given(tied=st.integers(96, 100), tail=st.lists(st.floats(1.5, 9.0), max_size=4), manifest=st.sampled_from([None, 1.0]))
def test_tied_quantiles_keep_every_label(tied, tail, manifest):
    """p80 = p90 = p95 (a coarse quiet distribution) must still leave p95 and everything keyed on it: the
    family's p95 gate, its capped copy, the default +refine, the random gate matched to it."""
    from evaluation.bench_calibration import SWEEP_LABELS, missing_labels

    quiet = [1.0] * tied + tail
    dist = {"quiet": quiet, "irrelevant": [2.0], "relevant": [3.0], "moving": [],
            "ages": {"quiet": [1 + i % 9 for i in range(len(quiet))]}}
    cal = {f: summarize_family(dist, manifest if f == "drift" else None, caps=(6,))
           for f in ("drift", "consistency", "jump", "pixel", "state")}
    for fam, c in cal.items():
        labels = [lb for lb, _ in c["sweep"]]
        assert sorted(labels) == sorted(lb for lb in SWEEP_LABELS if lb != "manifest" or (fam == "drift" and manifest))
        assert dict(c["sweep"])["p95"] == c["default_threshold"]
    names = {s.name for s in policy_specs(cal, 10, (3,), ("p80", "p95"), ("pixel:p95", "drift:p95"), (6,))}
    assert {"pixel:p80", "pixel:p95", "pixel:p95+refine", "drift:p95+refine", "pixel+cap:p95/6",
            "drift+consistency:p95"} <= names
    assert missing_labels(cal, ["p95", "manifest"], ("drift", "consistency", "jump")) == \
        [f"{f}:manifest" for f in ("drift", "consistency", "jump") if f != "drift" or manifest is None]


def test_policy_specs_refuse_an_unknown_refine_name():
    cal = {"drift": {"sweep": [("p95", 0.7)]}}
    with pytest.raises(ValueError, match=r"--refine: no policy named 'drift:p99'"):
        policy_specs(cal, 10, (), ("p95",), ("drift:p95", "drift:p99"), ())


def test_p_values_have_three_significant_digits():
    """0/4 discordant pairs: exact p = 0.125 (it printed as 0.13)."""
    h = compute_bench_headline([_res("always", "always", 1.0, 30), _res("drift:p95", "drift", 0.9, 5)])
    assert h["cls"]["paired_always"]["mcnemar_p"] == pytest.approx(0.125)
    text = "\n".join(headline_lines(h))
    assert "p = 0.125" in text and "p = 0.13" not in text
    from evaluation.bench_report import fmt_p

    assert [fmt_p(p) for p in (1.0, 0.004, 0.125, 0.5)] == ["1.00", "0.00400", "0.125", "0.500"]


def test_the_report_states_its_policy_count(quick):
    report, out = quick
    assert f"· {len(report['policies'])} policies × {len(KINDS)} kinds ·" in (out / "gate_bench.md").read_text()


def test_timeline_of_an_any_gate_keeps_each_parts_threshold():
    """`any:drift:0.5,consistency:1.2`: each tick's distance comes from one part; one threshold line would
    misplace half of them. Several parts → distance / own threshold (fires above 1), one series per part."""
    from evaluation.bench_plots import timeline_series

    ticks = [{"tick": 0, "distance": None, "threshold": None, "reason": "queue_empty"},
             {"tick": 1, "distance": 0.25, "threshold": 0.5, "reason": "drift"},
             {"tick": 2, "distance": 0.6, "threshold": 1.2, "reason": "consistency"},
             {"tick": 3, "distance": 1.0, "threshold": 0.5, "reason": "drift"}]
    series, scaled = timeline_series(ticks)
    assert scaled and {(s["part"], s["threshold"]) for s in series} == {("drift", 0.5), ("consistency", 1.2)}
    by = {s["part"]: s for s in series}
    assert by["drift"]["ticks"] == [1, 3] and by["drift"]["values"] == [0.5, 2.0]
    assert by["consistency"]["values"] == [0.5]
    one, scaled = timeline_series([t for t in ticks if t["reason"] != "consistency"])
    assert not scaled and one[0]["values"] == [0.25, 1.0] and one[0]["threshold"] == 0.5  # one part: raw distance


@settings(max_examples=60, deadline=None)
@given(thr=st.floats(0.0, 2.0, exclude_max=True), manifest=st.floats(0.0, 2.0, exclude_max=True))
def test_benchmarked_thresholds_are_the_calibrated_ones_exactly(thr, manifest):
    """The gate run under `<family>:manifest` must be the shipped one: the manifest's threshold to the last bit,
    not rounded into the spec string (1.066712039852871 ran as 1.06671; 1.9999999 as 2, which make_gate refuses)."""
    from runtime.gate import make_gate

    cal = {fam: {"sweep": [("p95", thr), ("manifest", manifest)], "capped_p95": {"5": thr}}
           for fam in ("drift", "consistency", "jump", "pixel", "state")}
    specs = [s for s in policy_specs(cal, 10, (3,), ["p95", "manifest"], [], (5,)) if s.label.startswith(("p95", "man"))]
    assert len(specs) == 5 * 2 + 2 + 4 * 2  # every family at both labels, drift+consistency at both, the capped ones
    for s in specs:
        gate = make_gate(s.spec)
        got = {p.threshold for p in getattr(gate, "parts", [gate]) if hasattr(p, "threshold")}
        assert got == {thr if s.label.startswith("p95") else manifest}, s


def test_random_gate_runs_at_the_measured_rate_exactly():
    from evaluation.gate_bench import random_spec
    from runtime.gate import make_gate

    for rate in (0.123456789, 1 / 3, 1e-7):
        assert make_gate(random_spec("drift", rate).spec).p == rate


def test_an_interval_past_the_chunk_is_not_run_twice():
    """interval:K with K > the executed chunk never fires before the queue runs out: it is interval:chunk under
    another name (a duplicate policy, and a second point on the interval curve), so like a cap it is not run."""
    specs = policy_specs({}, 10, (3, 10, 20, 99), ["p95"], [], (5, 12))
    assert [s.spec for s in specs if s.family == "interval"] == ["interval:3", "interval:5", "interval:10"]


@settings(max_examples=30, deadline=None)
@given(n=st.integers(20, 200), growth=st.floats(0.01, 0.2), cap=st.integers(2, 9))
def test_a_capped_gate_is_calibrated_on_the_plan_ages_it_decides_on(n, growth, cap):
    """`+cap:p95/K` fires on the clock from plan age K on, so its change part only decides on ages < K: its p95 is
    that of the quiet distances at those ages (the export's horizon rule), not of every age up to the chunk —
    quiet distances grow with age, and the all-ages p95 fired on 1.9 % (consistency) vs 3.6 % (pixel) of the
    quiet ticks a cap-5 gate decides on (export (c) of docs/11, 8 held-out episodes per kind)."""
    ages = [1 + i % 9 for i in range(n)]
    quiet = [growth * a + 0.001 * (i % 7) for i, a in enumerate(ages)]
    dist = {"quiet": quiet, "irrelevant": [0.5], "relevant": [1.5], "moving": [],
            "ages": {"quiet": ages, "irrelevant": [1], "relevant": [1], "moving": []}}
    cal = {fam: summarize_family(dist, None, family=fam, caps=(cap,)) for fam in ("drift", "pixel")}
    young = [d for d, a in zip(quiet, ages) if a < cap]
    for fam in ("drift", "pixel"):
        assert cal[fam]["capped_p95"] == {str(cap): float(np.percentile(young, 95))}
    capped = {s.family: s for s in policy_specs(cal, 10, (), ["p95"], [], (cap,)) if s.family.endswith("+cap")}
    for fam in ("drift", "pixel"):
        thr = float(capped[f"{fam}+cap"].spec.split(":")[2].split(",")[0])
        assert thr == cal[fam]["capped_p95"][str(cap)] <= cal[fam]["default_threshold"]


def test_the_quick_run_calibrates_its_capped_gates_on_young_plans(quick):
    from runtime.gate import make_gate

    report, _ = quick
    for r in report["policies"]:
        if r["family"].endswith("+cap") and r["label"].startswith("p95/"):
            fam, k = r["family"].removesuffix("+cap"), r["label"].split("/")[1]
            assert make_gate(r["spec"]).parts[0].threshold == report["calibration"][fam]["capped_p95"][k]


def test_a_suite_that_was_not_run_is_not_blamed_on_always():
    """`--kinds jump`: the `mixed` headline must say the suite did not run, not that `always` did not."""
    rs = [_res("always", "always", 1.0, 30), _res("drift:p95", "drift", 0.975, 6)]
    for r in rs:
        r["per_kind"], r["episodes"] = {"jump": r["per_kind"]["mixed"]}, {"jump": r["episodes"]["mixed"]}
    err = compute_bench_headline(rs)["error"]
    assert "not run" in err and "--kinds" in err and "always" not in err
    assert compute_bench_headline(rs, "jump").get("error") is None


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 500), frac=st.floats(0.0, 1.0))
def test_wilson_contains_its_estimate(n, frac):
    k = round(frac * n)
    lo, hi = wilson(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0 and hi > lo
