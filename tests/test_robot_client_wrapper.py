"""`python -m robot_adapters.robot_client` (docs/07-robot.md's copy-paste command for the sim robot) against
`runtime serve`: it plays `--robot.episodes` episodes, stops by itself and prints their outcomes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve_fixtures import running_server

pytest.importorskip("lerobot.async_inference.robot_client")
ROOT = Path(__file__).resolve().parents[1]


def _client(port: int, *extra: str) -> subprocess.CompletedProcess:
    """The documented command (docs/07-robot.md), with `extra` flags; a hang fails the test, it never blocks CI."""
    cmd = [sys.executable, "-m", "robot_adapters.robot_client", "--robot.type=sim_reach",
           "--task=reach the red target", f"--server_address=127.0.0.1:{port}", "--policy_type=smolvla",
           "--pretrained_name_or_path=served-by-runtime", "--actions_per_chunk=10", "--chunk_size_threshold=1.0",
           "--fps=60", *extra]
    try:
        return subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=240,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(cmd)} did not end after its episodes (still running after 240 s)")


@pytest.mark.parametrize("episodes", [1, 2])
def test_the_sim_client_ends_after_its_episodes_and_reports_them(episodes):
    with running_server() as (svc, port):
        done = _client(port, f"--robot.episodes={episodes}")
        processed = svc.stats()["observations_processed"]
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["episodes"] == episodes and report["unsafe_actions"] == 0
    assert 0.0 <= report["success_rate"] <= 1.0 and report["mean_final_distance"] >= 0.0
    assert processed > 0


def test_no_server_is_one_line_naming_the_address():
    done = _client(1, "--robot.episodes=1")  # port 1: nothing listens
    assert done.returncode == 1 and "--server_address 127.0.0.1:1" in done.stderr


def test_no_server_leaves_the_robot_disconnected(monkeypatch, capsys):
    """lerobot's RobotClient connects the robot when it is built, before any server answers: a client that cannot
    start must disconnect it again (a real arm would otherwise stay connected, torque on, as the process exits)."""
    from robot_adapters import robot_client

    built = []

    class Recorded(robot_client.RobotClient):
        def __init__(self, cfg):
            super().__init__(cfg)
            built.append(self)

    monkeypatch.setattr(robot_client, "RobotClient", Recorded)
    code = robot_client.main(["--robot.type=sim_reach", "--robot.episodes=1", "--task=reach the red target",
                              "--server_address=127.0.0.1:1", "--policy_type=smolvla",
                              "--pretrained_name_or_path=served-by-runtime", "--actions_per_chunk=10"])
    assert code == 1 and "--server_address 127.0.0.1:1" in capsys.readouterr().err
    assert len(built) == 1 and not built[0].robot.is_connected
