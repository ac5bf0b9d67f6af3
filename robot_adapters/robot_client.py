"""LeRobot's stock robot client (`lerobot.async_inference.robot_client.RobotClient`, unmodified) with the simulated
reach robot registered, so path (a) of docs/07-robot.md runs without hardware:

    python -m robot_adapters.robot_client --robot.type=sim_reach --robot.episodes=5 --task="reach the red target" \\
        --server_address=127.0.0.1:8080 --policy_type=smolvla --pretrained_name_or_path=served-by-runtime \\
        --actions_per_chunk=10 --chunk_size_threshold=1.0 --fps=10

It runs the client as lerobot's `async_client` does (control loop on the main thread, actions received on
another). With `sim_reach` it also stops once the robot's last episode has ended (the stock loop runs until
Ctrl-C) and prints the outcomes as one JSON line; any other robot runs until Ctrl-C, as with the stock client.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Sequence

import draccus
from lerobot.async_inference.configs import RobotClientConfig
from lerobot.async_inference.robot_client import RobotClient
from lerobot.utils.import_utils import register_third_party_plugins

import robot_adapters.config_sim_reach  # noqa: F401  (registers --robot.type=sim_reach)
from robot_adapters.sim_reach import SimReachRobot


def _stop_when_finished(client: RobotClient, robot: SimReachRobot) -> None:
    """End the client's loops (what Ctrl-C would do) once the sim robot has played its last episode."""
    robot.finished.wait()
    client.shutdown_event.set()  # `running` is false from here: control_loop returns, the main thread stops it


def outcomes(robot: SimReachRobot) -> dict:
    """What the sim robot recorded: episodes, success rate, unsafe actions, mean end distance."""
    ends = [o.final_distance for o in robot.outcomes]
    return {"episodes": len(robot.outcomes), "success_rate": robot.success_rate, "unsafe_actions": robot.unsafe,
            "mean_final_distance": sum(ends) / len(ends) if ends else None}


def main(argv: Sequence[str] | None = None) -> int:
    """As the stock `__main__` (installed `lerobot_robot_*` / `lerobot_camera_*` plugins first, then the client),
    bounded by the sim robot's episodes when `--robot.type=sim_reach`."""
    register_third_party_plugins()
    cfg = draccus.parse(RobotClientConfig, args=argv)
    client = RobotClient(cfg)
    robot = client.robot
    if not client.start():  # the robot is connected already (RobotClient connects it when built): disconnect it
        client.stop()
        print(f"error: --server_address {cfg.server_address}: no policy server answered", file=sys.stderr)
        return 1
    receiver = threading.Thread(target=client.receive_actions, daemon=True)
    receiver.start()
    if isinstance(robot, SimReachRobot):
        threading.Thread(target=_stop_when_finished, args=(client, robot), daemon=True).start()
    try:
        client.control_loop(task=cfg.task)
    finally:
        client.stop()
        receiver.join()
    if isinstance(robot, SimReachRobot):
        print(json.dumps(outcomes(robot)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
