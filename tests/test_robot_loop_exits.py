"""Every way out of `run_robot` / `runtime robot` ends safely: an exception from a hook or a driver's SystemExit
still sends the stop action and disconnects (then propagates), a refused argument still closes the source, a
robot whose connect() failed half-way is disconnected again, and a backend hung in a graph call delays neither
the torque-off nor the exit beyond the worker's join timeout."""

from __future__ import annotations

import json
import sys
import threading
import time
import types

import numpy as np
import pytest

from robot_adapters.sim_reach import SimReachRobot, SimReachSettings
from runtime import async_policy
from runtime.backend import Backend
from runtime.policy import EdgePolicy
from runtime.robot_interface import RobotInterface
from runtime.robot_loop import AsyncSource, SourceAction, run_robot
from tests.serve_fixtures import ACTION_BOUND, robot_artifacts

STOP = np.array([0.05, -0.05], np.float32)


@pytest.fixture(scope="module")
def iface():
    with EdgePolicy(robot_artifacts()) as p:
        yield RobotInterface.from_manifest(p.manifest)


class Source:
    """A fixed action every tick; counts `close()`."""

    def __init__(self):
        self.closes = 0

    def reset(self):
        pass

    def next_action(self, tick, robot_obs):
        return SourceAction(np.array([0.01, 0.0], np.float32))

    def close(self):
        self.closes += 1


class Robot(SimReachRobot):
    """The simulated robot; `raise_at` = (tick, exception) raised by get_observation at that tick."""

    def __init__(self, raise_at=None):
        super().__init__(SimReachSettings(episodes=5, action_bound=ACTION_BOUND))
        self.raise_at, self.n, self.disconnects = raise_at, 0, 0

    def get_observation(self):
        self.n += 1
        if self.raise_at and self.n == self.raise_at[0]:
            raise self.raise_at[1]
        return super().get_observation()

    def disconnect(self):
        self.disconnects += 1
        super().disconnect()


def _raise_at(n, exc):
    calls = {"n": 0}

    def hook(*args):
        calls["n"] += 1
        if calls["n"] == n:
            raise exc
        return False
    return hook


EXITS = {
    "on_tick raises": lambda: (Robot(), {"on_tick": _raise_at(4, RuntimeError("telemetry sink down"))}),
    "should_stop raises": lambda: (Robot(), {"should_stop": _raise_at(5, OSError("e-stop button read failed"))}),
    "driver exits": lambda: (Robot(raise_at=(5, SystemExit("driver gave up"))), {}),
}


@pytest.mark.parametrize("case", sorted(EXITS))
def test_every_abnormal_exit_sends_the_stop_action_then_propagates(iface, case):
    robot, hooks = EXITS[case]()
    source = Source()
    with pytest.raises((RuntimeError, OSError, SystemExit)):
        run_robot(robot, source, iface, STOP, fps=200, max_ticks=50, **hooks)
    assert np.array_equal(robot.sent[-1], STOP) and sum(np.array_equal(a, STOP) for a in robot.sent) == 1
    assert 3 <= len(robot.sent) <= 6  # the ticks before the exit, then the stop action
    assert robot.disconnects == 1 and not robot.is_connected and source.closes == 1


@pytest.mark.parametrize("bad", [{"fps": 0}, {"fps": float("nan")}, {"fps": 30, "on_stop": "halt"},
                                 {"fps": 30, "max_starved": 0}], ids=["fps0", "fps-nan", "on_stop", "max_starved"])
def test_a_refused_argument_still_closes_the_source(iface, bad):
    robot, source = Robot(), Source()
    with pytest.raises(ValueError):
        run_robot(robot, source, iface, STOP, **bad)
    assert source.closes == 1 and not robot.is_connected and robot.sent == []


class Part:
    def __init__(self):
        self.is_connected, self.disconnect_args = True, None

    def disconnect(self, *args):
        self.disconnect_args, self.is_connected = args, False


class HalfConnected(Robot):
    """connect() fails after connecting part of the robot. `lerobot`: is_connected needs every part, disconnect()
    refuses otherwise (DeviceNotConnectedError), as lerobot's SO-101; else a robot that reports itself connected."""

    def __init__(self, lerobot):
        super().__init__()
        self.lerobot, self.bus, self.cameras = lerobot, Part(), {"top": Part(), "wrist": Part()}
        self.cameras["wrist"].is_connected = False  # the camera whose connect failed
        self.config = types.SimpleNamespace(disable_torque_on_disconnect=True)

    @property
    def is_connected(self):
        return self.connected and not self.lerobot

    def connect(self, calibrate=True):
        self.connected = True
        raise ConnectionError("camera 'wrist' failed to open")

    def disconnect(self):
        self.disconnects += 1
        if not self.is_connected:
            raise ConnectionError("HalfConnected is not connected.")  # lerobot's DeviceNotConnectedError
        self.connected = False


