"""Re-anchoring (`ActionEmitter(reanchor=True)`): the motion the skipped rows of an aligned chunk assumed but
the robot did not make is added back over the next rows — never outside the action bounds, and in full when
the bounds cut nothing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

try:
    from tests.fake_artifacts import cached_fake_artifacts
except ImportError:
    from fake_artifacts import cached_fake_artifacts

from evaluation.latency_loop import LatencyLoop, parse_mode
from runtime.policy import EdgePolicy
from runtime.timeline import SLEW_FLOOR, ActionEmitter, ActionTimeline, TimedChunk, _ramp

CHUNK = 8


@pytest.fixture(scope="module")
def policy():
    return EdgePolicy(cached_fake_artifacts(chunk_size=CHUNK), gate="always", seed=0,
                      backend_options={"intra_op_threads": 1})


def _normalised(policy, raw: np.ndarray) -> np.ndarray:
    """Raw displacements [T, action_dim] → the normalised rows [T, max_action_dim] the timeline holds."""
    u = policy.unnormalize
    rows = np.zeros((len(raw), policy.manifest.dims.max_action_dim), np.float32)
    rows[:, : u.action_dim] = (raw - u._add) / u._mul
    return rows


@settings(max_examples=50, deadline=None)
@given(d=st.integers(1, 12))
def test_ramp_adds_the_whole_residual_rising(d):
    left, added = 1.0, []
    for share in _ramp(d):
        added.append(left * share)
        left -= left * share
    assert left == pytest.approx(0.0, abs=1e-12)
    assert all(b > a for a, b in itertools.pairwise(added))  # rising: the catch-up does not start with a jump


@settings(max_examples=40, deadline=None)
@given(planned=st.integers(1, 4), delay=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_the_robot_ends_where_the_new_plan_meant_when_the_bounds_cut_nothing(policy, planned, delay, seed):
    """Old plan holds still; a new chunk planned at `planned` lands `delay` ticks later. With re-anchoring the
    actions sent from the planning tick to the chunk's end add up to the chunk's own total displacement."""
    rng = np.random.default_rng(seed)
    low, high = policy.guard.low, policy.guard.high
    hold = np.zeros((CHUNK, len(low)), np.float32)
    new = rng.uniform(0.05, 0.2, size=(CHUNK, len(low))).astype(np.float32) * (high - low) / 2 * 0.5
    tl = ActionTimeline(align=True)
    em = ActionEmitter(policy, tl, reanchor=True)
    tl.install(TimedChunk(0, _normalised(policy, hold), 0))
    sent = []
    for tick in range(planned + delay):
        sent.append(em.emit(tick))
    assert tl.install(TimedChunk(planned, _normalised(policy, new), 1))
    for tick in range(planned + delay, planned + CHUNK):
        sent.append(em.emit(tick))
        assert np.all(sent[-1] >= low - 1e-6) and np.all(sent[-1] <= high + 1e-6)
    total = np.sum(sent[planned:], axis=0)
    np.testing.assert_allclose(total, new.sum(axis=0), atol=1e-4)
    without = ActionEmitter(policy, ActionTimeline(align=True), reanchor=False)
    without.timeline.install(TimedChunk(0, _normalised(policy, hold), 0))
    plain = [without.emit(t) for t in range(planned + delay)]
    without.timeline.install(TimedChunk(planned, _normalised(policy, new), 1))
    plain += [without.emit(t) for t in range(planned + delay, planned + CHUNK)]
    assert np.abs(np.sum(plain[planned:], axis=0) - new.sum(axis=0)).max() > 1e-3  # plain alignment loses it


def test_a_catch_up_larger_than_the_bounds_is_clipped_and_carried(policy):
    low, high = policy.guard.low, policy.guard.high
    tl = ActionTimeline(align=True)
    em = ActionEmitter(policy, tl, reanchor=True)
    tl.install(TimedChunk(0, _normalised(policy, np.zeros((CHUNK, len(low)), np.float32)), 0))
    for t in range(4):
        em.emit(t)
    fast = np.tile(high * 0.9, (CHUNK, 1)).astype(np.float32)  # the skipped rows wanted nearly full speed
    tl.install(TimedChunk(0, _normalised(policy, fast), 1))
    out = [em.emit(t) for t in range(4, CHUNK)]
    assert all(np.all(a <= high + 1e-6) and np.all(np.isfinite(a)) for a in out)
    assert np.all(em.residual > 0)  # not all of it fitted: what is left is kept, not dropped silently


def test_mode_parsing_and_waypoints_refused(policy):
    m = parse_mode("aligned+reanchor")
    assert m.align and m.reanchor and m.seam == "none"
    assert parse_mode("aligned+reanchor+blend").seam == "blend"
    assert not parse_mode("aligned+inpaint").reanchor
    with pytest.raises(ValueError, match="reanchor"):
        LatencyLoop(policy, "aligned+reanchor", 3, waypoints=True)


def test_the_catch_up_never_turns_a_valid_row_into_a_fallback():
    """out_of_bounds='fallback': a catch-up beyond the bounds is cut at them, so the chunk keeps running
    instead of the robot repeating the old plan's last action."""
    strict = EdgePolicy(cached_fake_artifacts(chunk_size=CHUNK), gate="always", seed=0, out_of_bounds="fallback",
                        backend_options={"intra_op_threads": 1})
    low, high = strict.guard.low, strict.guard.high
    tl = ActionTimeline(align=True)
    em = ActionEmitter(strict, tl, reanchor=True)
    tl.install(TimedChunk(0, _normalised(strict, np.tile(high * 0.8, (CHUNK, 1)).astype(np.float32)), 0))
    for t in range(4):
        em.emit(t)
    back = np.tile(low * 0.9, (CHUNK, 1)).astype(np.float32)  # the new plan turns round at nearly full speed
    tl.install(TimedChunk(0, _normalised(strict, back), 1))
    out = [em.emit(t) for t in range(4, CHUNK)]
    assert em.fallbacks == 0
    assert all(np.all(a >= low - 1e-6) and np.all(a <= high + 1e-6) for a in out)
    assert all(np.all(a < 0) for a in out)  # it follows the new plan, not the old direction


