"""The robot side of the artifact contract: the manifest's optional `robot` section (motor names, camera
keys and sizes, fps, written at export from the LeRobotDataset) and the two mappings it gives:
a LeRobot `Robot.get_observation()` dict (`"<motor>.pos"` floats + HxWx3 camera arrays) → the policy's
observation, and an action vector → named motor values for `send_action`. Also checks the `lerobot_features`
a robot client announces against it. Without a `robot` section, names are not checked, only counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.manifest import Manifest

IMAGES_PREFIX = "observation.images."
STATE_FEATURE = "observation.state"
TASK_KEY = "task"
FLOAT32_MAX = float(np.finfo(np.float32).max)


class RobotInterfaceError(ValueError):
    """A robot observation or announced feature set does not match the artifact; names the key."""


@dataclass(frozen=True)
class RobotInterface:
    fps: float | None
    action_names: tuple[str, ...] | None  # None when the manifest has no robot section
    state_names: tuple[str, ...] | None
    cameras: dict[str, tuple[int, int, int]]  # full key (observation.images.<name>) → (H, W, C)
    state_key: str
    action_dim: int
    state_dim: int

    @classmethod
    def from_manifest(cls, m: Manifest) -> RobotInterface:
        """The mappings of a loaded manifest; its `robot` section was validated by `Manifest.load` (schema:
        types and ranges; `Manifest._check_robot`: name counts vs dims, distinct names, camera keys)."""
        d = m.dims
        cams = {c.key: (c.height, c.width, c.channels) for c in m.cameras}
        r = m.robot
        if r is None:
            return cls(None, None, None, cams, m.state_key, d.action_dim, d.state_dim)
        cams.update({key: (c.height, c.width, c.channels) for key, c in r.cameras.items()})
        return cls(float(r.fps), tuple(r.action_names), tuple(r.state_names), cams, m.state_key, d.action_dim,
                   d.state_dim)

    # ------------------------------------------------------------- robot → policy
    @property
    def camera_names(self) -> dict[str, str]:
        """Robot camera name (the key in get_observation()) → the policy's image key."""
        return {k.removeprefix(IMAGES_PREFIX): k for k in self.cameras}

    def observation(self, robot_obs: Mapping[str, Any], task: str | None = None,
                    state_names: tuple[str, ...] | None = None) -> dict[str, Any]:
        """A robot's observation dict → the policy's observation (state vector in `state_names` order)."""
        names = self.state_names or state_names
        if names is None:
            raise RobotInterfaceError("no state names: the manifest has no 'robot' section and the robot announced none")
        out: dict[str, Any] = {}
        for robot_key, key in self.camera_names.items():
            img = robot_obs.get(robot_key, robot_obs.get(key))
            if img is None:
                raise RobotInterfaceError(f"robot observation lacks camera '{robot_key}'")
            out[key] = img
        state = np.empty(len(names), dtype=np.float32)
        for i, n in enumerate(names):
            v = robot_obs.get(n)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise RobotInterfaceError(f"robot observation '{n}' must be a number, got {type(v).__name__}")
            try:
                f = float(v)
            except OverflowError:  # an int beyond any float
                f = math.inf
            if not abs(f) <= FLOAT32_MAX:  # NaN, inf, or beyond float32 (the state's dtype in the graphs)
                raise RobotInterfaceError(f"robot observation '{n}' must be a finite float32 number, got {v!r:.40}")
            state[i] = f
        out[self.state_key] = state
        instruction = task if task is not None else robot_obs.get(TASK_KEY)
        if instruction is not None:
            out[TASK_KEY] = instruction
        return out

    def action_dict(self, action: np.ndarray, action_names: tuple[str, ...] | None = None) -> dict[str, float]:
        """Action vector → {motor name: value} for `Robot.send_action`."""
        names = self.action_names or action_names
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        if names is None or len(names) != a.size:
            raise RobotInterfaceError(f"no {a.size} action names to map the action onto (got {names!r})")
        return {n: float(v) for n, v in zip(names, a, strict=True)}

    # ---------------------------------------------------------- announced features
    def check_lerobot_features(self, features: Mapping[str, Any]) -> tuple[str, ...]:
        """Check a robot client's `lerobot_features` (hw_to_dataset_features of its robot) against the artifact.

        Returns the state names in the order the client's robot reports them; raises RobotInterfaceError
        naming the first mismatching key.
        """
        state = features.get(STATE_FEATURE)
        if not isinstance(state, Mapping):
            raise RobotInterfaceError(f"lerobot_features lacks '{STATE_FEATURE}'")
        names = state.get("names")
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise RobotInterfaceError(f"lerobot_features['{STATE_FEATURE}'].names must list motor names")
        names = tuple(names)
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise RobotInterfaceError(f"lerobot_features['{STATE_FEATURE}'].names repeats motor(s) {repeated}")
        if self.state_names is not None:
            missing = [n for n in self.state_names if n not in names]
            extra = [n for n in names if n not in self.state_names]
            if missing or extra:
                what = [f"motor '{n}' missing" for n in missing] + [f"motor '{n}' not in the artifact" for n in extra]
                raise RobotInterfaceError(f"lerobot_features['{STATE_FEATURE}']: {', '.join(what)}; "
                                          f"the artifact expects {list(self.state_names)}")
        elif len(names) != self.state_dim:
            raise RobotInterfaceError(f"lerobot_features['{STATE_FEATURE}']: {len(names)} motors, "
                                      f"the artifact expects {self.state_dim}")
        announced = {k for k in features if k.startswith(IMAGES_PREFIX)}
        for key in sorted(announced ^ set(self.cameras)):
            where = "not in the artifact" if key in announced else "missing on the robot"
            raise RobotInterfaceError(f"lerobot_features: camera '{key}' {where}; the artifact expects {sorted(self.cameras)}")
        for key in sorted(announced):
            shape = features[key].get("shape") if isinstance(features[key], Mapping) else None
            if not isinstance(shape, (list, tuple)) or len(shape) != 3 or shape[2] != 3:
                raise RobotInterfaceError(f"lerobot_features['{key}'].shape must be (H, W, 3), got {shape!r}")
        return self.state_names or names
