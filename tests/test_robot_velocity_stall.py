"""A velocity dimension (`x.vel`) keeps the robot moving at its last command until it gets another. When the loop
has no action for a tick after it sent one (the plan ran dry: slow or failing inference, a stale chunk), sending
nothing would leave a base driving on at its last velocity until the stall watchdog (or forever with it off): the
loop sends the stop action on the moving dimensions once, with the last target on position ones. Position-only
and displacement-only robots are sent nothing, as before (they hold / stand still without a command)."""

from __future__ import annotations

import functools
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.policy import EdgePolicy
from runtime.robot_interface import RobotInterface, moves_on
from runtime.robot_loop import AsyncSource, SourceAction, run_robot
from tests.fake_artifacts import robot_fake_artifacts

NAME_SETS = [("x.vel", "theta.vel"), ("arm.pos", "x.vel"), ("dx", "x.vel"), ("arm.pos", "gripper.pos"), ("dx", "dy")]


@functools.cache
def _interface(names) -> tuple[RobotInterface, np.ndarray]:
    """The robot interface and the guard's stop action of an export with these action names (loaded once)."""
    policy = EdgePolicy(_artifacts(names))
    return RobotInterface.from_manifest(policy.manifest), policy.guard.stop_action


def _artifacts(names):
    return robot_fake_artifacts(names, chunk_size=8, n_action_steps=4)


class Base:
    """Holds each motor's last command; velocity motors move the base by it on every tick (a driver with no
    timeout of its own). Records every action dict it was sent."""

    is_connected = False

    def __init__(self, names):
        self.names, self.sent = names, []
        self.command = dict.fromkeys(names, 0.0)
        self.travel, self.moving_ticks = 0.0, []

    def connect(self):
        self.is_connected = True

    def disconnect(self):
        self.is_connected = False

    def get_observation(self):
        speed = sum(abs(v) for k, v in self.command.items() if k.endswith(".vel"))
        self.travel += speed
        self.moving_ticks.append(speed > 0)
        img = np.zeros((64, 64, 3), np.uint8)
        return {"s1": 0.5, "s2": 0.5, "top": img}

    def send_action(self, action):
        self.sent.append(dict(action))
        self.command.update(action)
        return action


class Scripted:
    def __init__(self, actions):
        self.actions = actions

    def reset(self):
        pass

    def next_action(self, tick, robot_obs):
        a = self.actions[tick]
        return SourceAction(None if a is None else np.asarray(a, np.float32))

    def close(self):
        pass


ACTIONS = st.one_of(st.none(), st.tuples(st.floats(-0.0625, 0.0625, width=32), st.floats(-0.0625, 0.0625, width=32)))


@settings(max_examples=60, deadline=None)
@given(names=st.sampled_from(NAME_SETS), script=st.lists(ACTIONS, min_size=1, max_size=25))
def test_a_tick_without_an_action_never_leaves_a_velocity_robot_moving(names, script):
    iface, stop = _interface(names)
    base = Base(names)
    rep = run_robot(base, Scripted(script), iface, stop, fps=1000, max_ticks=len(script), on_stop="hold")
    velocity = any(n.endswith(".vel") for n in names)
    moving = np.array([moves_on(n) for n in names])
    sent = iter(base.sent)
    last = None
    for a in script:
        if a is not None:
            got = next(sent)
            np.testing.assert_allclose([got[n] for n in names], a, rtol=1e-6)
            last, braked = a, False
        elif last is not None and velocity and not braked:  # the plan ran dry: stop moving, hold positions
            got = next(sent)
            want = np.where(moving, stop, np.asarray(last, np.float32))
            np.testing.assert_allclose([got[n] for n in names], want, rtol=1e-6)
            braked = True
    assert next(sent, None) is None  # nothing else: never a stop before the first action, never a repeat
    assert rep.starved == sum(a is None for a in script) and rep.faults == 0


def test_a_stalled_planner_stops_a_velocity_base_at_once_not_after_the_watchdog():
    """The real async source with a backend that hangs after its first plan: the base drives the first chunk's
    rows, then stops on the first tick with no row (before: it kept the last velocity for `max_starved` ticks)."""
    from tests.test_robot_loop import HangingBackend

    names = ("x.vel", "theta.vel")
    release = threading.Event()
    base_policy = EdgePolicy(_artifacts(names))
    hanging = HangingBackend(base_policy.backend, release)
    policy = EdgePolicy(_artifacts(names), backend=hanging, gate="always")
    hanging.steps = policy.num_steps
    iface = RobotInterface.from_manifest(policy.manifest)
    robot = Base(names)
    threading.Timer(3.0, release.set).start()
    try:
        source = AsyncSource(policy, iface, task="reach the red target", fps=50)
        rep = run_robot(robot, source, iface, policy.guard.stop_action, fps=50, max_ticks=400, max_starved=20,
                        bounds=policy.manifest.action_bounds)
    finally:
        release.set()
    assert rep.stop_reason.startswith("no action for 20 ticks")
    ticks = robot.moving_ticks
    last_moving = max(i for i, m in enumerate(ticks) if m) if any(ticks) else -1
    n = policy.manifest.dims.n_action_steps
    assert last_moving <= n + 2, ticks  # moved for the first chunk's rows (plus the tick the stop takes effect)
    assert rep.starved_stops == 1


