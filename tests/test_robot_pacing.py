"""The robot loop's schedule (runtime.pacing): after a stall — before the send (a driver read that hung, a
resample on the loop thread) or after it (a slow hook) — the robot never gets actions in a catch-up burst, the
stall shows in the report, and while the loop keeps up the ticks stay on a fixed grid (no drift)."""

from __future__ import annotations

import json
import sys
import time
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robot_adapters.sim_reach import SimReachRobot, SimReachSettings
from runtime.manifest import Manifest
from runtime.pacing import TOLERANCE, WINDOW, Pacer
from runtime.robot_interface import RobotInterface
from runtime.robot_loop import SourceAction, run_robot
from tests.serve_fixtures import ACTION_BOUND, robot_artifacts

PERIOD = 0.02


class FakeTime:
    """A clock that only `sleep` and the simulated work move."""

    def __init__(self):
        self.t = 100.0

    def clock(self):
        return self.t

    def sleep(self, s):
        assert s >= 0
        self.t += s


tick_work = st.tuples(st.floats(0.0, 0.05 * PERIOD),  # jitter of the time to the send
                      st.sampled_from([0.0, 0.0, 0.0, 0.4, 1.3, 7.5]),  # a stall before the send (periods)
                      st.sampled_from([0.0, 0.0, 0.0, 1.2, 2.2]))  # a stall after it (periods)


@settings(max_examples=200, deadline=None)
@given(st.lists(tick_work, min_size=2, max_size=60), st.floats(0.0, 0.2 * PERIOD))
def test_actions_never_go_out_in_a_burst(work, lead):
    """Whatever stalls happen, two actions go out at least (1 - TOLERANCE) periods apart; a tick that ran
    past its slot re-bases the grid (an overrun: its period is longer), and away from stalls each tick lasts
    exactly one period (no drift)."""
    ft = FakeTime()
    pacer = Pacer(PERIOD, clock=ft.clock, sleep=ft.sleep)
    sends, starts, periods = [], [], []
    for jitter, before, after in work:
        starts.append(ft.t)
        ft.t += lead + jitter + before * PERIOD
        pacer.sending()
        sends.append(ft.t)
        ft.t += after * PERIOD
        periods.append(pacer.wait())
    gaps = np.diff(sends)
    assert np.all(gaps >= (1 - TOLERANCE) * PERIOD - 1e-9), gaps / PERIOD
    periods = np.array(periods)
    np.testing.assert_allclose(periods, np.diff([*starts, ft.t]) * 1e3, rtol=1e-9)
    stalled = [before > 0 or after > 0 for _, before, after in work]
    # a tick with no stall in it or in the WINDOW ticks before (whose leads set the usual one): one period
    quiet = np.array([not any(stalled[max(0, i - WINDOW - 1): i + 1]) for i in range(len(work))])
    np.testing.assert_allclose(periods[quiet], PERIOD * 1e3, rtol=1e-6)
    ran_over = np.array([lead + j + (before + after) * PERIOD > PERIOD for j, before, after in work])
    assert np.all(periods[ran_over] > PERIOD * 1e3 * (1 + 1e-6))  # a tick past its slot delays the next one
    assert pacer.overruns == int(np.sum(periods > PERIOD * 1e3 * (1 + 1e-6))) >= int(ran_over.sum())


def test_a_loop_that_keeps_up_stays_on_the_grid():
    """Small jitter never re-bases: tick n starts at start + n periods exactly (no drift, no overruns)."""
    ft = FakeTime()
    pacer = Pacer(PERIOD, clock=ft.clock, sleep=ft.sleep)
    t0, rng = ft.t, np.random.default_rng(0)
    for n in range(1, 500):
        ft.t += rng.uniform(0.0, 0.2) * PERIOD
        pacer.sending()
        ft.t += rng.uniform(0.0, 0.3) * PERIOD
        pacer.wait()
        assert ft.t == pytest.approx(t0 + n * PERIOD, abs=1e-9)
    assert pacer.overruns == 0


