"""The two new commands end to end as a user runs them: `python -m runtime robot` on the simulated robot,
and `python -m runtime serve` answering a robot client, then stopping on Ctrl-C with its counters."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from simtask.config import TaskConfig
from tests.serve_fixtures import robot_artifacts

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.parametrize("inference", [[], ["--inference", "thread"]], ids=["default-async", "deprecated-thread"])
def test_runtime_robot_on_the_simulated_robot(inference):
    out = subprocess.run([sys.executable, "-m", "runtime", "robot", "--artifacts", str(robot_artifacts()),
                          "--robot.type=sim_reach", "--robot.episodes=3", "--fps", "60", "--max-ticks", "90",
                          "--log-every", "30", *inference], cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    if inference:  # the old flag still runs, on the async executor without seam handling, and says so
        assert "--inference thread is deprecated" in out.stderr and "inference thread" in out.stderr
    else:
        assert "inference async" in out.stderr and "deprecated" not in out.stderr
    rep = json.loads(out.stdout.strip().splitlines()[-1])
    assert rep["ticks"] == 90 and rep["faults"] == 0 and rep["stop"] == "end" and rep["stops_sent"] == 0
    assert rep["policy"]["resamples"] >= 1
    # the logged tick says what its number is: the tick's own work (read, inference, send), not the period, which
    # the loop's grid sets (1000 / 60 ms) — it once read "period 0.7 ms" at 10 Hz
    line = next(x for x in out.stderr.splitlines() if "tick 30:" in x)
    assert re.search(r"tick 30: work \d+\.\d ms of a 16\.7 ms period, gate ", line), line


def test_runtime_robot_on_the_simulated_robot_ends_when_its_episodes_are_done():
    """No --max-ticks: the sim robot's last episode ends the run (it used to run on until Ctrl-C, the frozen
    scene repeated), and the report counts the episodes and successes."""
    out = subprocess.run([sys.executable, "-m", "runtime", "robot", "--artifacts", str(robot_artifacts()),
                          "--robot.type=sim_reach", "--robot.episodes=2", "--fps", "1000", "--log-every", "1000"],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout.strip().splitlines()[-1])
    assert rep["episodes"] == 2 and 0 <= rep["successes"] <= 2 and rep["stop"] == "end"
    # ended with the last episode, not run on: the sim steps on an action sent, so ticks that waited for the first
    # chunk (starved; many on a loaded box at 1000 fps) do not count against its episodes
    assert rep["ticks"] - rep["starved"] <= 2 * (TaskConfig().max_steps + 1)


def test_runtime_robot_errors_name_the_problem():
    out = subprocess.run([sys.executable, "-m", "runtime", "robot", "--artifacts", str(robot_artifacts())],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 2 and "--robot.type" in out.stderr


def test_runtime_robot_margin_is_bounded_and_ignored_inline_with_a_warning():
    base = [sys.executable, "-m", "runtime", "robot", "--artifacts", str(robot_artifacts()), "--robot.type=sim_reach",
            "--robot.episodes=1", "--fps", "60", "--max-ticks", "3"]
    out = subprocess.run([*base, "--margin", "99"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 2 and "error: --margin must be an integer in [0, n_action_steps=" in out.stderr  # the flag
    out = subprocess.run([*base, "--inference", "inline", "--margin", "2"], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "--margin 2 is ignored with --inference inline" in out.stderr


def test_slew_defaults_with_reanchor_and_runs_with_or_without_it():
    from runtime.robot_command import DEFAULT_SLEW, reanchor_slew

    assert reanchor_slew(None, True) == DEFAULT_SLEW and reanchor_slew(None, False) is None
    assert reanchor_slew(0.0, True) is None and reanchor_slew(2.5, True) == 2.5
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="--slew"):
            reanchor_slew(bad, True)
    base = [sys.executable, "-m", "runtime", "robot", "--artifacts", str(robot_artifacts()), "--robot.type=sim_reach",
            "--robot.episodes=1", "--fps", "60", "--max-ticks", "30"]
    out = subprocess.run([*base, "--slew", "-1"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 2 and "--slew must be a finite number >= 0" in out.stderr
    for flags in (["--reanchor", "--slew", "2"], ["--slew", "1.5"]):
        out = subprocess.run([*base, *flags], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
                             check=False)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout.strip().splitlines()[-1])["ticks"] == 30


def test_runtime_serve_answers_then_stops_on_ctrl_c():
    helpers = pytest.importorskip("lerobot.async_inference.helpers")
    from tests.test_serve_hostile import Client, observation_bytes

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "runtime", "serve", "--artifacts", str(robot_artifacts()),
                             "--port", str(port), "--stats-every", "0"], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        c = Client(port)
        for _ in range(100):  # wait for the server to bind
            try:
                c.setup()
                break
            except Exception:  # noqa: BLE001
                time.sleep(0.2)
        c.observe(observation_bytes())
        acts = c.actions()
        assert isinstance(acts[0], helpers.TimedAction) and len(acts) == 10
        # decoded by the stock client's plain pickle: numbered consecutively, finite actions
        assert [a.get_timestep() for a in acts] == list(range(acts[0].get_timestep(), acts[0].get_timestep() + 10))
        assert all(bool(a.get_action().isfinite().all()) for a in acts)
        c.close()
    finally:
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    stats = json.loads(stdout)
    assert stats["setups"] == 1 and stats["chunks_sent"] == 1
    assert "on 127.0.0.1:" in stderr


@pytest.mark.parametrize("flags, needle", [
    (["--fps", "0"], "--fps must be a number in (0, 1000.0]"), (["--fps", "nan"], "--fps must be"),
    (["--fps", "1e308"], "--fps must be"), (["--max-stall-s", "1e308"], "--max-stall-s must be a number in"),
    (["--fps", "-30"], "--fps must be"), (["--max-stall-s", "-1"], "--max-stall-s"),
    (["--max-faults", "0"], "--max-faults"), (["--max-ticks", "-5"], "--max-ticks"),
])
def test_runtime_robot_loop_flags_are_refused_by_name(capsys, flags, needle):
    """0 is a value, not "not given": --fps 0 is refused, never silently replaced by the manifest's rate."""
    from runtime.cli import main

    rc = main(["robot", "--artifacts", str(robot_artifacts()), "--robot.type=sim_reach", *flags])
    assert rc == 2 and needle in capsys.readouterr().err


