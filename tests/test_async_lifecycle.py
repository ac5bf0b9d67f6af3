"""AsyncEdgePolicy at its edges: a job plans from the frame of its own tick whatever the driver does to its
buffer afterwards; a worker hung in a graph call is given up on by close() and reset() after their timeout
(and the policy it holds is left alone); the counters are totals over every episode; and re-anchoring counts
as sent only what the robot got (AsyncSource sends nothing on a tick with no plan row)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from robot_adapters.sim_reach import SimReachRobot, SimReachSettings
from runtime import async_policy
from runtime.async_policy import AsyncEdgePolicy, WorkerHung
from runtime.backend import Backend
from runtime.policy import EdgePolicy
from runtime.robot_interface import RobotInterface
from runtime.robot_loop import AsyncSource
from runtime.timeline import TimedChunk, TimelineCounters
from tests.fake_artifacts import CAMERA_KEY, STATE_KEY, cached_fake_artifacts, make_observation
from tests.serve_fixtures import ACTION_BOUND, robot_artifacts


class Recording(Backend):
    """Delegates; records each prefix pass's mean image value (0-255) and blocks in it while `hold` is clear."""

    name = "recording"

    def __init__(self, inner: Backend, hold: threading.Event | None = None):
        self.inner, self.hold, self.seen, self.closed = inner, hold, [], False
        self.entered = threading.Event()

    def run_prefix(self, images, *a):
        self.seen.append(float(np.mean(images[0, 0])) * 255.0)
        self.entered.set()
        if self.hold is not None:
            self.hold.wait(30)
        return self.inner.run_prefix(images, *a)

    def run_main_expert(self, *a):
        return self.inner.run_main_expert(*a)

    def run_delta_expert(self, *a):
        return self.inner.run_delta_expert(*a)

    def close(self):
        self.closed = True
        self.inner.close()


def _executor(hold=None):
    pol = EdgePolicy(cached_fake_artifacts(chunk_size=16), gate="always", seed=0,
                     backend_options={"intra_op_threads": 1})
    rec = Recording(pol.backend, hold)
    pol.backend = rec
    return AsyncEdgePolicy(pol, tick_hz=20, seam="none"), rec


@pytest.mark.parametrize("value", [0, 77, 255])
def test_a_job_plans_from_the_frame_of_its_tick(value):
    """A driver that refills one buffer in place: the job pinned to the tick sees that tick's frame, not the next."""
    ap, rec = _executor()
    obs = make_observation(0)
    buffer = np.full_like(obs[CAMERA_KEY], value)
    obs[CAMERA_KEY] = buffer
    ap.submit(obs, 0)  # the worker is not started yet: the job runs after the driver's next write
    buffer[...] = (value + 128) % 256
    obs[STATE_KEY][...] = 0.99
    with ap:
        deadline = time.monotonic() + 10
        while not rec.seen and time.monotonic() < deadline:
            time.sleep(0.01)
    assert rec.seen and rec.seen[0] == pytest.approx(value, abs=0.5)


def _blocked(monkeypatch, timeout_s):
    monkeypatch.setattr(async_policy, "_JOIN_TIMEOUT_S", timeout_s)
    hold = threading.Event()
    ap, rec = _executor(hold)
    ap.start()
    ap.submit(make_observation(0), 0)
    assert rec.entered.wait(10)  # the worker is inside a graph call that does not return
    return ap, rec, hold


def test_close_gives_up_on_a_hung_worker_and_leaves_its_policy_alone(monkeypatch):
    ap, rec, hold = _blocked(monkeypatch, 0.3)
    t0 = time.perf_counter()
    with pytest.raises(WorkerHung, match="backend hung"):
        ap.close()
    assert time.perf_counter() - t0 < 3 and ap.hung and not rec.closed
    hold.set()  # the call returns at last: a second close joins the worker and releases the backend
    ap._thread.join(10)
    assert not ap.hung
    ap.close()
    assert rec.closed


def test_reset_gives_up_on_a_hung_job(monkeypatch):
    """Before, reset() waited for the job with no timeout."""
    ap, _, hold = _blocked(monkeypatch, 0.3)
    ap.action_for_tick(0)
    outcome = []

    def reset():
        try:
            ap.reset()
            outcome.append("reset")
        except WorkerHung as exc:
            outcome.append(str(exc))
    t = threading.Thread(target=reset, daemon=True)
    t0 = time.perf_counter()
    t.start()
    t.join(5)
    took = time.perf_counter() - t0
    hold.set()
    t.join(10)
    ap.close()
    assert took < 3 and outcome and "did not finish within" in outcome[0]
    assert ap.tick == 1  # nothing was reset


