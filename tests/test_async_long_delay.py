"""Planning that takes as long as the plan runs (delay d >= n_action_steps): the model still produced chunk_size rows,
and rows d.. of them are still in the future when the chunk lands. Before, every chunk was cut to n_action_steps rows
first, so it landed stale and the robot got nothing at all (75 of 75 ticks empty); now a chunk keeps up to
2·d + margin of its rows (never more than chunk_size) — the rows that bridge the delay — while the gate and the
policy's queue still see only its first n_action_steps rows, as calibrated. A chunk that cannot cover the delay at
all ends the run with a reason that names the delay and the sizes."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation.latency_loop import LatencyLoop
from runtime.async_planner import AsyncChunkPlanner, rows_to_run
from runtime.backend import Backend
from runtime.policy import EdgePolicy
from tests.backend_wrappers import Delegating
from tests.fake_artifacts import cached_fake_artifacts, make_observation, robot_fake_artifacts

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


# ------------------------------------------------------------------ the robot loop, threaded
NAMES = ("x.vel", "theta.vel")


def _robot_artifacts(chunk: int):
    return robot_fake_artifacts(NAMES, chunk_size=chunk, n_action_steps=N)


class TickGated(Delegating):
    """Delegates; a denoise returns only once the robot has taken `ticks` more observations than when it was
    called (or is disconnected): planning takes at least that many ticks, whatever the machine's speed."""

    name = "tick-gated"

    def __init__(self, inner: Backend, robot, ticks: int, jobs: int | None = None):
        super().__init__(inner)
        self.robot, self.ticks, self.jobs = robot, ticks, jobs  # after `jobs` denoises: hung
        self.stop = threading.Event()

    def denoise(self, *a):
        until = len(self.robot.moving_ticks) + self.ticks
        if self.jobs is not None:
            self.jobs -= 1
            until = until if self.jobs >= 0 else float("inf")
        while len(self.robot.moving_ticks) < until and self.robot.is_connected and not self.stop.is_set():
            self.stop.wait(0.002)
        return self.inner.denoise(*a)


def _run(chunk: int, delay: int, jobs: int | None = None, **kw):
    from runtime.robot_interface import RobotInterface
    from runtime.robot_loop import AsyncSource, run_robot
    from tests.test_robot_velocity_stall import Base

    policy = EdgePolicy(_robot_artifacts(chunk), gate="always", backend_options={"intra_op_threads": 1})
    robot = Base(NAMES)
    policy.backend = gated = TickGated(policy.backend, robot, delay, jobs)
    iface = RobotInterface.from_manifest(policy.manifest)
    source = AsyncSource(policy, iface, task="reach the red target", fps=50, seam="none")
    try:
        rep = run_robot(robot, source, iface, policy.guard.stop_action, fps=50,
                        bounds=policy.manifest.action_bounds, **kw)
    finally:
        gated.stop.set()
    return rep, robot, source.executor.counters


def test_a_delay_past_n_action_steps_still_drives_the_robot():
    """n_action_steps 4, chunk 16, planning >= 5 ticks: before, every chunk was cut to 4 rows and landed stale —
    75 of 75 ticks without an action. Now rows 5..12 of each chunk run."""
    rep, robot, c = _run(16, 5, max_ticks=75, max_starved=100)
    assert rep.stop_reason == "" and rep.ticks == 75
    assert c.chunks_installed >= 3 and rep.starved < 75 // 2, (rep.starved, c)
    assert sum(robot.moving_ticks) > 75 // 2


def test_a_chunk_that_cannot_cover_the_delay_ends_the_run_naming_the_delay_and_the_sizes():
    """Chunk 8, planning >= 9 ticks: no row of any chunk is still ahead when it lands. Before, the robot was sent
    nothing for ever with the stall watchdog off; now the run ends after HOPELESS_STALE such chunks, and says why."""
    from runtime.async_policy import HOPELESS_STALE

    rep, robot, c = _run(8, 9, max_ticks=400, max_starved=None)
    assert rep.stop_reason.startswith("no chunk can cover the planning delay"), rep.stop_reason
    for part in ("n_action_steps 4", "chunk_size 8", "--fps", "faster backend", "longer chunk"):
        assert part in rep.stop_reason
    assert int(rep.stop_reason.split("planning takes ")[1].split()[0]) >= 9
    assert c.stale_chunks == HOPELESS_STALE and c.chunks_installed == 0 and rep.ticks < 400
    assert "\n" not in rep.stop_reason and not any(robot.moving_ticks)


def test_the_stall_watchdog_says_the_chunks_came_but_stale():
    """One chunk lands stale (planning >= 9 ticks, 4 rows kept by the first job's delay estimate), then the backend
    hangs: the watchdog's reason says what happened — before, "the first plan never came"."""
    rep, _, c = _run(8, 9, jobs=1, max_ticks=400, max_starved=10)
    assert c.stale_chunks == 1
    assert rep.stop_reason.startswith("no action for 50 ticks in a row (1 chunk arrived, all stale: planning takes ")
    assert "a chunk holds 4 rows (n_action_steps 4, chunk_size 8)" in rep.stop_reason, rep.stop_reason