def test_a_non_finite_skipped_row_adds_no_catch_up(policy):
    tl = ActionTimeline(align=True)
    em = ActionEmitter(policy, tl, reanchor=True)
    rows = _normalised(policy, np.zeros((CHUNK, len(policy.guard.low)), np.float32))
    rows[0, 0] = np.nan
    tl.install(TimedChunk(0, rows, 0))
    em.emit(2)
    assert np.all(np.isfinite(em.residual)) and np.all(em.residual == 0)


def _floor(policy) -> float:
    return SLEW_FLOOR * float(np.linalg.norm(policy.guard.high - policy.guard.low))


def _seam_run(policy, new: np.ndarray, planned: int, delay: int, slew: float | None, extra: int = 0):
    """Old plan holds still; `new` (raw) planned at `planned` lands `delay` ticks later; rows after the chunk:
    a hold chunk installed at the end, so a carried residual can be spent. Returns the actions sent."""
    low = policy.guard.low
    hold = np.zeros((CHUNK, len(low)), np.float32)
    tl = ActionTimeline(align=True)
    em = ActionEmitter(policy, tl, reanchor=True, slew=slew)
    tl.install(TimedChunk(0, _normalised(policy, hold), 0))
    sent = [em.emit(t) for t in range(planned + delay)]
    assert tl.install(TimedChunk(planned, _normalised(policy, new), 1))
    sent += [em.emit(t) for t in range(planned + delay, planned + CHUNK)]
    return sent, em


@settings(max_examples=40, deadline=None)
@given(planned=st.integers(1, 3), delay=st.integers(1, 3), slew=st.floats(0.5, 3.0), seed=st.integers(0, 10_000))
def test_slew_bounds_every_step_and_stays_in_bounds(policy, planned, delay, slew, seed):
    """With `slew`, no emitted action differs from the previous one by more than slew × the plans' mean row
    step, and every action stays inside the bounds."""
    rng = np.random.default_rng(seed)
    low, high = policy.guard.low, policy.guard.high
    new = (rng.uniform(-1, 1, size=(CHUNK, len(low))) * (high - low) / 2 * 0.3).astype(np.float32)
    sent, _ = _seam_run(policy, new, planned, delay, slew)
    rows = np.stack([policy.unnormalize(r) for r in _normalised(policy, new)])
    # the mean over both chunks' row steps (the hold chunk's are all 0), never under the floor
    limit = max(slew * np.linalg.norm(np.diff(rows, axis=0), axis=1).sum() / (2 * (CHUNK - 1)), _floor(policy))
    steps = np.linalg.norm(np.diff(np.stack(sent[planned + delay - 1:]), axis=0), axis=1)
    assert np.all(steps <= limit * (1 + 1e-4) + 1e-6), (steps, limit)
    for a in sent:
        assert np.all(a >= low - 1e-6) and np.all(a <= high + 1e-6)


