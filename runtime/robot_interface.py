"""The robot side of the artifact contract: the manifest's optional `robot` section (motor names, camera
keys and sizes, fps, written at export from the LeRobotDataset) and the two mappings it gives:
a LeRobot `Robot.get_observation()` dict (`"<motor>.pos"` floats + HxWx3 camera arrays) → the policy's
observation, and an action vector → named motor values for `send_action`. Also checks the `lerobot_features`
a robot client announces, or a robot's own `observation_features` / `action_features`, against it (before
anything moves). Without a `robot` section, names are not checked, only counts, and camera sizes are free.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.manifest import Manifest

IMAGES_PREFIX = "observation.images."
STATE_FEATURE = "observation.state"
TASK_KEY = "task"
log = logging.getLogger("runtime.robot")
FLOAT32_MAX = float(np.finfo(np.float32).max)
ASPECT_TOLERANCE = 0.01  # a frame whose width/height differs more from the recorded one is another camera or crop
MAX_SHAPES_SEEN = 64  # the per-camera shape cache is cleared past this (a client cycling sizes cannot grow it)


def _aspect_error(camera: str, got: tuple[Any, Any], recorded: tuple[int, int]) -> str | None:
    """Why a (height, width) frame cannot stand in for the recorded one (None when it can, or is unknown):
    resizing to another resolution is fine, squeezing another aspect ratio into the recorded one is not."""
    h, w = got
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in (h, w)):
        return None  # unknown yet (a camera without width/height set) or malformed (refused elsewhere)
    rh, rw = recorded
    if abs((w / h) / (rw / rh) - 1.0) <= ASPECT_TOLERANCE:
        return None
    return (f"camera '{camera}' gives {h}x{w} frames, the artifact was recorded at {rh}x{rw} (aspect "
            f"{w / h:.3f} vs {rw / rh:.3f}): another camera or crop; set its width/height to the recorded aspect")


def moves_on(name: str) -> bool:
    """An action dimension that a repeated value keeps moving: a displacement or velocity (`dx`, `x.vel`, …)."""
    n = name.lower()
    return n.endswith((".vel", ".velocity", ".delta")) or "delta" in n or re.fullmatch(r"d[a-z]{1,2}", n) is not None


def is_velocity(name: str) -> bool:
    """A velocity command (`x.vel`): unlike a position target or a displacement, a tick with no command leaves the
    motor running at the last one, so "send nothing" does not stop it."""
    return name.lower().endswith((".vel", ".velocity"))


def hardware_names(features: Any, where: str) -> tuple[tuple[str, ...], dict[str, tuple]]:
    """A robot's `observation_features` / `action_features` (name → `float` for a motor, a shape tuple for a
    camera) → (motor names, {camera: shape}), split the way lerobot's `hw_to_dataset_features` does."""
    if not isinstance(features, Mapping):
        raise RobotInterfaceError(f"the robot's {where} must be a dict (name -> float or camera shape), "
                                  f"got {type(features).__name__}")
    motors = tuple(str(k) for k, v in features.items() if v is float)
    cameras = {str(k): v for k, v in features.items() if isinstance(v, tuple)}
    return motors, cameras


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
    recorded: bool = False  # camera sizes come from the dataset (the robot section): aspect ratios are checked
    _shapes_ok: set = field(default_factory=set, compare=False, repr=False)  # (camera, shape, uint8) accepted

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
                   d.state_dim, recorded=True)

    @property
    def moving_dims(self) -> np.ndarray | None:
        """Per action dimension, whether it is a displacement / velocity (`moves_on`); None without names."""
        return None if not self.action_names else np.array([moves_on(n) for n in self.action_names], dtype=bool)

    @property
    def has_velocity(self) -> bool:
        """Some action dimension is a velocity command (`is_velocity`): nothing sent does not stop it."""
        return any(is_velocity(n) for n in self.action_names or ())

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
            if self.recorded:
                self._check_frame(robot_key, key, img)
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

    def _check_frame(self, robot_key: str, key: str, img: Any) -> None:
        """Refuse a frame of another aspect ratio than the recorded one (the policy would see a squeezed scene);
        another resolution is resized. Checked once per camera and shape: later ticks cost one set look-up."""
        shape = getattr(img, "shape", None)
        if not isinstance(shape, tuple):
            return  # not an array: observation.py names it
        seen = (key, shape, getattr(img, "dtype", None) == np.uint8)
        if seen in self._shapes_ok:
            return
        if len(shape) == 3 and (shape[2] if seen[2] else shape[0]) == 3:  # uint8 HxWx3, float 3xHxW; other
            h, w = shape[:2] if seen[2] else shape[1:]  # layouts are refused (and named) by observation.py
            why = _aspect_error(robot_key, (h, w), self.cameras[key][:2])
            if why:
                raise RobotInterfaceError(why)
        if len(self._shapes_ok) >= MAX_SHAPES_SEEN:
            self._shapes_ok.clear()
        self._shapes_ok.add(seen)

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
        names = self._check_motors(tuple(names), self.state_names, self.state_dim, f"lerobot_features['{STATE_FEATURE}']")
        announced = {k: features[k].get("shape") if isinstance(features[k], Mapping) else None
                     for k in features if k.startswith(IMAGES_PREFIX)}
        self._check_cameras(announced, "lerobot_features", lambda key: f"lerobot_features['{key}'].shape")
        return self.state_names or names

    def check_robot_features(self, observation_features: Any, action_features: Any) -> None:
        """Check a LeRobot robot's own `observation_features` / `action_features` against the artifact before
        it is connected: motors, cameras (and their aspect ratio) and the action's motor names, each mismatch
        named. Converted as lerobot's `hw_to_dataset_features` does (`float` → motor, shape tuple → camera)."""
        motors, cams = hardware_names(observation_features, "observation_features")
        self._check_motors(motors, self.state_names, self.state_dim, "the robot's observation_features")
        self._check_cameras({IMAGES_PREFIX + k: shape for k, shape in cams.items()}, "the robot's observation_features",
                            lambda key: f"the robot's observation_features['{key.removeprefix(IMAGES_PREFIX)}']")
        actions, _ = hardware_names(action_features, "action_features")
        self._check_motors(actions, self.action_names, self.action_dim, "the robot's action_features")

    @staticmethod
    def _check_motors(names: tuple[str, ...], expected: tuple[str, ...] | None, dim: int, where: str) -> tuple[str, ...]:
        """Distinct names, and the artifact's (when it has a robot section; else only the count)."""
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise RobotInterfaceError(f"{where}.names repeats motor(s) {repeated}")
        if expected is not None:
            missing = [n for n in expected if n not in names]
            extra = [n for n in names if n not in expected]
            if missing or extra:
                what = [f"motor '{n}' missing" for n in missing] + [f"motor '{n}' not in the artifact" for n in extra]
                raise RobotInterfaceError(f"{where}: {', '.join(what)}; the artifact expects {list(expected)}")
        elif len(names) != dim:
            raise RobotInterfaceError(f"{where}: {len(names)} motors, the artifact expects {dim}")
        return names

    def _check_cameras(self, shapes: Mapping[str, Any], where: str, shape_field: Any) -> None:
        """Every camera of the artifact, each shape (H, W, 3) of the recorded aspect ratio; cameras the artifact
        does not use are ignored (an extra monitoring camera, a policy trained on a subset of them)."""
        for key in sorted(set(self.cameras) - set(shapes)):
            raise RobotInterfaceError(f"{where}: camera '{key}' missing on the robot (it has {sorted(shapes)}); "
                                      f"the artifact expects {sorted(self.cameras)}")
        extra = sorted(set(shapes) - set(self.cameras))
        if extra:
            log.info("%s: camera(s) %s not used by the artifact: ignored", where, extra)
        for key in sorted(set(shapes) & set(self.cameras)):
            shape = shapes[key]
            if not isinstance(shape, (list, tuple)) or len(shape) != 3 or shape[2] != 3:
                raise RobotInterfaceError(f"{shape_field(key)} must be (H, W, 3), got {shape!r}")
            why = _aspect_error(key.removeprefix(IMAGES_PREFIX), (shape[0], shape[1]), self.cameras[key][:2])
            if self.recorded and why:
                raise RobotInterfaceError(why)

    def check_robot(self, robot: Any) -> None:
        """`check_robot_features` on a robot object, before `connect()`; a robot without the feature properties
        (a duck-typed test double) is checked tick by tick only."""
        obs, act = getattr(robot, "observation_features", None), getattr(robot, "action_features", None)
        if obs is not None or act is not None:
            self.check_robot_features(obs, act)
