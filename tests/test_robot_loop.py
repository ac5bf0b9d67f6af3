"""`runtime robot`'s paced loop on the simulated reach robot: the rate holds while inference is slow (a
100 ms delay injected into every resample), Ctrl-C and repeated faults end in one stop action and a
disconnect, and the robot's observation dict maps onto the policy through the manifest's robot section."""

from __future__ import annotations

import _thread
import threading
import time

import numpy as np
import pytest

from robot_adapters.sim_reach import SimReachRobot, SimReachSettings
from runtime.backend import Backend, BackendError
from runtime.policy import EdgePolicy
from runtime.robot_interface import RobotInterface, RobotInterfaceError
from runtime.robot_loop import AsyncSource, SourceAction, SyncSource, run_robot
from tests.serve_fixtures import ACTION_BOUND, robot_artifacts

FPS = 30.0


class SlowBackend(Backend):
    """Delegates to a real backend, adding `delay_s` to every resample: in `denoise`, or spread over the Euler
    steps when a caller runs the loop itself (the inpainting seam steps the main expert one call at a time)."""

    def __init__(self, inner: Backend, delay_s: float):
        self.inner, self.delay_s, self.denoises, self.slow_s = inner, delay_s, 0, 0.0
        self.steps = 1  # the policy's Euler steps (set by `make`)

    def run_prefix(self, *args):
        return self.inner.run_prefix(*args)

    def run_main_expert(self, *args):
        time.sleep(self.delay_s / self.steps)
        self.slow_s += self.delay_s / self.steps
        return self.inner.run_main_expert(*args)

    def run_delta_expert(self, *args):
        return self.inner.run_delta_expert(*args)

    def denoise(self, *args):
        time.sleep(self.delay_s)
        self.denoises += 1
        self.slow_s += self.delay_s
        return self.inner.denoise(*args)  # the inner backend's own loop: no per-step delay on top

    def close(self):
        self.inner.close()


def make(delay_s: float = 0.0, gate: str = "drift"):
    base = EdgePolicy(robot_artifacts())
    slow = SlowBackend(base.backend, delay_s)
    policy = EdgePolicy(robot_artifacts(), backend=slow, gate=gate)
    slow.steps = policy.num_steps
    robot = SimReachRobot(SimReachSettings(episodes=1000, action_bound=ACTION_BOUND))
    return policy, slow, robot, RobotInterface.from_manifest(policy.manifest)


class Recorder:
    def __init__(self, robot: SimReachRobot):
        self.robot, self.disconnects = robot, 0
        robot_disconnect = robot.disconnect

        def disconnect():
            self.disconnects += 1
            robot_disconnect()
        robot.disconnect = disconnect


SOURCES = {"async": lambda policy, iface: AsyncSource(policy, iface, fps=FPS),  # AsyncEdgePolicy (issue #15)
           "async-noseam": lambda policy, iface: AsyncSource(policy, iface, fps=FPS, seam="none")}  # ex "thread"


@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("gate", ["always", "drift"])
def test_rate_holds_at_30hz_with_100ms_inference(gate, source):
    """With a gate that keeps plans, resamples must still start early enough that the robot never waits."""
    policy, slow, robot, iface = make(delay_s=0.100, gate=gate)
    rec = Recorder(robot)
    rep = run_robot(robot, SOURCES[source](policy, iface), iface, policy.guard.stop_action, fps=FPS, max_ticks=150)
    periods = np.array(rep.periods_ms[1:])
    rate = 1e3 / periods.mean()
    print(f"rate {rate:.2f} Hz (target {FPS}), p95 period {np.percentile(periods, 95):.1f} ms, "
          f"{slow.slow_s:.1f} s of injected inference delay, {rep.starved} starved ticks of {rep.ticks}")
    assert abs(rate - FPS) / FPS <= 0.05
    assert slow.slow_s >= 10 * 0.100  # inference really was slow (≥ 10 resamples of 100 ms) and ran all along
    assert rep.starved <= 15  # only the first chunk is waited for (about 4 ticks when the CPU is idle)
    assert robot.unsafe == 0 and rec.disconnects == 1 and rep.stops_sent == 0


