"""A simulated robot with LeRobot's `Robot` interface (connect, get_observation, send_action, disconnect,
observation_features, action_features), backed by the embedded reach task (`simtask`): numpy only.

It runs a fixed list of episodes (the evaluator's seeds) back to back: when one ends (success or its step
limit) the next starts at the following `send_action`, and each outcome is recorded. Every action sent is
recorded too, so tests count unsafe ones (non-finite or outside the bounds given) and stop actions.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simtask.config import TaskConfig
from simtask.reach_env import ReachEnv
from simtask.seeding import episode_seeds

STATE_NAMES = ("x", "y")  # the dataset's names (smolvla_cls/dataset_recording.py)
ACTION_NAMES = ("dx", "dy")
CAMERA = "top"  # observation.images.top
MAX_EPISODES = 1_000_000  # the seed list is built up front


@dataclass
class SimReachSettings:
    """What a SimReachRobot needs (lerobot's SimReachRobotConfig carries the same fields)."""

    episodes: int = 40
    seed: int = 0
    perturb: bool = True
    action_bound: float | None = None  # |action| above this counts as unsafe (None: only non-finite counts)
    task_color: str | None = "red"  # every episode's goal is this colour's disc (a robot client sends one fixed task)
    id: str | None = "sim"
    extra: dict = field(default_factory=dict)


def check_settings(config: Any, colors: tuple[str, ...]) -> None:
    """Refuse settings the simulated robot cannot run, naming the field (not a failure at the first episode)."""
    episodes = getattr(config, "episodes", None)
    if isinstance(episodes, bool) or not isinstance(episodes, int) or not 1 <= episodes <= MAX_EPISODES:
        raise ValueError(f"sim_reach: episodes must be an integer in [1, {MAX_EPISODES}], got {episodes!r}")
    seed = getattr(config, "seed", None)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"sim_reach: seed must be an integer >= 0, got {seed!r}")
    color = getattr(config, "task_color", None)
    if color is not None and color not in colors:
        raise ValueError(f"sim_reach: task_color must be one of {list(colors)} (or None), got {color!r}")
    bound = getattr(config, "action_bound", None)
    if bound is not None and not (isinstance(bound, (int, float)) and np.isfinite(bound) and bound > 0):
        raise ValueError(f"sim_reach: action_bound must be a finite number > 0 (or None), got {bound!r}")


@dataclass
class EpisodeOutcome:
    seed: int
    success: bool
    steps: int
    final_distance: float


class SimReachRobot:
    """Duck-typed LeRobot Robot; construct with any object carrying SimReachSettings' fields."""

    name = "sim_reach"

    def __init__(self, config: Any = None):
        self.config = config if config is not None else SimReachSettings()
        self.id = getattr(self.config, "id", None)
        self.env = ReachEnv(TaskConfig())
        check_settings(self.config, self.env.config.colors)
        self.seeds = episode_seeds(int(self.config.seed), int(self.config.episodes), stream="eval")
        self.outcomes: list[EpisodeOutcome] = []
        self.sent: list[np.ndarray] = []
        self.unsafe = 0
        self.connected = False
        self.finished = threading.Event()
        self._lock = threading.Lock()
        self._obs: dict[str, Any] | None = None
        self._start(0)

    # ----------------------------------------------------------- LeRobot Robot API
    @property
    def observation_features(self) -> dict:
        size = self.env.config.image_size
        return {**{n: float for n in STATE_NAMES}, CAMERA: (size, size, 3)}

    @property
    def action_features(self) -> dict:
        return {n: float for n in ACTION_NAMES}

    @property
    def is_connected(self) -> bool:
        return self.connected

    @property
    def is_calibrated(self) -> bool:
        return True

    def connect(self, calibrate: bool = True) -> None:
        self.connected = True

    def calibrate(self) -> None:
        pass

    def configure(self) -> None:
        pass

    def disconnect(self) -> None:
        self.connected = False

    def get_observation(self) -> dict[str, Any]:
        self._require()
        with self._lock:
            obs = self._obs
            assert obs is not None
            x, y = (float(v) for v in obs["observation.state"])
            return {"x": x, "y": y, CAMERA: obs["observation.images.top"].copy(), "task": obs["task"]}

    def send_action(self, action: dict[str, Any]) -> dict[str, Any]:
        self._require()
        missing = [n for n in ACTION_NAMES if n not in action]
        if missing:
            raise KeyError(f"sim_reach: action lacks {missing}")
        a = np.array([float(action[n]) for n in ACTION_NAMES], dtype=np.float64)
        bound = getattr(self.config, "action_bound", None)
        with self._lock:
            self.sent.append(a.astype(np.float32))
            if not np.all(np.isfinite(a)) or (bound is not None and np.any(np.abs(a) > bound + 1e-6)):
                self.unsafe += 1
                return {n: 0.0 for n in ACTION_NAMES}  # a real arm would refuse it; so does the sim
            if self.finished.is_set():
                return dict(zip(ACTION_NAMES, a.tolist(), strict=True))
            self._obs, done, _ = self.env.step(a)
            if done:
                dist = float(np.linalg.norm(self.env.agent_position - self.env.goal_position))
                self.outcomes.append(EpisodeOutcome(self.env.seed, bool(self.env.success), self.env.t, dist))
                self._start(len(self.outcomes))
        return dict(zip(ACTION_NAMES, a.tolist(), strict=True))

    # ---------------------------------------------------------------- helpers
    def _start(self, i: int) -> None:
        if i >= len(self.seeds):
            self.finished.set()
            return
        seed, perturb = self.seeds[i], bool(self.config.perturb)
        self._obs = self.env.reset(seed=seed, perturb=perturb)
        color = getattr(self.config, "task_color", None)
        if color is not None:  # same scene, the goal is the disc of that colour
            self._obs = self.env.reset(seed=seed, perturb=perturb, instruction_target=self.env.target_colors.index(color))

    @property
    def task(self) -> str:
        """The current episode's instruction (what `runtime robot` sends with each observation)."""
        return self.env.instruction

    def _require(self) -> None:
        if not self.connected:
            raise ConnectionError("sim_reach: not connected (call connect())")

    @property
    def success_rate(self) -> float:
        return sum(o.success for o in self.outcomes) / max(1, len(self.outcomes))
