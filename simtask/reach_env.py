"""The reach environment: a point agent moves by clipped 2-D displacements towards the disc that
the instruction names. Observations are LeRobot-style dicts (image, state, task string)."""

from __future__ import annotations

from typing import Any

import numpy as np

from simtask.config import ACTION_DIM, IMAGE_KEY, STATE_KEY, TaskConfig
from simtask.layout import Scene, sample_jump, sample_scene
from simtask.render import render_frame


def instruction_for(color: str) -> str:
    """The only language of the task."""
    return f"reach the {color} target"


def clip_action(action: Any, max_step: float) -> np.ndarray:
    """Validate ``action`` (exactly ACTION_DIM finite numbers) and clip its Euclidean norm. None is a tick where
    nothing was sent (``EdgePolicy.step`` with no safe target): a displacement agent then stays where it is."""
    if action is None:
        return np.zeros(ACTION_DIM, dtype=np.float64)
    a: np.ndarray = np.asarray(action, dtype=np.float64).reshape(-1)
    if a.shape != (ACTION_DIM,):
        raise ValueError(f"action: expected {ACTION_DIM} numbers, got shape {np.shape(action)}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"action: must be finite (got {a.tolist()})")
    norm = float(np.linalg.norm(a))
    if norm > max_step:
        a = a * (max_step / norm)
    return a


class ReachEnv:
    """2-D reaching with optional target jumps. Deterministic given the reset seed and actions
    (the jump destination keeps clear of wherever the agent is at the jump)."""

    def __init__(self, config: TaskConfig | None = None) -> None:
        self.config = config if config is not None else TaskConfig()
        self._scene: Scene | None = None

    # ----------------------------------------------------------------- episode control
    def reset(
        self,
        seed: int | None = None,
        perturb: bool = False,
        instruction_target: int | None = None,
        swap_instruction: bool = False,
    ) -> dict[str, Any]:
        """Start an episode. ``seed`` fixes the scene (None draws one from OS entropy).
        ``instruction_target`` picks the goal disc; ``swap_instruction`` keeps the scene and goal
        but makes the instruction name a different disc (a language-sensitivity probe)."""
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        self.seed = int(seed)
        self._scene = sample_scene(self.seed, self.config, instruction_target, swap_instruction)
        self._positions = self._scene.target_positions.copy()
        self._agent = self._scene.agent_start.copy()
        self._perturb = bool(perturb)
        self._t = 0
        self._success = False
        self._done = False
        self._perturbed = False
        return self._observe()

    def step(self, action: Any) -> tuple[dict[str, Any], bool, dict[str, Any]]:
        """Apply one displacement (None: nothing sent, the agent stays); returns (obs, done, info)."""
        scene = self._require_scene()
        if self._done:
            raise RuntimeError("ReachEnv.step: the episode is over; call reset()")
        a = clip_action(action, self.config.max_step)
        self._agent = np.clip(self._agent + a, 0.0, 1.0)
        self._t += 1
        perturbed_now = self._perturb and self._t == scene.perturb_tick
        if perturbed_now:
            self._positions[scene.goal_index] = sample_jump(
                self.seed, self.config, self._positions, scene.goal_index, self._agent
            )
            self._perturbed = True
        armed = not (self._perturb and self.config.hold_until_perturb) or self._perturbed
        distance = float(np.linalg.norm(self._agent - self._positions[scene.goal_index]))
        self._success = armed and distance <= self.config.success_radius
        self._done = self._success or self._t >= self.config.max_steps
        info = {
            "success": self._success,
            "perturbed_now": perturbed_now,
            "t": self._t,
            "target_index": scene.goal_index,
            "perturb_tick": self.perturb_tick,
            "distance": distance,
        }
        return self._observe(), self._done, info

    def step_after_success(self, action: Any) -> dict[str, Any]:
        """Apply one displacement after the episode ended in success; returns the observation.

        Why: a recording that continues past success (``hold_after_success``) needs frames of the
        agent holding at the goal. Same motion as ``step``; the targets stay put (a jump happens
        before success in a perturbed episode), ``success``/``done`` stay True, ``t`` keeps counting.
        """
        self._require_scene()
        if not self._success:
            raise RuntimeError("ReachEnv.step_after_success: the episode has not ended in success")
        a = clip_action(action, self.config.max_step)
        self._agent = np.clip(self._agent + a, 0.0, 1.0)
        self._t += 1
        return self._observe()

    # ----------------------------------------------------------------- observation
    def render(self) -> np.ndarray:
        scene = self._require_scene()
        return render_frame(self.config, self._positions, scene.target_colors, self._agent)

    def _observe(self) -> dict[str, Any]:
        return {
            IMAGE_KEY: self.render(),
            STATE_KEY: self._agent.astype(np.float32),
            "task": self.instruction,
        }

    def _require_scene(self) -> Scene:
        if self._scene is None:
            raise RuntimeError("ReachEnv: call reset() first")
        return self._scene

    # ----------------------------------------------------------------- read-only state
    @property
    def instruction(self) -> str:
        scene = self._require_scene()
        return instruction_for(scene.target_colors[scene.instruction_index])

    @property
    def target_index(self) -> int:
        """Index of the disc that counts for success (the instructed one unless swapped)."""
        return self._require_scene().goal_index

    @property
    def instruction_index(self) -> int:
        """Index of the disc the instruction names."""
        return self._require_scene().instruction_index

    @property
    def target_colors(self) -> tuple[str, ...]:
        return self._require_scene().target_colors

    @property
    def target_positions(self) -> np.ndarray:
        self._require_scene()
        return self._positions.copy()

    @property
    def goal_position(self) -> np.ndarray:
        return self._positions[self.target_index].copy()

    @property
    def agent_position(self) -> np.ndarray:
        self._require_scene()
        return self._agent.copy()

    @property
    def perturb_tick(self) -> int | None:
        """Step at which the goal jumps, or None in an unperturbed episode."""
        return self._require_scene().perturb_tick if self._perturb else None

    @property
    def perturbed(self) -> bool:
        """Whether the jump has already happened."""
        return self._perturbed

    @property
    def success(self) -> bool:
        return self._success

    @property
    def done(self) -> bool:
        return self._done

    @property
    def t(self) -> int:
        return self._t