@pytest.mark.parametrize("names", [("arm.pos", "gripper.pos"), ("dx", "dy")])
def test_a_robot_without_velocity_dimensions_is_sent_nothing_when_starved(names):
    iface, stop = _interface(names)
    base = Base(names)
    rep = run_robot(base, Scripted([[0.01, 0.02], None, None]), iface, stop, fps=1000, max_ticks=3)
    assert len(base.sent) == 1 and rep.starved == 2 and rep.starved_stops == 0


class HandDriven:
    """AsyncSource's control side with its worker closed: the test installs chunks on the timeline itself."""

    def __init__(self, policy, iface, chunks: dict, slew: float):
        from runtime.timeline import TimedChunk

        self.inner = AsyncSource(policy, iface, task="reach the red target", fps=1000, seam="none", slew=slew)
        self.inner.executor.close()
        self.chunks, self.make = chunks, TimedChunk

    def reset(self):
        self.inner.reset()

    def next_action(self, tick, robot_obs):
        if tick in self.chunks:  # a chunk planned at this tick lands now (its row 0 runs now)
            self.inner.executor.timeline.install(self.make(tick, self.chunks[tick], tick))
        return self.inner.next_action(tick, robot_obs)

    def delivered(self, tick, action):
        self.inner.delivered(tick, action)

    def close(self):
        self.inner.close()


@settings(max_examples=10, deadline=None)
@given(speed=st.floats(0.4, 1.0), stall=st.integers(1, 4), slew=st.floats(0.5, 3.0))
def test_the_slew_limit_starts_from_the_stall_stop_the_robot_got(speed, stall, slew):
    """--slew on a velocity robot: the plan runs dry, the base is sent its stop; the next chunk's first row must
    ramp up from that stop, not from the last plan row (before: the stop was not recorded as delivered, so the
    limit let the velocity jump from 0 back to full speed in one tick)."""
    from runtime.timeline import SLEW_FLOOR

    names = ("x.vel", "theta.vel")
    policy = EdgePolicy(_artifacts(names), gate="never")
    iface = RobotInterface.from_manifest(policy.manifest)
    u, speed = policy.unnormalize, speed * float(policy.guard.high.min())  # a fraction of full speed
    row = ((np.full(2, speed, np.float32) - u._add) / u._mul).astype(np.float32)
    rows = np.tile(np.pad(row, (0, policy.manifest.dims.max_action_dim - 2)), (8, 1)).astype(np.float32)
    source = HandDriven(policy, iface, {0: rows[:4], 4 + stall: rows}, slew)  # ticks 0-3, then `stall` without
    base = Base(names)
    rep = run_robot(base, source, iface, policy.guard.stop_action, fps=1000, max_ticks=12 + stall,
                    bounds=policy.manifest.action_bounds)
    assert rep.starved_stops == 1 and rep.starved == stall
    got = np.array([[a[n] for n in names] for a in base.sent], np.float32)
    limit = SLEW_FLOOR * float(np.linalg.norm(policy.guard.high - policy.guard.low))  # constant rows: the floor
    assert np.allclose(got[4], policy.guard.stop_action)  # the stall stop
    steps = np.linalg.norm(np.diff(got[4:], axis=0), axis=1)
    assert np.all(steps <= limit * (1 + 1e-4)), (steps, limit)  # from the stop, at most one limit a tick
    assert np.allclose(got[-1], speed, atol=1e-6)  # and back to the plan's speed within a few ticks


class FailsAfter(Scripted):
    """Scripted actions, then every tick raises (a camera unplugged): `max_faults` in a row end in the safe stop."""

    def next_action(self, tick, robot_obs):
        if tick >= len(self.actions):
            raise RuntimeError("camera unplugged")
        return super().next_action(tick, robot_obs)


@pytest.mark.parametrize("on_stop", ["auto", "stop", "hold"])
@pytest.mark.parametrize("names", [("x.vel", "theta.vel"), ("arm.pos", "x.vel")])
def test_no_safe_stop_leaves_a_velocity_robot_driving(on_stop, names):
    """`--on-stop hold` means "send nothing more": for a velocity motor that is "drive on at the last command"
    until the disconnect (for ever when the disconnect fails). Holding a velocity is never a stop: `hold` keeps
    position targets and stops velocities, as `auto`."""
    iface, stop = _interface(names)
    base = Base(names)
    base.disconnect = lambda: None  # a driver whose disconnect neither stops the motors nor returns an error
    rep = run_robot(base, FailsAfter([[0.05, 0.05]] * 3), iface, stop, fps=1000, max_ticks=20, on_stop=on_stop)
    assert rep.stop_reason.startswith("3 consecutive faults") and rep.stops_sent == 1
    moving = np.array([moves_on(n) for n in names])
    final = np.array([base.command[n] for n in names], np.float32)
    assert np.allclose(final[moving], stop[moving])  # the base stands
    if on_stop != "stop":
        assert np.allclose(final[~moving], 0.05)  # position targets held
