"""Build a robot from `--robot.type=... --robot.<field>=...` flags (what `runtime robot` passes on).

`sim_reach` is built here without lerobot; any other type goes through lerobot's own config parser
(draccus) and `make_robot_from_config` in `robot_adapters.lerobot_robot` (stock robots, cameras and
third-party plugins registered; parser errors as one line naming the flag).
"""

from __future__ import annotations

import argparse
from typing import Any

from robot_adapters.sim_reach import SimReachRobot, SimReachSettings


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _sim(args: list[str]) -> SimReachRobot:
    from simtask.config import TaskConfig

    p = argparse.ArgumentParser(prog="--robot.type=sim_reach")
    p.add_argument("--robot.type", dest="type")
    p.add_argument("--robot.episodes", dest="episodes", type=int, default=40)
    p.add_argument("--robot.seed", dest="seed", type=int, default=0)
    p.add_argument("--robot.perturb", dest="perturb", type=_flag, default=True)
    p.add_argument("--robot.task_color", dest="task_color", default="red", choices=TaskConfig().colors)
    ns = p.parse_args(args)
    settings = SimReachSettings(episodes=ns.episodes, seed=ns.seed, perturb=ns.perturb, task_color=ns.task_color)
    try:
        return SimReachRobot(settings)
    except ValueError as exc:  # a value argparse accepted but the robot cannot run: argparse's own error format
        p.error(f"--robot.{str(exc).split(': ', 1)[1]}")


def make_robot(args: list[str]) -> Any:
    """A connected-on-demand robot object with LeRobot's Robot interface."""
    types = [a.split("=", 1)[1] for a in args if a.startswith("--robot.type=")]
    if not types:
        raise ValueError("no robot given: pass --robot.type=<lerobot robot type or sim_reach> and its --robot.* flags")
    if types[-1] == "sim_reach":
        return _sim(args)
    from robot_adapters.lerobot_robot import make_lerobot_robot

    return make_lerobot_robot(args)
