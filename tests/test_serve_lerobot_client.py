"""LeRobot's real RobotClient (the installed lerobot: 0.4.4 here, 0.6.1 in `make test-lerobot-0.6`) drives
`runtime serve` over loopback with the simulated reach robot; compared with the direct runtime (the same
EdgePolicy, gate and artifacts in `runtime robot`'s loop) on the same perturbed episodes."""

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
    svc, robot = served
    direct, counters = closed_loop.direct(robot_artifacts(), EPISODES, action_bound=ACTION_BOUND)
    assert direct.unsafe == 0
    # random weights rarely succeed, so also compare how the loop behaves: the same gate rate and end distances
    served_rate = svc.stats()["policy"]["resamples"] / svc.stats()["observations_processed"]
    assert served_rate == pytest.approx(counters["resamples"] / counters["ticks"], abs=0.03)
    ends = [np.mean([o.final_distance for o in r.outcomes]) for r in (robot, direct)]
    assert ends[0] == pytest.approx(ends[1], rel=0.1), ends
    print(f"served {robot.success_rate:.3f} vs direct {direct.success_rate:.3f} over {EPISODES} perturbed episodes")
    assert abs(robot.success_rate - direct.success_rate) <= 0.05 + 1e-9, (robot.success_rate, direct.success_rate)


def test_gate_savings_in_server_counters(served):
    svc, _ = served
    st = svc.stats()
    assert st["observations_processed"] > 0 and st.get("refused", 0) == 0, st.get("last_refusal")
    print("server counters:", st)
    assert st["kept_plan"] > 0, st  # the gate kept the plan on some observations: no chunk computed
    assert st["policy"]["resamples"] < st["observations_processed"], st
    assert 0 < st["resample_fraction"] < 1
