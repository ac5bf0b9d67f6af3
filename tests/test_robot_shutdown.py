"""The end of `runtime robot`'s loop: stop action, source close and disconnect (torque-off) each run whatever
the step before did — a second Ctrl-C (or SIGTERM) mid-way is honoured only after the disconnect, a failing
or impossible disconnect is logged and noted in the report instead of losing it, and `runtime robot` always
releases the policy. Also: camera frames that are the previous tick's very array are counted."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from robot_adapters.sim_reach import SimReachRobot, SimReachSettings
from runtime.policy import EdgePolicy
from runtime.robot_interface import RobotInterface
from runtime.robot_loop import SyncSource, run_robot
from tests.serve_fixtures import robot_artifacts


@pytest.fixture(scope="module")
def policy():
    with EdgePolicy(robot_artifacts()) as p:
        yield p


class Robot(SimReachRobot):
    """The simulated robot, recording its lifecycle; `interrupt_at` / `fail_at` name steps that raise."""

    def __init__(self, interrupt_at=(), fail_at=(), first_interrupt_tick=3, lose_link_tick=None):
        super().__init__(SimReachSettings(episodes=5))
        self.interrupt_at, self.fail_at = set(interrupt_at), set(fail_at)
        self.first_interrupt_tick, self.lose_link_tick = first_interrupt_tick, lose_link_tick
        self.ticks, self.disconnects, self.stop_sends = 0, 0, 0

    def get_observation(self):
        self.ticks += 1
        if self.ticks == self.first_interrupt_tick:
            raise KeyboardInterrupt  # the first Ctrl-C: the loop's safe stop begins
        if self.lose_link_tick is not None and self.ticks >= self.lose_link_tick:
            self.connected = False
            raise ConnectionError("serial port vanished")
        return super().get_observation()

    def send_action(self, action):
        if self.ticks >= self.first_interrupt_tick:
            self.stop_sends += 1
            if "stop" in self.interrupt_at:
                raise KeyboardInterrupt  # the second Ctrl-C, while the stop action is on its way
        return super().send_action(action)

    def disconnect(self):
        self.disconnects += 1
        if "disconnect" in self.interrupt_at:
            raise KeyboardInterrupt
        if "disconnect" in self.fail_at:
            raise ConnectionError("Robot is not connected.")  # lerobot's DeviceNotConnectedError, a serial error
        super().disconnect()


class Source(SyncSource):
    def __init__(self, policy, iface, interrupt=False):
        super().__init__(policy, iface)
        self.interrupt, self.closes = interrupt, 0

    def close(self):
        self.closes += 1
        if self.interrupt:
            raise KeyboardInterrupt  # the second Ctrl-C, while the executor shuts down


def drive(policy, robot, source, **kw):
    policy.reset()
    iface = source.interface
    return run_robot(robot, source, iface, policy.guard.stop_action, fps=200, bounds=policy.manifest.action_bounds, **kw)


@pytest.mark.parametrize("second", [(), ("stop",), ("close",), ("stop", "close"), ("disconnect",),
                                    ("stop", "close", "disconnect")],
                         ids=lambda s: "+".join(s) or "none")
def test_a_second_ctrl_c_never_skips_the_disconnect(policy, second):
    iface = RobotInterface.from_manifest(policy.manifest)
    robot = Robot(interrupt_at=second)
    source = Source(policy, iface, interrupt="close" in second)
    if second:
        with pytest.raises(KeyboardInterrupt):  # honoured, but only after the shutdown
            drive(policy, robot, source)
    else:
        rep = drive(policy, robot, source)
        assert rep.stop_reason.startswith("interrupted") and rep.stops_sent == 1
    assert robot.stop_sends == 1 and source.closes == 1 and robot.disconnects == 1  # each step ran once
    assert robot.is_connected == ("disconnect" in second)


def test_a_failing_disconnect_keeps_the_report(policy, caplog):
    iface = RobotInterface.from_manifest(policy.manifest)
    robot = Robot(fail_at={"disconnect"}, first_interrupt_tick=10_000)
    rep = drive(policy, robot, Source(policy, iface), max_ticks=4)
    assert rep.ticks == 4 and rep.stop_reason == "" and robot.disconnects == 1
    assert rep.disconnect_error == "Robot is not connected." and "disconnect failed" in caplog.text


def test_a_lost_link_is_not_disconnected_again_and_the_stop_reason_survives(policy):
    iface = RobotInterface.from_manifest(policy.manifest)
    robot = Robot(fail_at={"disconnect"}, first_interrupt_tick=10_000, lose_link_tick=3)
    rep = drive(policy, robot, Source(policy, iface), max_faults=3)
    assert "3 consecutive faults (serial port vanished)" in rep.stop_reason and rep.faults == 3
    assert robot.disconnects == 0  # is_connected said no: lerobot would raise DeviceNotConnectedError
    assert "no longer connected" in rep.disconnect_error


class StaleCamera(SimReachRobot):
    """A camera with sensor noise whose driver has a new frame only every `fresh_every` ticks; in between it hands
    back the last frame object (lerobot's read_latest), a copy of it, or refills one buffer in place."""

    def __init__(self, fresh_every, mode):
        super().__init__(SimReachSettings(episodes=5))
        self.fresh_every, self.mode, self.n, self.frame = fresh_every, mode, 0, None
        self.rng = np.random.default_rng(0)
        self.buffer = None

    def get_observation(self):
        obs = super().get_observation()
        if self.n % self.fresh_every == 0:  # a new exposure: the scene plus fresh sensor noise
            noise = self.rng.integers(-2, 3, size=obs["top"].shape)
            self.frame = np.clip(obs["top"].astype(np.int16) + noise, 0, 255).astype(np.uint8)
        self.n += 1
        if self.mode == "same object":
            obs["top"] = self.frame
        elif self.mode == "copy":
            obs["top"] = self.frame.copy()
        else:  # "in place": one buffer, refilled every tick (a new frame in the same object is not a repeat)
            if self.buffer is None:
                self.buffer = np.empty_like(self.frame)
            self.buffer[...] = self.frame
            obs["top"] = self.buffer
        return obs


@pytest.mark.parametrize("mode", ["same object", "copy", "in place"])
@pytest.mark.parametrize("fresh_every", [1, 2, 3])
def test_repeated_camera_frames_are_counted(policy, fresh_every, mode):
    iface = RobotInterface.from_manifest(policy.manifest)
    rep = drive(policy, StaleCamera(fresh_every, mode), Source(policy, iface), max_ticks=12)
    assert rep.ticks == 12 and rep.repeated_frames == 12 - 12 // fresh_every


# ------------------------------------------------------------------------- `runtime robot`
def run_cli(monkeypatch, capsys, robot, *flags):
    """`runtime robot` with `robot` as the built robot; returns (rc, stdout, stderr, policy closes)."""
    from runtime import robot_command
    from runtime.cli import main

    monkeypatch.setitem(sys.modules, "tests._one_robot", types.SimpleNamespace(make_robot=lambda args: robot))
    monkeypatch.setattr(robot_command, "ADAPTERS", "tests._one_robot")
    closes = []
    real_close = EdgePolicy.close
    monkeypatch.setattr(EdgePolicy, "close", lambda self: (closes.append(1), real_close(self))[1])
    rc = main(["robot", "--artifacts", str(robot_artifacts()), "--robot.type=any", "--task", "reach",
               "--inference", "inline", *flags])
    out = capsys.readouterr()
    return rc, out.out, out.err, len(closes)


def test_runtime_robot_prints_the_report_when_disconnect_fails(monkeypatch, capsys):
    robot = Robot(fail_at={"disconnect"}, first_interrupt_tick=10_000)
    rc, out, _, closes = run_cli(monkeypatch, capsys, robot, "--max-ticks", "3", "--fps", "100")
    rep = json.loads(out.strip().splitlines()[-1])
    assert rc == 1 and rep["ticks"] == 3 and rep["disconnect"] == "Robot is not connected."
    assert rep["repeated_frames"] == 0 and closes == 1


def test_runtime_robot_closes_the_policy_after_a_second_ctrl_c(monkeypatch, capsys):
    robot = Robot(interrupt_at={"stop"})
    rc, out, _, closes = run_cli(monkeypatch, capsys, robot, "--fps", "100")
    assert rc == 130 and out == "" and robot.disconnects == 1 and closes == 1


def test_runtime_robot_refuses_another_robot_before_connecting(monkeypatch, capsys):
    class OtherArm(Robot):
        observation_features = property(lambda s: {"shoulder.pos": float, "x": float, "top": (64, 64, 3)})

        def connect(self, calibrate=True):
            raise AssertionError("connected a robot the artifact does not fit")

    rc, out, err, closes = run_cli(monkeypatch, capsys, OtherArm())
    assert rc == 2 and out == "" and closes == 1
    assert "motor 'y' missing" in err and "motor 'shoulder.pos' not in the artifact" in err
    assert len(err.strip().splitlines()) == 1