def test_slew_holds_back_motion_without_losing_it(policy):
    """A seam that would jump: the limited emitter starts smaller than the plain one, and what it held back is
    in the residual (sent + residual == the plan's total from the planning tick on)."""
    low, high = policy.guard.low, policy.guard.high
    ramp = np.linspace(0.2, 1.0, CHUNK)[:, None] * (high - low) / 2 * 0.4  # accelerating: mean row step > 0
    new = ramp.astype(np.float32)
    plain, _ = _seam_run(policy, new, 2, 2, None)
    limited, em = _seam_run(policy, new, 2, 2, 1.0)
    seam = 4  # first tick of the new chunk
    assert np.linalg.norm(limited[seam] - limited[seam - 1]) < np.linalg.norm(plain[seam] - plain[seam - 1])
    total = np.sum(limited[2:], axis=0) + em.residual
    np.testing.assert_allclose(total, new.sum(axis=0), atol=1e-4)


def test_slew_must_be_positive_and_parses_from_the_mode(policy):
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="slew"):
            ActionEmitter(policy, ActionTimeline(), reanchor=True, slew=bad)
    assert parse_mode("aligned+reanchor+slew").slew and not parse_mode("aligned+reanchor").slew
    assert parse_mode("aligned+slew").slew and not parse_mode("aligned+slew").reanchor


@settings(max_examples=40, deadline=None)
@given(slew=st.floats(0.5, 3.0), seed=st.integers(0, 10_000), bad_at=st.integers(-1, 4 * CHUNK - 1))
def test_slew_without_reanchoring_limits_absolute_targets_and_reaches_them(policy, slew, seed, bad_at):
    """Absolute targets: each step is bounded by slew × the mean row step known at that tick, the distance to a
    held target never grows and it is reached exactly once the limit allows (nothing carried), and an invalid
    row is never limited: the guard's fallback goes out as is."""
    rng = np.random.default_rng(seed)
    low, high = policy.guard.low, policy.guard.high
    first = (rng.uniform(-1, 1, size=(CHUNK, len(low))) * (high - low) / 2 * 0.2).astype(np.float32)
    target = (rng.uniform(-1, 1, size=len(low)) * (high - low) / 2 * 0.8).astype(np.float32)
    second = np.repeat(target[None], 4 * CHUNK, axis=0)
    rows = [_normalised(policy, first), _normalised(policy, second)]
    if bad_at >= 0:  # one non-finite row in the second chunk
        rows[1][bad_at, 0] = np.nan
    emitters = [ActionEmitter(policy, ActionTimeline(align=True), reanchor=False, slew=slew)]
    sent: list[list[np.ndarray]] = [[]]
    for k, em in enumerate(emitters):
        em.timeline.install(TimedChunk(0, rows[0], 0))
        sent[k] += [em.emit(t) for t in range(CHUNK)]
        em.timeline.install(TimedChunk(CHUNK, rows[1], 1))
        sent[k] += [em.emit(t) for t in range(CHUNK, 5 * CHUNK)]
    limited = sent[0]
    first_steps = np.linalg.norm(np.diff(first, axis=0), axis=1).sum()
    n_second = 4 * CHUNK - 1 - (0 if bad_at < 0 else 1 if bad_at in (0, 4 * CHUNK - 1) else 2)  # finite steps
    limits = ([max(slew * first_steps / (CHUNK - 1), _floor(policy))] * CHUNK
              + [max(slew * first_steps / (CHUNK - 1 + n_second), _floor(policy))] * 4 * CHUNK)
    bad = CHUNK + bad_at if bad_at >= 0 else -10
    for i in range(1, len(limited)):
        assert np.all(limited[i] >= low - 1e-6) and np.all(limited[i] <= high + 1e-6)
        if i == bad:  # the guard's fallback from the emitter's own history, untouched by the limit
            g = emitters[0].guard
            want = limited[i - 1] if g.fallback_mode == "hold" else g.stop_action
            np.testing.assert_array_equal(limited[i], want)
            continue
        assert np.linalg.norm(limited[i] - limited[i - 1]) <= limits[i] * (1 + 1e-4) + 1e-6 or i - 1 == bad
        if i > max(CHUNK, bad + 1):  # toward a held target: never farther
            assert np.linalg.norm(limited[i] - target) <= np.linalg.norm(limited[i - 1] - target) + 1e-6
    start = max(CHUNK, bad + 1)
    if np.linalg.norm(limited[start - 1] - target) <= limits[-1] * (len(limited) - start) * 0.99:
        np.testing.assert_allclose(limited[-1], target, atol=1e-5)  # reachable in time: reached, nothing lost


