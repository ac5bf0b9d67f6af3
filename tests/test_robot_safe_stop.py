"""The safe stop of `runtime robot` never yanks a position-target arm to the stop pose: with `on_stop="auto"` (the
default) position dimensions keep the last target sent, displacement / velocity dimensions get the stop action.
And the loop's last check agrees with the policy's guard: what the guard let through is never clipped again."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.manifest import Bounds
from runtime.policy import EdgePolicy
from runtime.robot_interface import RobotInterface
from runtime.robot_loop import SyncSource, _ActionVet, run_robot
from runtime.safety import ActionGuard
from runtime.stop_commands import stop_command
from tests.fake_artifacts import make_observation, robot_fake_artifacts

NAMES = st.sampled_from(["shoulder_pan.pos", "gripper.pos", "elbow", "x.vel", "theta.vel", "dx", "dz", "base_delta"])
MOVING = {"x.vel", "theta.vel", "dx", "dz", "base_delta"}
FLOATS = st.floats(-100, 100, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(st.lists(NAMES, min_size=1, max_size=6), st.data())
def test_auto_stop_holds_positions_and_stops_motion(names, data):
    n = len(names)
    stop = np.array(data.draw(st.lists(FLOATS, min_size=n, max_size=n)), dtype=np.float32)
    last = data.draw(st.none() | st.lists(FLOATS, min_size=n, max_size=n))
    last = None if last is None else np.array(last, dtype=np.float32)
    moving = np.array([name in MOVING for name in names])
    iface_moving = RobotInterface(None, tuple(names), tuple(names), {}, "observation.state", n, n).moving_dims
    assert np.array_equal(iface_moving, moving)
    out = stop_command("auto", stop, last, moving)
    if moving.all():
        assert np.array_equal(out, stop)  # a displacement robot: the stop action, as `stop`
    elif last is None or not moving.any():
        assert out is None  # never commanded, or only position targets: nothing (the arm keeps its target)
    else:
        assert np.array_equal(out[~moving], last[~moving]) and np.array_equal(out[moving], stop[moving])
    assert stop_command("hold", stop, last, moving) is None
    held = stop_command("hold", stop, last, moving, velocity=iface_velocity(names))  # a held velocity drives on:
    assert (held is None and (out is None or not iface_velocity(names))) or np.array_equal(held, out)  # = auto
    assert np.array_equal(stop_command("stop", stop, last, moving), stop)
    assert np.array_equal(stop_command("auto", stop, last, None), stop)  # names unknown: every dimension moves


def iface_velocity(names) -> bool:
    return RobotInterface(None, tuple(names), tuple(names), {}, "observation.state", len(names), len(names)).has_velocity


def _artifacts(action_names):
    return robot_fake_artifacts(action_names, ("s1.pos", "s2.pos"), chunk_size=10, n_action_steps=10)


class Arm:
    """Interrupted (Ctrl-C) after `ticks` observations; records every action sent."""

    is_connected = False

    def __init__(self, ticks: int):
        self.sent, self.n, self.ticks = [], 0, ticks

    def connect(self):
        self.is_connected = True

    def disconnect(self):
        self.is_connected = False

    def get_observation(self):
        self.n += 1
        if self.n > self.ticks:
            raise KeyboardInterrupt
        img = np.random.default_rng(self.n).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        return {"s1.pos": 0.01, "s2.pos": -0.01, "top": img}

    def send_action(self, action):
        self.sent.append(dict(action))
        return action


@pytest.mark.parametrize("names", [("shoulder.pos", "elbow.pos"), ("arm.pos", "x.vel"), ("dx", "dy")])
def test_ctrl_c_never_jumps_a_position_target(names):
    policy = EdgePolicy(_artifacts(names))
    iface = RobotInterface.from_manifest(policy.manifest)
    arm = Arm(ticks=12)
    rep = run_robot(arm, SyncSource(policy, iface, task="reach the red target"), iface, policy.guard.stop_action,
                    fps=200)
    assert rep.stop_reason.startswith("interrupted")
    plan, after = arm.sent[:rep.ticks], arm.sent[rep.ticks:]
    assert len(plan) == 12 and len(after) == rep.stops_sent == (0 if all(n.endswith(".pos") for n in names) else 1)
    for name in names:
        for action in after:
            want = float(policy.guard.stop_action[names.index(name)]) if not name.endswith(".pos") else plan[-1][name]
            assert action[name] == pytest.approx(want)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e4, 1e4), st.floats(1e-3, 1e4), st.floats(-1e6, 1e6)), min_size=1, max_size=6))
def test_the_loop_never_clips_what_the_guard_let_through(dims):
    """float64 manifest bounds, float32 guard: an action the guard clipped onto float32(high) > high was counted and
    logged as clipped a second time by the loop, every tick the plan pressed against a bound."""
    low = np.array([lo for lo, _, _ in dims])
    high = low + np.array([span for _, span, _ in dims])
    bounds = Bounds(low, high)
    names = tuple(f"m{i}.pos" for i in range(len(dims)))
    vet = _ActionVet(RobotInterface(None, names, names, {}, "observation.state", len(dims), len(dims)), bounds)
    out = ActionGuard(bounds).check(np.array([a for _, _, a in dims])).action
    sent, why = vet(out)
    assert why == "" and np.array_equal(sent.astype(np.float32), out)


class _PoisonFirstRows:
    """`unnormalize` whose first `n` single-row results are non-finite (a row that overflows when unnormalised)."""

    def __init__(self, real, n: int):
        self.real, self.n = real, n

    def __call__(self, x):
        out = self.real(x)
        if np.ndim(x) == 1 and self.n > 0:
            self.n -= 1
            out = np.full_like(out, np.nan)
        return out


@pytest.mark.parametrize("inference", ["inline", "async"])
@pytest.mark.parametrize("names", [("shoulder.pos", "elbow.pos"), ("arm.pos", "x.vel")])
def test_a_bad_first_row_never_sends_a_position_arm_to_the_stop_pose(names, inference):
    """`--fallback auto`, the episode's first plan rows non-finite: nothing is sent for them (the arm holds), never
    the stop pose on a position dimension — before, the guard's fallback with nothing passed yet was the stop pose."""
    from runtime.robot_command import fallback_mode
    from runtime.robot_loop import AsyncSource

    policy = EdgePolicy(_artifacts(names), gate="always")
    mode, moving = fallback_mode("auto", names)
    policy.guard = ActionGuard(policy.manifest.action_bounds, policy.manifest.stop_action, mode, stop_dims=moving)
    iface = RobotInterface.from_manifest(policy.manifest)
    if inference == "inline":
        source = SyncSource(policy, iface, task="reach the red target")
        policy.unnormalize = _PoisonFirstRows(policy.unnormalize, 2)
    else:
        source = AsyncSource(policy, iface, task="reach the red target", fps=200)
        source.executor.emitter.unnormalize = _PoisonFirstRows(source.executor.emitter.unnormalize, 2)
    arm = Arm(ticks=12)
    rep = run_robot(arm, source, iface, policy.guard.stop_action, fps=200)
    plan = arm.sent[: len(arm.sent) - rep.stops_sent]
    assert plan and rep.ticks - len(plan) >= 2  # the poisoned rows: nothing sent
    stop = policy.guard.stop_action
    for action in plan:
        for i, name in enumerate(names):
            if name.endswith(".pos"):
                assert action[name] != pytest.approx(float(stop[i]), abs=1e-9), (action, stop)


@pytest.mark.parametrize("names", [("shoulder.pos", "elbow.pos"), ("arm.pos", "x.vel"), ("dx", "dy")])
def test_edge_policy_default_fallback_follows_the_action_names(names):
    """`EdgePolicy(...)` used directly (no robot command): a bad first row gives None (send nothing) where a position
    target has no safe value yet, and the stop action on displacement / velocity dimensions; once a row passed, a
    position dimension holds it. Before, the default guard knew no names: the stop pose on every dimension."""
    policy = EdgePolicy(_artifacts(names), gate="always")
    obs = make_observation(0)
    policy.unnormalize = _PoisonFirstRows(policy.unnormalize, 1)
    first = policy.step(obs)
    moving = np.array([not n.endswith(".pos") for n in names])
    if moving.all():
        np.testing.assert_array_equal(first, policy.guard.stop_action)
    else:
        assert first is None and policy.last_info.fallback
    good = policy.step(obs)
    assert good is not None and np.all(np.isfinite(good))
    policy.unnormalize = _PoisonFirstRows(policy.unnormalize.real, 1)
    held = policy.step(obs)
    np.testing.assert_array_equal(held[~moving], good[~moving])
    np.testing.assert_array_equal(held[moving], policy.guard.stop_action[moving])
