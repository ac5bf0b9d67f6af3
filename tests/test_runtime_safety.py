"""Action safety: nothing non-finite or out of bounds is ever emitted; fallbacks are reported."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

try:
    from tests.fake_artifacts import cached_fake_artifacts, make_observation
except ImportError:
    from fake_artifacts import cached_fake_artifacts, make_observation

from runtime.manifest import Bounds
from runtime.policy import EdgePolicy
from runtime.safety import ActionGuard, hold_or_stop

B = Bounds(low=np.array([-1.0, 0.0], np.float32), high=np.array([1.0, 2.0], np.float32))
ANY = st.floats(allow_nan=True, allow_infinity=True, width=32)


@settings(max_examples=300, deadline=None)
@given(actions=st.lists(st.lists(ANY, min_size=2, max_size=2), min_size=1, max_size=8),
       fallback=st.sampled_from(["hold", "stop"]), oob=st.sampled_from(["clip", "fallback"]))
def test_guard_output_always_finite_and_inside(actions, fallback, oob):
    g = ActionGuard(B, None, fallback, oob)
    for a in actions:
        r = g.check(np.array(a, np.float32))
        assert np.all(np.isfinite(r.action)) and np.all(r.action >= B.low) and np.all(r.action <= B.high)
        inside = np.all(np.isfinite(a)) and np.all(np.array(a) >= B.low) and np.all(np.array(a) <= B.high)
        if inside:
            assert not (r.clipped or r.fallback) and np.array_equal(r.action, np.array(a, np.float32))
        else:
            assert r.clipped or r.fallback  # every alteration is reported
            assert r.reason


@settings(max_examples=300, deadline=None)
@given(moving=st.lists(st.booleans(), min_size=2, max_size=2),
       actions=st.lists(st.lists(ANY, min_size=2, max_size=2) | st.none(), min_size=1, max_size=8),
       oob=st.sampled_from(["clip", "fallback"]))
def test_a_fallback_never_sends_a_position_dimension_to_the_stop_pose(moving, actions, oob):
    """Per dimension (`--fallback auto`): a position dimension gets the last value the guard let through, and the
    whole tick is None (send nothing) while it has none — before, the first bad row was the stop pose everywhere."""
    stop = np.array([0.7, 1.3], np.float32)  # a stop pose away from any action below
    moving = np.array(moving)
    g = ActionGuard(B, stop, "hold", oob, stop_dims=moving)
    last = None
    for a in actions:
        r = g.check(None if a is None else np.array(a, np.float32))
        if not r.fallback:
            last = r.action
            continue
        assert (r.action is None) == (last is None and not moving.all())
        if r.action is not None:
            assert np.array_equal(r.action[moving], stop[moving])
            assert moving.all() or np.array_equal(r.action[~moving], last[~moving])
            assert np.array_equal(r.action, hold_or_stop(stop, last, moving))  # the safe stop's rule, shared


def test_clip_vs_fallback_for_out_of_bounds():
    g = ActionGuard(B, None, "hold", "clip")
    r = g.check(np.array([5.0, 1.0]))
    assert r.clipped and not r.fallback and r.action.tolist() == [1.0, 1.0]
    g = ActionGuard(B, None, "hold", "fallback")
    g.check(np.array([0.5, 0.5]))
    r = g.check(np.array([5.0, 1.0]))
    assert r.fallback and r.action.tolist() == [0.5, 0.5]  # held the last safe action


def test_hold_and_stop_fallbacks():
    hold = ActionGuard(B, None, "hold")
    first = hold.check(np.array([np.nan, 0.0]))
    assert first.fallback and first.action.tolist() == [0.0, 0.0]  # nothing to hold yet → stop action
    hold.check(np.array([0.3, 1.5]))
    assert hold.check(np.array([np.inf, 0.0])).action.tolist() == pytest.approx([0.3, 1.5])
    hold.reset()
    assert hold.check(None).action.tolist() == [0.0, 0.0]
    stop = ActionGuard(B, np.array([0.0, 1.0], np.float32), "stop")
    stop.check(np.array([0.3, 1.5]))
    assert stop.check(np.array([np.nan, 0.0])).action.tolist() == [0.0, 1.0]  # manifest stop action
    assert ActionGuard(B, np.array([9.0, 9.0]), "stop").stop_action.tolist() == [1.0, 2.0]  # clipped into bounds
    assert hold.check(np.zeros(3)).fallback  # wrong shape is never passed through


def test_policy_clips_and_counts():
    art = cached_fake_artifacts(action_bound=0.005)  # tighter than the plan's typical 0.01-0.05 actions
    p = EdgePolicy(art, gate="never", backend_options={"intra_op_threads": 1})
    clipped = []
    for k in range(12):
        a = p.step(make_observation(k))
        assert np.all(np.abs(a) <= 0.005)
        clipped.append(p.last_info.clipped)
        if p.last_info.clipped:
            assert np.isclose(np.abs(a).max(), 0.005)  # clipped onto the bound, not replaced
    assert sum(clipped) > 0 and p.counters.clipped == sum(clipped) and p.counters.fallbacks == 0

    q = EdgePolicy(art, gate="never", out_of_bounds="fallback", fallback="stop", backend_options={"intra_op_threads": 1})
    for k in range(12):
        a = q.step(make_observation(k))
        assert np.all(np.abs(a) <= 0.005)
        if q.last_info.fallback:
            assert a.tolist() == [0.0, 0.0] and "outside action_bounds" in q.last_info.safety
    assert q.counters.fallbacks > 0 and q.counters.clipped == 0
