"""The gate inside an asynchronous job: which plan rows its CLS part sees, and how often it checks.

Training and the export's calibration pair the observation of tick t with the plan rows from t on (the plan
with t − planning tick rows consumed). A job plans for the observation of its tick while the queue it keeps is
what runs after the delay; the consistency gate must still encode the rows from the observation's tick.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

try:
    from tests.fake_artifacts import cached_fake_artifacts, make_observation
except ImportError:  # pragma: no cover
    from fake_artifacts import cached_fake_artifacts, make_observation

from runtime.async_planner import AsyncChunkPlanner
from runtime.gate import observing_gate
from runtime.policy import EdgePolicy

N = 8  # chunk_size = n_action_steps of the fake export


def _policy(wiring: str, **kw) -> EdgePolicy:
    return EdgePolicy(cached_fake_artifacts(chunk_size=N, act_cls_wiring=wiring), seed=0, **kw)


def _spy(policy: EdgePolicy, wiring: str) -> list[np.ndarray]:
    """Record the plan rows the gate's act-CLS graph is fed (plan encoder: the valid rows; delta expert: all)."""
    seen: list[np.ndarray] = []
    backend = policy.backend
    if wiring == "plan_only":
        inner = backend.run_plan_encoder

        def run_plan_encoder(plan, valid):
            seen.append(plan[0, : int(valid.sum())].copy())
            return inner(plan, valid)

        backend.run_plan_encoder = run_plan_encoder
    else:
        inner = backend.run_delta_expert

        def run_delta_expert(actions, prefix):
            seen.append(actions[0].copy())
            return inner(actions, prefix)

        backend.run_delta_expert = run_delta_expert
    return seen


@settings(max_examples=25, deadline=None)
@given(wiring=st.sampled_from(["plan_only", "seed"]), ran=st.integers(1, N - 2), delay=st.integers(0, 3),
       margin=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_the_consistency_gate_encodes_the_plan_from_the_observations_tick(wiring, ran, delay, margin, seed):
    """The act-CLS of an async job is computed on the executing rows from the job's tick (as calibrated), while
    the queue and the refill rule keep using the rows after the delay."""
    if len(range(ran, N)) - delay <= margin:
        return  # the job refills without consulting the gate
    pol = _policy(wiring, gate=observing_gate("consistency"))  # checks every job, never fires
    planner = AsyncChunkPlanner(pol, seam="none", margin=margin)
    first = planner.plan(make_observation(seed), 0, None, 0, delay)
    assert first.chunk is not None
    chunk = first.chunk.actions
    executing = chunk[ran:]
    seen = _spy(pol, wiring)
    res = planner.plan(make_observation(seed + 1), ran, executing, ran, delay)
    assert res.info.gate_checked and res.info.gate_reason == "consistency" and not res.info.resampled
    assert len(seen) == 1
    got = seen[0]
    if wiring == "plan_only":
        np.testing.assert_array_equal(got, executing)  # exactly the rows from the observation's tick
    else:
        np.testing.assert_array_equal(got[: len(executing)], executing)
        assert np.all(got[len(executing):] == executing[-1])  # the delta input's tail repeats the last row
    assert res.info.queue_left == len(executing) - delay - 1  # the queue: the rows after the delay, one popped


def test_a_refined_kept_plan_is_refined_on_the_queued_rows():
    """Seed wiring + refinement: the gate's delta is computed on other rows (from the observation's tick) than
    the queue, so it is not reused to refine the queue: the continuation is the queue plus its own delta."""
    pol = _policy("seed", gate=observing_gate("consistency"), refine=True)
    planner = AsyncChunkPlanner(pol, seam="none")
    chunk = planner.plan(make_observation(0), 0, None, 0, 2).chunk.actions
    ran, delay = 2, 2
    executing = chunk[ran:]
    seen = _spy(pol, "seed")
    res = planner.plan(make_observation(1), ran, executing, ran, delay)
    assert res.chunk is not None and res.chunk.continues and res.info.refined
    assert len(seen) == 2  # the gate's pass on the rows from the tick, then the refinement's on the queue
    queue = executing[delay:]
    np.testing.assert_array_equal(seen[1][: len(queue)], queue)


@settings(max_examples=30, deadline=None)
@given(every=st.integers(1, 4), spacing=st.integers(1, 4), delay=st.integers(0, 2))
def test_check_every_counts_ticks_since_the_last_check_whatever_the_job_rhythm(every, spacing, delay):
    """Jobs every `spacing` ticks, a delay of `delay`: the gate checks on a job iff at least `check_every` ticks
    passed since the last check (or the plan) — e.g. jobs every 2 ticks with delay 1 and check_every 2 check
    every job, where a plan-age rule (age = ran + delay, always odd) never checked."""
    pol = _policy("seed", gate="never", check_every=every)
    planner = AsyncChunkPlanner(pol, seam="none")
    chunk = planner.plan(make_observation(0), 0, None, 0, delay).chunk.actions
    last_check, checks = 0, 0
    for tick in range(spacing, N, spacing):
        if len(chunk[tick:]) - delay <= 0:
            break
        info = planner.plan(make_observation(tick), tick, chunk[tick:], tick, delay).info
        assert not info.resampled
        assert info.gate_checked == (tick - last_check >= every), (tick, last_check, info.gate_reason)
        if info.gate_checked:
            last_check, checks = tick, checks + 1
    if spacing * 2 < N - delay and every <= spacing:
        assert checks >= 1