@pytest.mark.parametrize("lerobot", [False, True], ids=["reports-connected", "lerobot-partial"])
def test_a_robot_whose_connect_failed_is_disconnected(iface, lerobot):
    robot, source = HalfConnected(lerobot), Source()
    with pytest.raises(ConnectionError, match="wrist"):
        run_robot(robot, source, iface, STOP, fps=30)
    assert robot.disconnects == 1 and source.closes == 1 and robot.sent == []
    if lerobot:  # disconnect() refused: the parts that did connect are released themselves, torque off
        assert robot.bus.disconnect_args == (True,) and not robot.bus.is_connected
        assert robot.cameras["top"].disconnect_args == () and robot.cameras["wrist"].disconnect_args is None
    else:
        assert not robot.connected and robot.bus.disconnect_args is None


class HangingBackend(Backend):
    """Delegates; after `ok` prefix passes every pass blocks until `release` (a hung graph call)."""

    name = "hanging"

    def __init__(self, inner, ok, release):
        self.inner, self.ok, self.release = inner, ok, release

    def run_prefix(self, *args):
        self.ok -= 1
        if self.ok < 0:
            self.release.wait(60)
        return self.inner.run_prefix(*args)

    def run_main_expert(self, *args):
        return self.inner.run_main_expert(*args)

    def run_delta_expert(self, *args):
        return self.inner.run_delta_expert(*args)

    def denoise(self, *args):
        return self.inner.denoise(*args)

    def close(self):
        self.inner.close()


def hanging_policy(release, **kw):
    base = EdgePolicy(robot_artifacts())
    return EdgePolicy(robot_artifacts(), backend=HangingBackend(base.backend, 3, release), gate="always", **kw)


def test_a_hung_worker_does_not_delay_the_torque_off(monkeypatch, iface):
    """The source's close (which joins the worker, up to its timeout) runs after the disconnect, not before."""
    monkeypatch.setattr(async_policy, "_JOIN_TIMEOUT_S", 1.0)
    release = threading.Event()
    policy, robot = hanging_policy(release), Robot()
    events = []
    real_disconnect = robot.disconnect
    robot.disconnect = lambda: (events.append(("disconnect", time.perf_counter())), real_disconnect())[1]
    source = AsyncSource(policy, iface, fps=50)
    try:
        rep = run_robot(robot, source, iface, STOP, fps=50, max_ticks=2000, max_starved=5)
        ended, hung = time.perf_counter(), getattr(source, "hung", False)
    finally:
        release.set()
    assert rep.stop_reason.startswith("no action for 5 ticks") and rep.stops_sent == 1
    assert events and ended - events[0][1] >= 0.9  # the join's 1 s came after the torque-off
    assert hung  # the policy was left open: its lock is the stuck call's


def test_runtime_robot_exits_despite_a_hung_backend(monkeypatch, capsys):
    """Before, `runtime robot` never exited: its final policy.close() waited on the lock the stuck call held."""
    from runtime import robot_command
    from runtime.cli import main

    monkeypatch.setattr(async_policy, "_JOIN_TIMEOUT_S", 0.5)
    release = threading.Event()
    robot = Robot()
    monkeypatch.setitem(sys.modules, "tests._hung_robot", types.SimpleNamespace(make_robot=lambda args: robot))
    monkeypatch.setattr(robot_command, "ADAPTERS", "tests._hung_robot")
    monkeypatch.setattr(robot_command, "EdgePolicy", lambda *a, **kw: hanging_policy(release))
    watchdog = threading.Timer(20.0, release.set)  # unhangs the old code, so that it fails instead of hanging
    watchdog.start()
    t0 = time.perf_counter()
    try:
        rc = main(["robot", "--artifacts", str(robot_artifacts()), "--robot.type=any", "--task", "reach",
                   "--fps", "50", "--max-stall-s", "0.1", "--max-ticks", "2000"])
        took = time.perf_counter() - t0
    finally:
        release.set()
        watchdog.cancel()
    assert took < 10, f"runtime robot took {took:.1f} s to exit"  # 0.5 s join timeout + the run
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and rep["stop"].startswith("no action for") and rep["stops_sent"] == 1
    assert rep["disconnect"] == "ok" and robot.disconnects == 1


@pytest.mark.parametrize("gate", ["interval:10", "never", "drift"])
@pytest.mark.parametrize("ticks", [1, 3, 9])
def test_a_source_reused_for_a_second_run_never_sends_the_first_runs_plan(gate, ticks):
    """Each run_robot is a new episode: before, a SyncSource used again went on with the previous run's queued
    plan (made from another scene, another robot) — here its first action comes from a plan made in this run."""
    from runtime.robot_loop import SyncSource

    policy = EdgePolicy(robot_artifacts(), gate=gate)
    iface = RobotInterface.from_manifest(policy.manifest)
    source = SyncSource(policy, iface, task="reach the red target")
    first: list[bool] = []
    for seed in range(2):
        robot = SimReachRobot(SimReachSettings(episodes=1, seed=seed, action_bound=ACTION_BOUND))
        first.clear()
        run_robot(robot, source, iface, policy.guard.stop_action, fps=500, max_ticks=ticks,
                  on_tick=lambda tick, sa, ms: first.append(sa.resampled) if tick == 0 else None)
        assert first == [True] and policy.last_info.queue_left == policy.manifest.dims.n_action_steps - ticks
    assert policy.counters.resamples >= 2
