"""Planning that takes as long as the plan runs (delay d >= n_action_steps): the model still produced chunk_size rows,
and rows d.. of them are still in the future when the chunk lands. Before, every chunk was cut to n_action_steps rows
first, so it landed stale and the robot got nothing at all (75 of 75 ticks empty); now a chunk keeps up to
2·d + margin of its rows (never more than chunk_size) — the rows that bridge the delay — while the gate and the
policy's queue still see only its first n_action_steps rows, as calibrated. A chunk that cannot cover the delay at
all ends the run with a reason that names the delay and the sizes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation.latency_loop import LatencyLoop
from runtime.async_planner import AsyncChunkPlanner, rows_to_run
from runtime.policy import EdgePolicy
from tests.fake_artifacts import cached_fake_artifacts, make_observation

CHUNK, N = 8, 4


def _policy(gate: str = "never") -> EdgePolicy:
    return EdgePolicy(cached_fake_artifacts(chunk_size=CHUNK, n_action_steps=N), gate=gate, seed=0,
                      backend_options={"intra_op_threads": 1})


def _spy_sync_plan(policy: EdgePolicy) -> list[tuple[int, int, int]]:
    """Record (queued rows, plan age, gate-plan rows) of every `sync_plan` that leaves the gate a plan to judge."""
    seen: list[tuple[int, int, int]] = []
    inner = policy.sync_plan

    def sync_plan(plan, ticks_since_plan, gate_plan=None, ticks_since_check=None):
        if plan is not None and len(plan):
            seen.append((len(plan), ticks_since_plan, len(plan) if gate_plan is None else len(gate_plan)))
        return inner(plan, ticks_since_plan, gate_plan=gate_plan, ticks_since_check=ticks_since_check)
    policy.sync_plan = sync_plan
    return seen


@settings(max_examples=12, deadline=None)
@given(latency=st.integers(1, CHUNK + 1), margin=st.integers(0, N - 1), gate=st.sampled_from(["never", "always"]))
def test_a_chunk_that_outlasts_the_delay_runs_even_when_the_delay_exceeds_n_action_steps(latency, margin, gate):
    from simtask import ReachEnv, TaskConfig

    policy = _policy(gate)
    seen = _spy_sync_plan(policy)
    loop = LatencyLoop(policy, "aligned", latency, margin=margin)
    rec = loop.episode(ReachEnv(TaskConfig()), 0, False)
    c = loop.timeline.counters
    if latency < CHUNK:  # some rows of every chunk are still in the future when it lands: the robot runs
        assert c.stale_chunks == 0 and c.chunks_installed >= 1, (latency, margin, c)
        if 2 * latency <= CHUNK:  # the kept rows last until the next chunk lands: no tick without a row
            assert c.empty_ticks == latency, (latency, margin, c)  # only the wait for the first chunk
        else:
            assert c.empty_ticks < rec["steps"]
    else:  # no row outlasts the delay: every chunk is stale (the robot loop ends the run, see below)
        assert c.chunks_installed == 0 and c.stale_chunks >= 1
    # the gate and the policy's queue only ever see the first n_action_steps rows of a chunk (as calibrated)
    assert all(rows + age <= N and gate_rows <= N for rows, age, gate_rows in seen), seen


@pytest.mark.parametrize("delay", range(12))
@pytest.mark.parametrize("margin", range(N))
def test_rows_kept_are_n_action_steps_unless_the_delay_needs_more(delay, margin):
    kept = rows_to_run(N, CHUNK, delay, margin)
    assert N <= kept <= CHUNK
    assert kept == N or kept == min(CHUNK, 2 * delay + margin)
    assert (kept > N) == (2 * delay + margin > N)  # only when n rows cannot last until the next chunk lands


def test_the_planner_keeps_the_rows_that_bridge_a_long_delay():
    planner = AsyncChunkPlanner(_policy(), seam="none", margin=1)
    short = planner.plan(make_observation(0), 0, None, 0, 1)
    assert len(short.chunk.actions) == N  # 2 * 1 + 1 <= 4: the plan alone lasts
    long = planner.plan(make_observation(1), 9, None, 0, 3)
    assert len(long.chunk.actions) == 7  # 2 * 3 + 1 rows: rows 3..6 run until the next chunk lands
    longer = planner.plan(make_observation(2), 20, None, 0, 9)
    assert len(longer.chunk.actions) == CHUNK  # never more than the model produced