@pytest.mark.parametrize("first_lead", [0.0, 0.6])
def test_a_resample_that_fits_its_period_neither_drifts_nor_counts(first_lead):
    """Every 5th tick sends 0.45 periods late (an inline resample) but ends in time: the grid holds (30 ticks
    take 30 periods), no overrun is counted, and the hold-back still spaces the actions; a slow first tick (the
    first inference) is no overrun either."""
    ft = FakeTime()
    pacer = Pacer(PERIOD, clock=ft.clock, sleep=ft.sleep)
    t0, sends = ft.t, []
    for n in range(30):
        ft.t += (first_lead if n == 0 else 0.45 if n % 5 == 4 else 0.03) * PERIOD
        pacer.sending()
        sends.append(ft.t)
        ft.t += 0.02 * PERIOD
        pacer.wait()
    assert pacer.overruns == 0 and ft.t == pytest.approx(t0 + 30 * PERIOD, abs=1e-9)
    assert np.all(np.diff(sends) >= (1 - TOLERANCE) * PERIOD - 1e-9)


class ScriptedSource:
    """One fixed action per tick; `slow` maps tick → seconds its action takes (a resample on the loop thread)."""

    def __init__(self, slow=None):
        self.slow, self.ticks = slow or {}, []

    def reset(self):
        pass

    def next_action(self, tick, robot_obs):
        self.ticks.append(tick)
        time.sleep(self.slow.get(tick, 0.0))
        return SourceAction(np.array([0.01, 0.0], np.float32))

    def close(self):
        pass


class TimedRobot(SimReachRobot):
    """Records when each action arrives; `stall` maps tick → seconds get_observation hangs."""

    def __init__(self, stall=None):
        super().__init__(SimReachSettings(episodes=1000, action_bound=ACTION_BOUND))
        self.stall, self.n, self.sent_at = stall or {}, 0, []

    def get_observation(self):
        time.sleep(self.stall.get(self.n, 0.0))
        self.n += 1
        return super().get_observation()

    def send_action(self, action):
        self.sent_at.append(time.perf_counter())
        return super().send_action(action)


@pytest.mark.parametrize("where", ["driver read", "inline resample", "hook"])
def test_a_stall_is_never_caught_up_in_a_burst(where):
    """Before, the ticks a 0.2 s stall missed were sent back to back (~0.3 ms apart) and rate_hz read the target."""
    fps, stall, n = 50.0, 0.2, 24
    iface = RobotInterface.from_manifest(Manifest.load(robot_artifacts(), verify_hashes=False))
    robot = TimedRobot({8: stall} if where == "driver read" else None)
    source = ScriptedSource({8: stall, 16: stall} if where == "inline resample" else None)
    on_tick = (lambda tick, sa, ms: time.sleep(stall if tick == 8 else 0.0)) if where == "hook" else None
    rep = run_robot(robot, source, iface, np.zeros(2, np.float32), fps=fps, max_ticks=n, on_tick=on_tick)
    gaps = np.diff(robot.sent_at)
    stalls = 2 if where == "inline resample" else 1
    assert len(robot.sent_at) == n and gaps.min() >= 0.7 / fps, np.round(gaps * 1e3, 1)
    assert source.ticks == list(range(n))  # ticks are control steps: consecutive, nothing skipped or replayed
    assert stalls <= rep.overruns <= stalls + 2 and rep.max_period_ms >= stall * 1e3  # (+2: a loaded CI machine)
    assert rep.rate_hz < fps * n / (n + stalls * stall * fps) * 1.05  # the stall is in the rate, not averaged away


def test_runtime_robot_reports_the_stalls(monkeypatch, capsys):
    """`runtime robot`'s JSON report carries overruns and the period statistics."""
    from runtime import robot_command
    from runtime.cli import main

    robot = TimedRobot({3: 0.15})
    monkeypatch.setitem(sys.modules, "tests._stall_robot", types.SimpleNamespace(make_robot=lambda args: robot))
    monkeypatch.setattr(robot_command, "ADAPTERS", "tests._stall_robot")
    rc = main(["robot", "--artifacts", str(robot_artifacts()), "--robot.type=any", "--task", "reach",
               "--inference", "inline", "--fps", "50", "--max-ticks", "8"])
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and rep["ticks"] == 8 and rep["overruns"] >= 1  # the stall (and slow first inferences)
    assert rep["max_period_ms"] >= 150 and 20 <= rep["p95_period_ms"] <= rep["max_period_ms"]
    assert rep["rate_hz"] < 40