def test_ctrl_c_sends_stop_once_and_disconnects():
    import signal

    policy, _, robot, iface = make()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a library that swallows Ctrl-C must not matter
    rec = Recorder(robot)
    threading.Timer(0.5, _thread.interrupt_main).start()
    rep = run_robot(robot, SyncSource(policy, iface), iface, policy.guard.stop_action, fps=FPS, max_ticks=10_000)
    assert rep.stop_reason.startswith("interrupted") and rep.stops_sent == 1
    stops = [a for a in robot.sent if np.array_equal(a, policy.guard.stop_action)]
    assert np.array_equal(robot.sent[-1], policy.guard.stop_action) and len(stops) == 1
    assert rec.disconnects == 1 and not robot.is_connected
    assert 5 < rep.ticks < 40
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # the caller's handler is restored
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("on_stop", ["stop", "hold"])
def test_repeated_faults_stop_safely(on_stop):
    policy, _, robot, iface = make()
    rec = Recorder(robot)
    calls = {"n": 0}
    real_obs = robot.get_observation

    def flaky():
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError("camera unplugged")
        return real_obs()
    robot.get_observation = flaky
    rep = run_robot(robot, SyncSource(policy, iface), iface, policy.guard.stop_action, fps=200, max_ticks=100,
                    max_faults=3, on_stop=on_stop)
    assert rep.faults == 3 and "consecutive faults" in rep.stop_reason
    assert len(robot.sent) == 5 + (on_stop == "stop")
    assert rep.stops_sent == (on_stop == "stop") and rec.disconnects == 1


def test_interface_maps_robot_dicts_both_ways():
    _, _, robot, iface = make()
    robot.connect()
    obs = iface.observation(robot.get_observation())
    assert set(obs) == {"observation.images.top", "observation.state", "task"}
    np.testing.assert_allclose(obs["observation.state"], robot.env.agent_position, rtol=1e-6)
    assert iface.action_dict(np.array([0.01, -0.02])) == pytest.approx({"dx": 0.01, "dy": -0.02})
    with pytest.raises(RobotInterfaceError, match="'y'"):
        iface.observation({"x": 0.1, "top": np.zeros((64, 64, 3), np.uint8)})
    with pytest.raises(RobotInterfaceError, match="'x' must be a number"):
        iface.observation({"x": "0.1", "y": 0.2, "top": np.zeros((64, 64, 3), np.uint8)})


def test_worker_inference_failures_count_as_faults():
    policy, _, robot, iface = make()
    real_obs = robot.get_observation
    # the interface passes images through; the policy (in the worker) refuses one outside [0, 1]
    robot.get_observation = lambda: {**real_obs(), "top": np.full((64, 64, 3), 7.0)}
    source = AsyncSource(policy, iface, fps=100)
    rep = run_robot(robot, source, iface, policy.guard.stop_action, fps=100, max_ticks=200, max_faults=3)
    assert "consecutive faults" in rep.stop_reason and "observation.images.top" in rep.stop_reason
    assert rep.stops_sent == 1 and robot.sent and np.array_equal(robot.sent[-1], policy.guard.stop_action)
    assert len(robot.sent) == 1  # nothing but the stop action ever reached the robot
    source.close()
    # a NaN motor reading is refused before the worker, by the interface, naming the motor: also a fault
    policy, _, robot, iface = make()
    real_obs = robot.get_observation
    robot.get_observation = lambda: {**real_obs(), "x": float("nan")}
    source = AsyncSource(policy, iface, fps=100)
    rep = run_robot(robot, source, iface, policy.guard.stop_action, fps=100, max_ticks=200, max_faults=3)
    source.close()
    assert "consecutive faults" in rep.stop_reason and "'x' must be a finite" in rep.stop_reason
    assert len(robot.sent) == 1 and rep.stops_sent == 1


class FailingBackend(SlowBackend):
    """Every prefix pass fails: the policy reports a fault each job and emits only its safe fallback."""

    def run_prefix(self, *args):
        raise BackendError("CUDA error: an illegal memory access was encountered")