@pytest.mark.parametrize("flag, needle", [
    ("--robot.episodes=0", "--robot.episodes must be an integer in [1, 1000000]"),
    ("--robot.episodes=100000000000", "--robot.episodes must be an integer in"), ("--robot.seed=-3", "--robot.seed"),
    ("--robot.task_color=purple", "invalid choice: 'purple'"), ("--robot.perturb=maybe", "expected true/false"),
    ("--robot.episodes=two", "invalid int value"),
])
def test_sim_reach_flags_are_refused_by_name(capsys, flag, needle):
    from robot_adapters.factory import make_robot

    with pytest.raises(SystemExit) as exc:
        make_robot(["--robot.type=sim_reach", flag])
    assert exc.value.code == 2 and needle in capsys.readouterr().err


def test_sim_reach_settings_are_checked_when_built_directly():
    from robot_adapters.sim_reach import SimReachRobot, SimReachSettings

    for field, value in (("episodes", 0), ("episodes", True), ("seed", -1), ("task_color", "purple"),
                         ("action_bound", float("nan")), ("action_bound", 0.0)):
        with pytest.raises(ValueError, match=f"sim_reach: {field}"):
            SimReachRobot(SimReachSettings(**{field: value}))
    assert SimReachRobot(SimReachSettings(task_color=None, action_bound=0.08)).success_rate == 0.0


def test_fallback_auto_stops_displacements_and_holds_positions():
    from runtime.robot_command import fallback_mode

    mode, dims = fallback_mode("auto", ("dx", "dy"))
    assert mode == "hold" and dims.tolist() == [True, True]  # repeating a displacement keeps moving
    mode, dims = fallback_mode("auto", ("shoulder_pan.pos", "main_gripper", "x.vel", "theta.vel"))
    assert dims.tolist() == [False, False, True, True]  # LeKiwi-style: the arm holds, the base stops
    mode, dims = fallback_mode("hold", ("dx", "a.pos"))
    assert mode == "hold" and dims.tolist() == [False, False]  # every dimension holds (none yet: nothing is sent)
    assert fallback_mode("stop", ("a.pos",)) == ("stop", None)
    assert fallback_mode("auto", ()) == ("hold", None)


def test_a_per_dimension_fallback_holds_positions_and_stops_displacements():
    from runtime.manifest import Bounds
    from runtime.safety import ActionGuard

    g = ActionGuard(Bounds(np.array([-1.0, -1.0, -1.0]), np.array([1.0, 1.0, 1.0])), np.array([0.0, 0.0, 0.0]),
                    "hold", "clip", stop_dims=np.array([False, True, True]))
    assert g.check(np.array([0.5, 0.2, -0.3])).fallback is False
    res = g.check(np.array([np.nan, 0.0, 0.0]))
    assert res.fallback and res.action.tolist() == pytest.approx([0.5, 0.0, 0.0])  # position held, motion stopped


@pytest.mark.parametrize("task", ["", "  \t", "reach " * 400, "reach [unknown] target " * 30],
                         ids=["empty", "blank", "over-2048-bytes", "over-lang_len"])
def test_a_bad_task_is_refused_by_name_before_the_robot_is_connected(capsys, monkeypatch, task):
    """Before, the robot was connected, faulted --max-faults ticks on the instruction and got the stop action."""
    from robot_adapters import factory
    from runtime.cli import main

    built = []

    def make_robot(args):
        built.append(factory._sim(args))
        return built[-1]
    monkeypatch.setattr(factory, "make_robot", make_robot)
    rc = main(["robot", "--artifacts", str(robot_artifacts()), "--robot.type=sim_reach", "--task", task,
               "--max-ticks", "20"])
    err = capsys.readouterr().err
    assert rc == 2 and "--task: observation field 'task'" in err, err
    assert built and not built[0].connected and built[0].sent == []
