"""LeRobot 0.4.4's real RobotClient (imported from the installed lerobot) drives `runtime serve` over loopback
with the simulated reach robot; compared with the direct runtime (the same EdgePolicy, gate and artifacts
in `runtime robot`'s loop) on the same perturbed episodes."""

from __future__ import annotations

import numpy as np
import pytest

from robot_adapters import closed_loop
from tests.serve_fixtures import ACTION_BOUND, robot_artifacts, running_server

pytest.importorskip("lerobot.async_inference.robot_client")
EPISODES = 40


@pytest.fixture(scope="module")
def served():
    with running_server() as (svc, port):
        robot = closed_loop.served(port, EPISODES, action_bound=ACTION_BOUND)
        yield svc, robot


def test_robot_client_runs_all_episodes_safely(served):
    _, robot = served
    assert len(robot.outcomes) == EPISODES
    assert robot.unsafe == 0
    sent = np.stack(robot.sent)
    assert np.all(np.isfinite(sent)) and np.all(np.abs(sent) <= ACTION_BOUND + 1e-6)


def test_success_matches_direct_runtime(served):
    _, robot = served
    direct = closed_loop.direct(robot_artifacts(), EPISODES, action_bound=ACTION_BOUND)
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