@pytest.mark.parametrize("source", ["sync", "async"])
def test_inference_faults_end_in_the_safe_stop(source):
    """A backend that keeps failing must not hold the arm forever: repeated inference faults stop safely."""
    base = EdgePolicy(robot_artifacts())
    policy = EdgePolicy(robot_artifacts(), backend=FailingBackend(base.backend, 0.0), gate="always")
    robot = SimReachRobot(SimReachSettings(episodes=1000, action_bound=ACTION_BOUND))
    iface = RobotInterface.from_manifest(policy.manifest)
    rec = Recorder(robot)
    src = {"sync": lambda: SyncSource(policy, iface), "async": lambda: AsyncSource(policy, iface, fps=100)}[source]()
    rep = run_robot(robot, src, iface, policy.guard.stop_action, fps=100, max_ticks=300, max_faults=3)
    assert "inference faults" in rep.stop_reason and "illegal memory access" in rep.stop_reason
    assert rep.ticks < 300 and rep.stops_sent == 1 and rec.disconnects == 1
    assert robot.unsafe == 0


def test_async_source_holds_until_the_first_chunk():
    """Before any chunk exists the async source sends nothing (the arm holds), never the stop pose."""
    policy, _, robot, iface = make(delay_s=0.100, gate="always")
    rep = run_robot(robot, AsyncSource(policy, iface, fps=FPS), iface, policy.guard.stop_action, fps=FPS,
                    max_ticks=40)
    assert rep.starved >= 2  # the first chunk takes ≥ 100 ms = 3 ticks
    assert robot.sent and not any(np.array_equal(a, policy.guard.stop_action) for a in robot.sent)
    assert len(robot.sent) == rep.ticks - rep.starved


def test_planner_keeps_only_the_rows_the_robot_took():
    """A client asking for fewer actions than the plan holds: the policy's queue is cut to what was sent, so
    the gate judges the plan the robot really executes (and it runs dry together with the robot's)."""
    from runtime.chunk_planner import ChunkPlanner

    policy, _, robot, iface = make(gate="always")
    robot.connect()
    chunk = ChunkPlanner(policy, iface, max_actions=3).plan(robot.get_observation(), timestep=0, must_go=True)
    assert chunk.resampled and len(chunk.actions) == 3
    assert len(policy.queued_actions()) == 2  # the first row was emitted, two were sent ahead
    robot.disconnect()


class ScriptedSource:
    """A custom `ActionSource` (the loop's public interface) that returns scripted actions, good or bad."""

    def __init__(self, actions):
        self.actions = list(actions)

    def reset(self):
        pass

    def next_action(self, tick, robot_obs):
        a = self.actions[min(tick, len(self.actions) - 1)]
        return SourceAction(None if a is None else np.asarray(a, dtype=np.float32))

    def close(self):
        pass


@pytest.mark.parametrize("bad", [[np.nan, 0.0], [0.0, -np.inf], [0.01, 0.01, 0.01], [0.01]],
                         ids=["nan", "inf", "too-long", "too-short"])
def test_a_bad_action_from_any_source_never_reaches_the_robot(bad):
    policy, _, robot, iface = make()
    rep = run_robot(robot, ScriptedSource([[0.01, 0.0]] * 2 + [bad] * 10), iface, policy.guard.stop_action, fps=500,
                    max_ticks=12, max_faults=3, bounds=policy.manifest.action_bounds)
    assert rep.refused == 3 and rep.faults == 3 and "not sent" in rep.stop_reason
    assert len(robot.sent) == 3 and np.array_equal(robot.sent[-1], policy.guard.stop_action)  # 2 good + the stop
    assert robot.unsafe == 0


def test_out_of_bounds_actions_are_clipped_into_the_manifest_bounds():
    policy, _, robot, iface = make()
    b = policy.manifest.action_bounds
    actions = np.random.default_rng(0).normal(0.0, 0.1, size=(60, 2))  # about half outside ±0.08
    rep = run_robot(robot, ScriptedSource(actions), iface, policy.guard.stop_action, fps=1000, max_ticks=60,
                    bounds=b)
    sent = np.array(robot.sent)
    outside = int(np.sum(np.any((actions < b.low) | (actions > b.high), axis=1)))
    assert len(sent) == 60 and np.all(sent >= b.low) and np.all(sent <= b.high)
    assert rep.clipped == outside > 10 and rep.faults == 0 and robot.unsafe == 0
    inside = ~np.any((actions < b.low) | (actions > b.high), axis=1)
    np.testing.assert_allclose(sent[inside], actions[inside], rtol=1e-6)  # in-bounds actions pass untouched