@pytest.mark.parametrize("reanchor", [True, False])
def test_slew_starts_from_nothing_before_the_first_delivery(policy, reanchor):
    """Empty ticks before the first chunk send nothing (`hold_empty`): the first plan row goes out as planned, not
    slewed from a stop pose the robot never got; `reset` (a new episode) forgets what was delivered."""
    low, high = policy.guard.low, policy.guard.high
    row = ((high - low) / 2 * 0.9).astype(np.float32)  # far from the stop action
    tl = ActionTimeline(align=True)
    em = ActionEmitter(policy, tl, reanchor=reanchor, slew=0.5)
    for t in range(3):
        assert em.emit(t, hold_empty=True) is None  # nothing queued: nothing sent
    tl.install(TimedChunk(3, _normalised(policy, np.repeat(row[None], CHUNK, 0) * np.linspace(1, 0.9, CHUNK)[:, None]), 0))
    np.testing.assert_allclose(em.emit(3, hold_empty=True), row, rtol=1e-5)
    em.reset()
    assert em.last_delivered is None and em._step_n == 0


@settings(max_examples=60, deadline=None)
@given(reanchor=st.booleans(), slew=st.floats(0.5, 3.0), seed=st.integers(0, 10_000),
       ticks=st.lists(st.tuples(st.integers(0, 6), st.sampled_from(["ok", "lost", "clipped"])), min_size=4, max_size=30))
def test_the_slew_limit_always_starts_from_the_last_action_delivered(policy, reanchor, slew, seed, ticks):
    """Per tick: maybe a new chunk (smooth, at a random offset: its first row would jump), then the action, then
    what the robot got (all of it, nothing, or a clipped copy). Across empty ticks, lost sends and chunk boundaries
    every action is within the limit of the last one the robot really got — before, an empty tick or a lost send
    dropped the starting point and the next chunk's first row jumped."""
    rng = np.random.default_rng(seed)
    low, high = policy.guard.low, policy.guard.high
    tl = ActionTimeline(align=True)
    em = ActionEmitter(policy, tl, reanchor=reanchor, slew=slew)
    got = None  # what the robot really holds
    for t, (new_rows, outcome) in enumerate(ticks):
        if new_rows >= 2:  # a chunk of `new_rows` rows planned now (ticks after it are empty until the next one)
            base = rng.uniform(-0.9, 0.9, len(low)) * high
            rows = base + np.linspace(0, 0.02, new_rows)[:, None] * (high - low)
            tl.install(TimedChunk(t, _normalised(policy, rows.astype(np.float32)), t))
        a = em.emit(t, hold_empty=True)
        if a is None:
            continue
        limit = max(slew * em._step_sum / em._step_n, _floor(policy))
        assert got is None or np.linalg.norm(a - got) <= limit * (1 + 1e-4) + 1e-6, (t, a, got, limit)
        assert np.all(a >= low - 1e-6) and np.all(a <= high + 1e-6)
        if outcome == "lost":
            em.delivered(t, None)
        else:
            got = a if outcome == "ok" else (a * 0.5).astype(np.float32)
            em.delivered(t, got)


def test_slew_floor_keeps_a_near_constant_plan_moving(policy):
    """A plan of (almost) constant rows has a step scale near 0; the floor still lets a seam finish within a few
    ticks instead of freezing the robot between two such plans."""
    low, high = policy.guard.low, policy.guard.high
    rng = np.random.default_rng(0)
    v1, v2 = (high - low) / 2 * 0.3, -(high - low) / 2 * 0.3
    chunk = lambda v: (np.repeat(v[None], CHUNK, 0) + rng.normal(0, 1e-7, (CHUNK, len(low)))).astype(np.float32)
    tl = ActionTimeline(align=True)
    em = ActionEmitter(policy, tl, reanchor=False, slew=2.0)
    tl.install(TimedChunk(0, _normalised(policy, chunk(v1)), 0))
    sent = [em.emit(t) for t in range(CHUNK)]
    tl.install(TimedChunk(CHUNK, _normalised(policy, chunk(v2)), 1))
    sent += [em.emit(t) for t in range(CHUNK, 2 * CHUNK)]
    floor = _floor(policy)
    ticks = int(np.ceil(np.linalg.norm(v2 - v1) / floor)) + 1
    assert ticks < CHUNK
    np.testing.assert_allclose(sent[CHUNK + ticks], v2, atol=1e-5)


