"""Gate decision objects: queue-empty rule, check_every cadence, thresholds, spec parsing."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.gate import (
    ConsistencyGate,
    DriftGate,
    GateInputs,
    IntervalGate,
    RandomGate,
    StateGate,
    cosine_distance,
    embed,
    make_gate,
)
from runtime.manifest import GateCalibration

CAL = {"drift": GateCalibration({"p90": 0.05}, 0.05), "consistency": GateCalibration({}, 0.1)}
SPECS = ["always", "never", "interval:3", "drift:0.1", "consistency:0.2", "random:0.5", "state:0.1"]


def _unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def _inputs(queue_left=5, since=1, obs=(1, 0), plan_obs=(1, 0), act=(1, 0), state=(0, 0), plan_state=(0, 0)):
    return GateInputs(queue_left, since, _unit(obs), _unit(plan_obs), _unit(act),
                      np.array(state, np.float32), np.array(plan_state, np.float32))


@settings(max_examples=100, deadline=None)
@given(spec=st.sampled_from(SPECS), every=st.integers(1, 5), since=st.integers(0, 50),
       obs=st.lists(st.floats(0.1, 1), min_size=2, max_size=2))
def test_empty_queue_always_resamples(spec, every, since, obs):
    g = make_gate(spec, CAL, check_every=every)
    d = g.decide(_inputs(queue_left=0, since=since, obs=obs))
    assert d.resample and d.reason == "queue_empty"


@settings(max_examples=100, deadline=None)
@given(spec=st.sampled_from(SPECS), every=st.integers(2, 6), since=st.integers(1, 40))
def test_gate_only_checks_every_m_ticks(spec, every, since):
    g = make_gate(spec, CAL, check_every=every)
    # maximally "different" inputs: every checking gate would want to resample
    d = g.decide(_inputs(since=since, obs=(1, 0), plan_obs=(-1, 0), act=(0, 1), state=(9, 9)))
    cap = g.k if isinstance(g, IntervalGate) else None
    if since % every and cap is not None and since >= cap:
        # a schedule needs no inputs: its plan-age cap holds between checks too
        assert d.resample and d.reason == "interval"
    elif since % every:
        assert not d.resample and not d.checked and d.reason == "not_checked"
    else:
        assert d.checked


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 12), every=st.integers(1, 6), other=st.sampled_from(["drift:0.5", "consistency:0.5", "never"]))
def test_a_plan_age_cap_holds_whatever_the_check_rhythm(k, every, other):
    """interval:k, alone or inside any:, replans exactly when the plan is k ticks old — also on ticks that
    check_every skips (whose CLS inputs were never computed: only the schedule decides there)."""
    for spec in (f"interval:{k}", f"any:{other},interval:{k}"):
        g = make_gate(spec, CAL, check_every=every)
        for since in range(1, 3 * k + 2):
            skipped = since % every != 0
            d = g.decide(_inputs(since=since) if skipped else _inputs(since=since, obs=(1, 0), plan_obs=(1, 0),
                                                                      act=(1, 0), state=(0, 0)))
            assert d.resample == (since >= k), (spec, every, since, d)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_interval_cadence(k):
    g = IntervalGate(k)
    fired = [g.decide(_inputs(since=s)).resample for s in range(1, 12)]
    assert fired == [s >= k for s in range(1, 12)]
    # simulated episode: replans exactly every k ticks
    since, replans = 0, []
    for tick in range(30):
        if tick == 0 or g.decide(_inputs(since=since)).resample:
            replans.append(tick)
            since = 0
        since += 1
    assert np.diff(replans).tolist() == [k] * (len(replans) - 1)


@settings(max_examples=100, deadline=None)
@given(a=st.floats(0, 2 * np.pi), b=st.floats(0, 2 * np.pi), thr=st.floats(0.0, 2.0))
def test_drift_fires_iff_distance_exceeds_threshold(a, b, thr):
    obs, plan = (np.cos(a), np.sin(a)), (np.cos(b), np.sin(b))
    d = DriftGate(thr).decide(_inputs(obs=obs, plan_obs=plan))
    dist = 1 - np.cos(a - b)
    assert d.distance == pytest.approx(dist, abs=1e-9) and d.threshold == thr
    if abs(dist - thr) > 1e-9:
        assert d.resample == (dist > thr)


def test_consistency_compares_obs_with_act_not_plan_obs():
    g = ConsistencyGate(0.5)
    assert not g.decide(_inputs(obs=(1, 0), plan_obs=(-1, 0), act=(1, 0.1))).resample
    d = g.decide(_inputs(obs=(1, 0), plan_obs=(1, 0), act=(-1, 0)))
    assert d.resample and d.distance == pytest.approx(2.0)
    assert g.needs_act_cls and g.needs_obs_cls and not DriftGate(0.1).needs_act_cls


def test_state_gate_l2():
    g = StateGate(0.5)
    assert not g.decide(_inputs(state=(0.3, 0.3), plan_state=(0, 0))).resample  # |d| = 0.42
    d = g.decide(_inputs(state=(0.3, 0.4001), plan_state=(0, 0)))
    assert d.resample and d.distance == pytest.approx(0.5, abs=1e-3)


def test_random_gate_rate_and_reseed():
    g = RandomGate(0.3, seed=1)
    fires = [g.decide(_inputs()).resample for _ in range(4000)]
    assert abs(np.mean(fires) - 0.3) < 0.03
    g.reset(7)
    a = [g.decide(_inputs()).resample for _ in range(50)]
    g.reset(7)
    assert a == [g.decide(_inputs()).resample for _ in range(50)]
    assert not any(RandomGate(0.0).decide(_inputs()).resample for _ in range(100))


def test_random_gate_draws_are_independent_of_the_policys_noise():
    """EdgePolicy seeds its noise generator and the gate with the same episode seed; the random gate must not
    replay that stream, or its firing ticks follow the first plan's noise (the matched-budget baseline would not
    be random). Fired vs not fired: the mean |noise| of the value drawn from the same bits must agree."""
    for make in (lambda s: RandomGate(0.1, seed=s), lambda s: _reseeded(RandomGate(0.1, seed=12345), s)):
        fired, kept = [], []
        for seed in range(400):
            noise = np.random.default_rng(seed).standard_normal(320, dtype=np.float32)  # EdgePolicy's first plan
            g = make(seed)
            for j in range(60):
                (fired if g.decide(_inputs()).resample else kept).append(abs(float(noise[2 * j + 1])))
        assert abs(np.mean(fired) - np.mean(kept)) < 0.1, (np.mean(fired), np.mean(kept))


def _reseeded(gate, seed):
    gate.reset(seed)
    return gate


def test_default_thresholds_come_from_calibration():
    assert make_gate("drift", CAL).threshold == 0.05
    assert make_gate("consistency", CAL).threshold == 0.1
    assert make_gate("drift:0.3", CAL).threshold == 0.3
    with pytest.raises(ValueError, match="default_threshold"):
        make_gate("drift", {"drift": GateCalibration({}, None)})


@pytest.mark.parametrize("spec, msg", [
    ("interval", "needs an interval"), ("interval:x", "integer"), ("random", "probability"),
    ("random:2", r"\[0, 1\]"), ("state", "threshold"), ("magic", "unknown gate"), ("", "non-empty"),
    ("drift:nan", "finite"), ("jump:-0.1", r"finite cosine distance in \[0, 2\)"),
    ("always:5", "takes no argument"), ("any:always:3,never", "takes no argument"), ("never:abc", "no argument"),
    ("interval:99999999999999999999", r"\[1, 1000000\]"), ("interval:0", r"\[1, 1000000\]"),
])
def test_bad_specs_are_explained(spec, msg):
    with pytest.raises(ValueError, match=msg):
        make_gate(spec, CAL)
    with pytest.raises(ValueError, match="check_every"):
        make_gate("always", CAL, check_every=0)


def test_embedding_rule():
    cls = np.array([[[3.0, 0.0], [1.0, 2.0]]], np.float32)  # mean (2, 1) → unit
    e = embed(cls)
    np.testing.assert_allclose(e, np.array([2, 1]) / np.sqrt(5))
    assert cosine_distance(e, e) == pytest.approx(0.0)
    assert cosine_distance(e, -e) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="degenerate"):  # no direction: refused, not a constant distance of 1
        embed(np.zeros((1, 2, 4)))


@settings(max_examples=200, deadline=None)
@given(tokens=st.lists(st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=3), min_size=1, max_size=4),
       scale=st.sampled_from([1.0, 1e-6, 1e-13, 0.0]))
def test_embed_is_a_unit_vector_or_refuses_a_degenerate_mean(tokens, scale):
    """The contract's embedding: unit length whenever the token mean has a direction; a mean of (almost) no
    length — all zeros, or tokens that cancel — is a ValueError (the policy reports it as a backend fault)."""
    cls = np.asarray(tokens, np.float64)[None] * scale
    n = np.linalg.norm(cls[0].mean(axis=0))
    if n > 1e-12:
        assert np.linalg.norm(embed(cls)) == pytest.approx(1.0)
    else:
        with pytest.raises(ValueError, match="degenerate CLS embedding"):
            embed(cls)
    with pytest.raises(ValueError, match="degenerate"):
        embed(np.concatenate([cls, -cls], axis=1))  # tokens that cancel exactly


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(["drift", "consistency", "jump", "state", "pixel"]),
       thr=st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([-0.0, 0.0, 2.0, 1.9999, -1.0]))
def test_spec_thresholds_that_cannot_work_are_refused_naming_the_spec(name, thr):
    """A negative threshold fires on every check, NaN/inf or (cosine gates) one >= 2 never fires: all refused
    with the spec in the message. An accepted one is kept as given, and -0 reads as 0."""
    spec = f"{name}:{thr!r}"
    upper = 2.0 if name in ("drift", "consistency", "jump") else float("inf")
    if 0 <= thr < upper:
        g = make_gate(spec)
        assert g.threshold == thr and not g.spec.startswith(f"{name}:-")
        assert make_gate(f"any:{spec},interval:3").parts[0].threshold == thr
    else:
        with pytest.raises(ValueError, match=re.escape(f"gate '{spec}'")):
            make_gate(spec)
        with pytest.raises(ValueError, match=re.escape(f"gate '{spec}'")):
            make_gate(f"any:interval:3,{spec}")


def test_minus_zero_reads_as_zero():
    assert [make_gate(f"{n}:-0").spec for n in ("consistency", "drift", "state", "pixel")] == \
        ["consistency:0", "drift:0", "state:0", "pixel:0"]


def test_any_gate_fires_when_one_part_fires_and_reports_that_part():
    g = make_gate("any:drift:0.1,consistency:0.2")
    assert g.spec == "any:drift:0.1,consistency:0.2"
    assert g.needs_obs_cls and g.needs_act_cls and not g.needs_image
    quiet = g.decide(_inputs(obs=(1, 0), plan_obs=(1, 0), act=(1, 0)))
    assert not quiet.resample and quiet.checked
    drift_only = g.decide(_inputs(obs=(1, 0), plan_obs=(0, 1), act=(1, 0)))  # obs moved, plan still fits
    assert drift_only.resample and drift_only.reason == "drift" and drift_only.threshold == 0.1
    cons_only = g.decide(_inputs(obs=(1, 0), plan_obs=(1, 0), act=(0, 1)))
    assert cons_only.resample and cons_only.reason == "consistency" and cons_only.threshold == 0.2
    assert g.decide(_inputs(queue_left=0)).reason == "queue_empty"


@settings(max_examples=200, deadline=None)
@given(a=st.lists(st.floats(-1, 1), min_size=2, max_size=2), b=st.lists(st.floats(-1, 1), min_size=2, max_size=2),
       c=st.lists(st.floats(-1, 1), min_size=2, max_size=2), t1=st.floats(0, 2, exclude_max=True),
       t2=st.floats(0, 2, exclude_max=True))
def test_any_gate_is_the_union_of_its_parts(a, b, c, t1, t2):
    if min(np.linalg.norm(a), np.linalg.norm(b), np.linalg.norm(c)) < 1e-3:
        return
    inp = _inputs(obs=a, plan_obs=b, act=c)
    parts = [make_gate(f"drift:{t1}"), make_gate(f"consistency:{t2}")]
    union = make_gate(f"any:drift:{t1},consistency:{t2}").decide(inp).resample
    assert union == any(p.decide(inp).resample for p in parts)


@pytest.mark.parametrize("spec", ["any:drift:0.1", "any:", "any:drift:0.1,", "any:drift:0.1,random:0.5",
                                  "any:drift:0.1,bogus", "any:drift:0.1,any:drift:0.2,state:1"])
def test_any_gate_rejects_bad_specs_with_a_named_error(spec):
    with pytest.raises(ValueError, match="any|unknown gate"):
        make_gate(spec)


def test_any_gate_takes_calibrated_defaults_and_rejects_bad_part_thresholds():
    from runtime.policy_arguments import PolicyArgumentError, check_gate_threshold

    g = make_gate("any:drift,consistency", CAL)
    assert [p.threshold for p in g.parts] == [0.05, 0.1]
    bad = make_gate("any:drift:0.1,state:0.5")
    bad.parts[1].threshold = float("nan")
    with pytest.raises(PolicyArgumentError, match="threshold"):
        check_gate_threshold(bad)


@pytest.mark.parametrize("spec", ["any:interval:3,drift:0.1", "any:drift:0.1,interval:3"])
def test_any_reports_the_change_not_the_schedule_when_both_fire(spec):
    """A cap and a change firing on the same check: the change is what the seam rule must see, whatever the
    order of the spec (a schedule firing alone is still reported as itself)."""
    from runtime.seam import world_changed

    g = make_gate(spec)
    far = GateInputs(5, 3, obs_emb=np.array([1.0, 0.0]), plan_obs_emb=np.array([0.0, 1.0]))
    d = g.decide(far)
    assert d.resample and d.reason == "drift" and world_changed(d.reason, d.distance, d.threshold)
    near = GateInputs(5, 3, obs_emb=np.array([1.0, 0.0]), plan_obs_emb=np.array([1.0, 0.0]))
    d = g.decide(near)
    assert d.resample and d.reason == "interval" and not world_changed(d.reason, d.distance, d.threshold)
