"""LeRobot 0.4.4's real RobotClient (imported from the installed lerobot) drives `runtime serve` over loopback
with the simulated reach robot; compared with the direct runtime (the same EdgePolicy, gate and artifacts
in `runtime robot`'s loop) on the same perturbed episodes."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from robot_adapters.sim_reach import SimReachRobot, SimReachSettings
from runtime.policy import EdgePolicy
from runtime.robot_interface import RobotInterface
from runtime.robot_loop import SyncSource, run_robot
from tests.serve_fixtures import ACTION_BOUND, robot_artifacts, running_server

pytest.importorskip("lerobot.async_inference.robot_client")
EPISODES = 40


def drive_with_robot_client(port: int, episodes: int, fps: int = 60, timeout: float = 150.0) -> SimReachRobot:
    from lerobot.async_inference.configs import RobotClientConfig
    from lerobot.async_inference.robot_client import RobotClient

    import robot_adapters.config_sim_reach as cfgmod

    cfg = RobotClientConfig(
        policy_type="smolvla_cls", pretrained_name_or_path="served-by-runtime",
        robot=cfgmod.SimReachRobotConfig(episodes=episodes, seed=0, perturb=True, action_bound=ACTION_BOUND),
        actions_per_chunk=10, task="reach the red target", server_address=f"127.0.0.1:{port}", fps=fps,
        chunk_size_threshold=1.0, aggregate_fn_name="latest_only")
    client = RobotClient(cfg)
    robot = client.robot
    assert isinstance(robot, SimReachRobot)  # built by lerobot's own factory from the registered config
    assert client.start()
    rx = threading.Thread(target=client.receive_actions, daemon=True)
    ctl = threading.Thread(target=client.control_loop, kwargs={"task": cfg.task}, daemon=True)
    rx.start()
    ctl.start()
    try:
        assert robot.finished.wait(timeout), f"only {len(robot.outcomes)} episodes in {timeout} s"
    finally:
        client.stop()
        ctl.join(5)
        rx.join(5)
    return robot


def direct_runtime(artifacts, episodes: int) -> SimReachRobot:
    robot = SimReachRobot(SimReachSettings(episodes=episodes, seed=0, perturb=True, action_bound=ACTION_BOUND))
    with EdgePolicy(artifacts, gate="drift") as policy:
        interface = RobotInterface.from_manifest(policy.manifest)
        run_robot(robot, SyncSource(policy, interface), interface, policy.guard.stop_action, fps=1e6,
                  should_stop=robot.finished.is_set)
    return robot


@pytest.fixture(scope="module")
def served():
    logging.getLogger("robot_client").setLevel(logging.WARNING)
    with running_server() as (svc, port):
        robot = drive_with_robot_client(port, EPISODES)
        yield svc, robot


def test_robot_client_runs_all_episodes_safely(served):
    _, robot = served
    assert len(robot.outcomes) == EPISODES
    assert robot.unsafe == 0
    sent = np.stack(robot.sent)
    assert np.all(np.isfinite(sent)) and np.all(np.abs(sent) <= ACTION_BOUND + 1e-6)


def test_success_matches_direct_runtime(served):
    _, robot = served
    direct = direct_runtime(robot_artifacts(), EPISODES)
    assert direct.unsafe == 0
    print(f"served {robot.success_rate:.3f} vs direct {direct.success_rate:.3f} over {EPISODES} perturbed episodes")
    assert abs(robot.success_rate - direct.success_rate) <= 0.05 + 1e-9, (robot.success_rate, direct.success_rate)


def test_gate_savings_in_server_counters(served):
    svc, _ = served
    st = svc.stats()
    assert st["observations_processed"] > 0 and st.get("refused", 0) == 0
    print("server counters:", st)
    assert st["kept_plan"] > 0, st  # the gate kept the plan on some observations: no chunk computed
    assert st["policy"]["resamples"] < st["observations_processed"], st
    assert 0 < st["resample_fraction"] < 1
