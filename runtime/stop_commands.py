"""What the robot loop sends when it has no action: on a tick without one (`starved_stop`) and at the safe stop
(`stop_command`). The rule behind both: position targets hold and displacements stand still with nothing sent,
but a velocity motor (`x.vel`) runs on at its last command — so a robot with velocity dimensions is always sent
the stop on its moving dimensions (and its last targets on the others), whatever `--on-stop` says.
"""

from __future__ import annotations

import numpy as np

from runtime.robot_interface import RobotInterface
from runtime.safety import hold_or_stop


def starved_stop(interface: RobotInterface, stop_action: np.ndarray, last_sent: np.ndarray | None) -> np.ndarray | None:
    """What a tick with no action sends (None: nothing). Position targets hold and displacements stand still
    without a command, but a velocity motor runs on at its last one until a driver or stall watchdog stops it:
    a robot with velocity dimensions that was already commanded gets the stop action on its moving (velocity /
    displacement) dimensions and the last target sent on the others — a whole action, as every robot takes."""
    moving = getattr(interface, "moving_dims", None)
    if last_sent is None or moving is None or not getattr(interface, "has_velocity", False):
        return None
    return hold_or_stop(np.asarray(stop_action, dtype=np.float32).reshape(-1), last_sent, moving)


def stop_command(on_stop: str, stop_action: np.ndarray, last_sent: np.ndarray | None,
                 moving: np.ndarray | None, velocity: bool = False) -> np.ndarray | None:
    """The action the safe stop sends (None: nothing). `auto`: the stop action on the `moving` (displacement /
    velocity) dimensions, the last action sent on the others — nothing when no dimension moves on or nothing was
    sent; without action names (`moving` None) every dimension counts as moving. `hold`: nothing more — except on
    a robot with `velocity` dimensions, which nothing sent leaves driving at its last command: there it is `auto`
    (holding a velocity is never a stop)."""
    stop = np.asarray(stop_action, dtype=np.float32).reshape(-1)
    if on_stop == "hold" and not (velocity and moving is not None):
        return None
    if on_stop == "stop" or moving is None:
        return stop
    if not np.any(moving):
        return None  # position targets only: the arm keeps its last target
    return hold_or_stop(stop, last_sent, moving)  # the guard's per-dimension rule (None: never commanded)
