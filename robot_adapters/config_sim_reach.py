"""lerobot `RobotConfig` for the simulated reach robot: `--robot.type=sim_reach` in lerobot's CLIs and
`make_robot_from_config` (it finds `robot_adapters.sim_reach.SimReachRobot` by name). Imports lerobot."""

from __future__ import annotations

from dataclasses import dataclass

from lerobot.robots.config import RobotConfig


@RobotConfig.register_subclass("sim_reach")
@dataclass(kw_only=True)
class SimReachRobotConfig(RobotConfig):
    episodes: int = 40
    seed: int = 0
    perturb: bool = True
    action_bound: float | None = None
    task_color: str | None = "red"