def test_one_wild_row_does_not_switch_the_slew_limit_off(policy):
    """A finite row far outside the bounds (the guard clips it) is clipped before it enters the step scale."""
    low, high = policy.guard.low, policy.guard.high
    base = np.linspace(0.1, 0.3, CHUNK)[:, None] * (high - low) / 2
    wild = base.copy()
    wild[2] = 1e4
    tl = ActionTimeline(align=True)
    em = ActionEmitter(policy, tl, reanchor=False, slew=1.0)
    tl.install(TimedChunk(0, _normalised(policy, wild.astype(np.float32)), 0))
    [em.emit(t) for t in range(CHUNK)]
    assert em._step_sum / em._step_n <= float(np.linalg.norm(high - low)) + 1e-6


@pytest.mark.parametrize("reanchor", [True, False])
def test_a_row_just_outside_the_bounds_is_clipped_then_limited(policy, reanchor):
    """Under out_of_bounds="clip" a seam row a hair outside the bounds gets the same limit as one a hair inside
    (it is clipped first); before, it skipped the limit and jumped ~10x further."""
    low, high = policy.guard.low, policy.guard.high
    assert policy.guard.out_of_bounds == "clip"
    steps = []
    for scale in (0.999, 1.001):
        tl = ActionTimeline(align=True)
        em = ActionEmitter(policy, tl, reanchor=reanchor, slew=1.0)
        start = np.repeat((low * 0.9)[None], CHUNK, 0) + np.linspace(0, 1e-3, CHUNK)[:, None]
        tl.install(TimedChunk(0, _normalised(policy, start.astype(np.float32)), 0))
        sent = [em.emit(t) for t in range(CHUNK)]
        jump = np.repeat((high * scale)[None], CHUNK, 0)
        tl.install(TimedChunk(CHUNK, _normalised(policy, jump.astype(np.float32)), 1))
        sent.append(em.emit(CHUNK))
        steps.append(float(np.linalg.norm(sent[-1] - sent[-2])))
        assert np.all(sent[-1] <= high + 1e-6) and np.all(sent[-1] >= low - 1e-6)
    assert steps[1] == pytest.approx(steps[0], rel=1e-3) and steps[0] < float(np.linalg.norm(high - low)) * 0.5


@settings(max_examples=30, deadline=None)
@given(planned=st.integers(2, 4), delay=st.integers(1, 3), lost=st.sets(st.integers(0, 6)), seed=st.integers(0, 999))
def test_actions_the_robot_never_got_are_not_counted_as_motion(policy, planned, delay, lost, seed):
    """The old plan moves; some of its sends fail (`delivered(tick, None)`). Re-anchoring then catches up the
    motion those ticks lost: what the robot really got from the planning tick on adds up to the new chunk's total."""
    rng = np.random.default_rng(seed)
    low, high = policy.guard.low, policy.guard.high
    old = np.full((CHUNK, len(low)), 0.02, np.float32) * (high - low) / 2
    new = rng.uniform(0.05, 0.2, size=(CHUNK, len(low))).astype(np.float32) * (high - low) / 2 * 0.5
    tl = ActionTimeline(align=True)
    em = ActionEmitter(policy, tl, reanchor=True)
    tl.install(TimedChunk(0, _normalised(policy, old), 0))
    got = {}
    for tick in range(planned + delay):
        a = em.emit(tick)
        if tick in lost:
            em.delivered(tick, None)
        else:
            got[tick] = a
    assert tl.install(TimedChunk(planned, _normalised(policy, new), 1))
    for tick in range(planned + delay, planned + CHUNK):
        got[tick] = em.emit(tick)
    total = np.sum([got[t] for t in range(planned, planned + CHUNK) if t in got], axis=0)
    np.testing.assert_allclose(total, new.sum(axis=0), atol=1e-4)


def test_a_clipped_delivery_replaces_the_record_and_an_unknown_tick_is_ignored(policy):
    tl = ActionTimeline(align=True)
    em = ActionEmitter(policy, tl, reanchor=True)
    low, high = policy.guard.low, policy.guard.high
    tl.install(TimedChunk(0, _normalised(policy, np.full((CHUNK, len(low)), 0.5, np.float32) * high), 0))
    a = em.emit(0)
    em.delivered(5, None)  # not the last tick emitted: nothing changes
    assert em._sent[-1][0] == 0 and np.array_equal(em._sent[-1][1], a)
    em.delivered(0, a * 0.5)
    np.testing.assert_allclose(em._sent[-1][1], a * 0.5)
    np.testing.assert_allclose(em.last_delivered, a * 0.5)  # the slew limit starts from what the robot got
    em.delivered(0, None)
    assert not em._sent and em.last_delivered is None