class HangingBackend(SlowBackend):
    """The first resample completes; every later main-expert call blocks until `release` is set (a hung GPU)."""

    def __init__(self, inner: Backend, release: threading.Event):
        super().__init__(inner, 0.0)
        self.release, self.calls = release, 0

    def run_main_expert(self, *args):
        self.calls += 1
        if self.calls > self.steps:
            self.release.wait(20)
        return self.inner.run_main_expert(*args)

    def denoise(self, *args):
        self.calls += self.steps
        if self.calls > self.steps:
            self.release.wait(20)
        return self.inner.denoise(*args)


def test_a_hung_backend_ends_in_the_safe_stop_without_repeating_the_last_action():
    """Displacement actions: once the first chunk is used up, a repeated last action would keep the robot moving.
    The async source sends nothing while no row is ready, and `max_starved` such ticks end in the safe stop."""
    release = threading.Event()
    base = EdgePolicy(robot_artifacts())
    hanging = HangingBackend(base.backend, release)
    policy = EdgePolicy(robot_artifacts(), backend=hanging, gate="always")
    hanging.steps = policy.num_steps
    robot = SimReachRobot(SimReachSettings(episodes=1000, action_bound=ACTION_BOUND))
    iface = RobotInterface.from_manifest(policy.manifest)
    threading.Timer(3.0, release.set).start()  # lets the worker finish so close() can join it
    try:
        rep = run_robot(robot, AsyncSource(policy, iface, fps=50), iface, policy.guard.stop_action, fps=50,
                        max_ticks=1000, max_starved=10, bounds=policy.manifest.action_bounds)
    finally:
        release.set()
    n = policy.manifest.dims.n_action_steps
    assert rep.stop_reason.startswith("no action for 10 ticks") and rep.stops_sent == 1
    moves = robot.sent[:-1]
    assert 1 <= len(moves) <= n  # only the one chunk's rows, never a repeat after it ran out
    assert np.array_equal(robot.sent[-1], policy.guard.stop_action) and robot.unsafe == 0


def test_async_fault_reports_name_their_own_cause():
    """A worker exception is reported once; later job faults carry their own message, not the old exception's."""
    from types import SimpleNamespace

    policy, _, robot, iface = make()
    source = AsyncSource(policy, iface, fps=FPS)
    source.executor.close()
    counters = SimpleNamespace(jobs=0, faults=0, worker_errors=0)
    fake = SimpleNamespace(counters=counters, last_error=None, last_job=None,  # no plan row: the fallback, or None
                           submit=lambda obs, tick: None, close=lambda: None, coverage_error=lambda: None,
                           action_for_tick=lambda tick, hold_empty=False: None if hold_empty else np.zeros(2, np.float32))
    fake.job_report = lambda: (counters.jobs, counters.faults, counters.worker_errors, fake.last_job, fake.last_error)
    source.executor = fake
    robot.connect()
    obs = robot.get_observation()
    counters.jobs, counters.worker_errors, fake.last_error = 1, 1, RuntimeError("worker crashed: old cause")
    assert "old cause" in source.next_action(0, obs).fault
    counters.jobs, counters.faults = 2, 1
    fake.last_job = SimpleNamespace(fault="main_expert: new cause", gate_reason="", resampled=False, total_ms=0.0)
    report = source.next_action(1, obs)
    assert "new cause" in report.fault and "old cause" not in report.fault
    counters.jobs = 3
    fake.last_job = SimpleNamespace(fault=None, gate_reason="always", resampled=True, total_ms=1.0)
    assert source.next_action(2, obs).fault == "" and source.next_action(3, obs).action is None  # no row: nothing sent