@pytest.mark.parametrize("episodes", [2, 3])
def test_counters_are_totals_over_every_episode(episodes):
    """Each counter has one scope (since the executor was built): the timeline's per-episode counts add up."""
    ap, _ = _executor()  # no worker: chunks are installed by hand, deterministic
    rows = np.zeros((4, ap.policy.manifest.dims.max_action_dim), np.float32)
    per_episode = []
    for _ in range(episodes):
        ap.reset()
        ap.timeline.install(TimedChunk(2, rows, 0))  # ticks 0-1 empty (fallbacks), 2-5 planned, 6 empty
        for tick in range(7):
            ap.step(make_observation(tick))
        per_episode.append(ap.timeline.counters.as_dict())
    c = ap.counters
    for name in TimelineCounters().as_dict():
        assert getattr(c, name) == sum(e[name] for e in per_episode), name
    assert c.ticks == c.submitted == 7 * episodes and c.fallbacks == c.empty_ticks == 3 * episodes


def _normalised(policy, raw):
    u = policy.unnormalize
    rows = (np.asarray(raw, np.float32) - u._add) / u._mul
    return np.pad(rows, ((0, 0), (0, policy.manifest.dims.max_action_dim - rows.shape[1]))).astype(np.float32)


@pytest.mark.parametrize("empty_ticks", [1, 3])
def test_reanchoring_counts_only_what_the_robot_got(empty_ticks):
    """Displacements, --fallback hold: the old plan runs out at tick 3 and AsyncSource sends nothing until the late
    chunk (planned at tick 3) lands. The robot made none of its skipped rows' motion: all of it is caught up.
    Before, the emitter counted its held fallback as sent on those ticks and caught up nothing."""
    policy = EdgePolicy(robot_artifacts(), gate="always", fallback="hold")
    iface = RobotInterface.from_manifest(policy.manifest)
    robot = SimReachRobot(SimReachSettings(episodes=5, action_bound=ACTION_BOUND))
    robot.connect()
    source = AsyncSource(policy, iface, fps=30, seam="none", reanchor=True, slew=None)
    source.executor.close()  # the timeline is driven by hand
    timeline, step = source.executor.timeline, np.array([[0.05, 0.0]], np.float32)
    timeline.install(TimedChunk(0, _normalised(policy, np.repeat(step, 3, 0)), 1))  # ticks 0-2
    sent = {}
    for tick in range(4 + empty_ticks):
        if tick == 3 + empty_ticks:
            timeline.install(TimedChunk(3, _normalised(policy, np.repeat(step, 8, 0)), 2))
        action = source.next_action(tick, robot.get_observation()).action
        if action is not None:
            sent[tick] = action
    assert sorted(sent) == [0, 1, 2, 3 + empty_ticks]
    emitter = source.executor.emitter
    caught_up = emitter.residual + (sent[3 + empty_ticks] - step[0])  # still to add + added on the first row
    np.testing.assert_allclose(caught_up, step[0] * empty_ticks, atol=1e-5)
    robot.disconnect()


@pytest.mark.parametrize("death", [SystemExit("a driver library called sys.exit"), KeyboardInterrupt()])
def test_a_dead_worker_is_a_named_fault_and_the_loop_stops_at_once(death):
    """A BaseException in a job ends the worker thread: `submit` then raises WorkerDied naming it, so the robot loop
    stops on its fault rule within max_faults ticks — even with the stall watchdog off — instead of starving."""
    from runtime.async_policy import WorkerDied
    from runtime.robot_loop import run_robot

    policy = EdgePolicy(robot_artifacts(), gate="always")
    real, calls = policy.backend.denoise, {"n": 0}

    def denoise(*a):
        calls["n"] += 1
        if calls["n"] == 2:
            raise death
        return real(*a)
    policy.backend.denoise = denoise
    iface = RobotInterface.from_manifest(policy.manifest)
    robot = SimReachRobot(SimReachSettings(episodes=1000, action_bound=ACTION_BOUND))
    source = AsyncSource(policy, iface, task="reach the red target", fps=50, seam="none")
    rep = run_robot(robot, source, iface, policy.guard.stop_action, fps=50, max_ticks=2000, max_faults=3,
                    max_starved=None)
    assert "planner worker died" in rep.stop_reason and type(death).__name__ in rep.stop_reason
    assert rep.ticks < 200 and rep.stops_sent == 1 and robot.unsafe == 0 and source.executor.last_error is death
    # the executor alone: every submit after the death raises, naming it (close() disarms the check)
    policy = EdgePolicy(robot_artifacts(), gate="always")
    policy.backend.denoise = lambda *a: (_ for _ in ()).throw(death)
    ap = AsyncEdgePolicy(policy, tick_hz=50).start()
    obs = make_observation(0)
    ap.submit(obs, 0)
    ap._thread.join(10)
    with pytest.raises(WorkerDied, match=type(death).__name__):
        ap.submit(obs, 1)
    ap.close()