def test_a_backend_that_never_delivers_the_first_plan_ends_in_the_safe_stop():
    """Before the first action the watchdog waits STARTUP_GRACE x max_starved ticks (first inference), not forever."""
    from runtime.robot_loop import STARTUP_GRACE

    policy, _, robot, iface = make()
    rep = run_robot(robot, ScriptedSource([None]), iface, policy.guard.stop_action, fps=1000, max_ticks=10_000,
                    max_starved=4, on_stop="hold")
    assert rep.starved == 4 * STARTUP_GRACE and "first plan never came" in rep.stop_reason
    assert robot.sent == [] and rep.stops_sent == 0


class FailFirstBackend(SlowBackend):
    """The first `n` prefix passes fail (a CUDA warm-up hiccup): faults before any plan exists."""

    def __init__(self, inner: Backend, n: int):
        super().__init__(inner, 0.0)
        self.n = n

    def run_prefix(self, *args):
        self.n -= 1
        if self.n >= 0:
            raise BackendError("CUDA warm-up hiccup")
        return self.inner.run_prefix(*args)


@pytest.mark.parametrize("failures", [1, 2])
@pytest.mark.parametrize("source", ["sync", "async"])
def test_nothing_is_sent_while_no_plan_exists(source, failures):
    """Faults before the first plan: both sources send nothing (the arm holds) — never the guard's fallback, which
    before any action is the stop action (a rest pose for position-controlled arms). Before, inline sent it."""
    from runtime.safety import ActionGuard

    base = EdgePolicy(robot_artifacts())
    policy = EdgePolicy(robot_artifacts(), backend=FailFirstBackend(base.backend, failures), gate="drift")
    rest = np.array([0.07, -0.07], np.float32)  # stands for a rest pose (--stop-action at export)
    policy.guard = ActionGuard(policy.manifest.action_bounds, rest, "hold", "clip")
    robot = SimReachRobot(SimReachSettings(episodes=1000, action_bound=ACTION_BOUND))
    iface = RobotInterface.from_manifest(policy.manifest)
    src = SyncSource(policy, iface) if source == "sync" else AsyncSource(policy, iface, fps=FPS)
    rep = run_robot(robot, src, iface, rest, fps=FPS, max_ticks=12, max_faults=5)
    assert rep.faults == failures and rep.stops_sent == 0 and rep.starved >= failures
    assert robot.sent and not any(np.array_equal(a, rest) for a in robot.sent)
    assert len(robot.sent) == rep.ticks - rep.starved  # a tick either sent its plan's action or nothing


class DeliveryRecorder(ScriptedSource):
    """A scripted source that records what the loop reports the robot really got."""

    def __init__(self, actions):
        super().__init__(actions)
        self.reports: dict[int, np.ndarray | None] = {}

    def delivered(self, tick, action):
        self.reports[tick] = None if action is None else np.array(action)


@pytest.mark.parametrize("fail_at", [(), (1,), (0, 2, 3)])
def test_the_source_learns_what_the_robot_really_got(fail_at):
    """A failed send reports None, a clipped action the clipped values, a sent one itself; a tick with nothing
    to send reports nothing, and a source without `delivered` still runs (it keeps no record)."""
    policy, _, robot, iface = make()
    b = policy.manifest.action_bounds
    send = robot.send_action

    def flaky_send(action):
        if len(calls) in fail_at:
            calls.append(None)
            raise ConnectionError("bus write failed")
        calls.append(action)
        return send(action)
    calls: list = []
    robot.send_action = flaky_send
    actions = [[0.01, 0.0], [1.0, -1.0], None, [0.02, 0.01], [0.0, 0.03]]
    src = DeliveryRecorder(actions)
    run_robot(robot, src, iface, policy.guard.stop_action, fps=500, max_ticks=len(actions), max_faults=10, bounds=b)
    assert 2 not in src.reports  # nothing to send: nothing to report
    sends = [t for t in range(len(actions)) if actions[t] is not None]
    for i, tick in enumerate(sends):
        got = src.reports[tick]
        if i in fail_at:
            assert got is None
        else:
            np.testing.assert_allclose(got, np.clip(actions[tick], b.low, b.high), rtol=1e-6)
    plain = make()
    rep = run_robot(plain[2], ScriptedSource(actions), plain[3], policy.guard.stop_action, fps=500,
                    max_ticks=len(actions), bounds=b)
    assert rep.faults == 0 and len(plain[2].sent) == 4  # every action went out
