"""The gate benchmark's episodes: the reach task with scheduled relevant and irrelevant changes and
deadlines that the scripted expert's reaction sizes.

Same scenes as ``ReachEnv`` for a seed (``layout.sample_scene``); the changes come from
``simtask.events``. Success counts only from the *arm* tick on (the end of the last change, plus
``settle`` ticks after an irrelevant one, so the agent must hold the goal through the distraction).
Two kinds of deadline, each = the tick the noise-free scripted expert (taking over from the agent's
position then, reacting at once) would reach T, plus ``slack``:

- *reach*: when a relevant change (goal jump or move) starts, the agent must come within the success radius
  of the goal by T + slack (arm rule ignored), unless a later relevant change starts first (its own deadline
  then governs). Missing it ends the episode as a failure then: a late reaction to a goal jump costs the
  episode even when irrelevant changes follow it.
- *final*: when the last change starts, success (arm rule included) must come by T + slack.

Where a jump is the only change the two coincide (the single deadline of before).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simtask.config import IMAGE_KEY, STATE_KEY, TaskConfig
from simtask.events import NOISE_SALT, Change, place_rng, sample_schedule
from simtask.image_changes import shift_levels
from simtask.layout import _keeps_clear, _sample_point, sample_scene
from simtask.reach_env import clip_action, instruction_for
from simtask.render import render_frame

MIN_ACTION_CHANGE = 0.5  # a relevant change moves the expert's action by >= this x max_step


def expert_action(goal: np.ndarray, agent: np.ndarray, max_step: float) -> np.ndarray:
    """The scripted expert's (optimal) action: straight at the goal, norm-clipped."""
    return clip_action(np.asarray(goal, dtype=np.float64) - agent, max_step)


@dataclass
class _State:
    positions: np.ndarray
    agent: np.ndarray
    t: int = 0
    offset: np.ndarray = field(default_factory=lambda: np.zeros(3))
    path: dict[int, np.ndarray] = field(default_factory=dict)  # goal positions of an ongoing move


class BenchEnv:
    """Reach episodes of one ``simtask.events`` kind; ``reset(seed, kind)`` then ``step(action)``."""

    def __init__(self, config: TaskConfig | None = None, slack: int = 5, settle: int = 3) -> None:
        self.config = config if config is not None else TaskConfig()
        if not isinstance(slack, int) or slack < 0:
            raise ValueError(f"BenchEnv.slack must be an int >= 0 (got {slack!r})")
        if not isinstance(settle, int) or settle < 0:
            raise ValueError(f"BenchEnv.settle must be an int >= 0 (got {settle!r})")
        self.slack, self.settle = slack, settle
        self._s: _State | None = None

    # ----------------------------------------------------------------- episode control
    def reset(self, seed: int, kind: str) -> dict[str, Any]:
        self.seed, self.kind = int(seed), kind
        self.schedule: tuple[Change, ...] = sample_schedule(self.seed, kind, self.config)
        scene = sample_scene(self.seed, self.config)
        self.goal_index, self.colors = scene.goal_index, scene.target_colors
        self.instruction = instruction_for(scene.target_colors[scene.instruction_index])
        self._s = _State(scene.target_positions.copy(), scene.agent_start.copy())
        self.arm_tick = max(c.end + (0 if c.relevant else self.settle) for c in self.schedule)
        self.last_start = max(c.tick for c in self.schedule)
        self.deadline: int | None = None  # the final deadline, set when the last change starts
        self.expert_ticks: int | None = None
        self.reach_deadlines: list[dict[str, Any]] = []  # one per relevant change, in the order they start
        self._pending: dict[str, Any] | None = None  # the reach deadline that governs now (not yet reached)
        self.failed_deadline: dict[str, Any] | None = None
        self.success = self.done = False
        return self._observe()

    def step(self, action: Any) -> tuple[dict[str, Any], bool, dict[str, Any]]:
        s = self._state()
        if self.done:
            raise RuntimeError("BenchEnv.step: the episode is over; call reset()")
        started = self._advance(s, clip_action(action, self.config.max_step))
        for c in started:
            if c.relevant:  # supersedes any earlier relevant change's pending deadline
                reach = self._expert_success_tick(s, armed=False)
                self._pending = {"change": self.schedule.index(c), "type": c.type, "tick": s.t,
                                 "deadline": reach + self.slack, "reached": None}
                self.reach_deadlines.append(self._pending)
        if s.t == self.last_start:
            self.expert_ticks = self._expert_success_tick(s) - s.t
            self.deadline = s.t + self.expert_ticks + self.slack
        distance = float(np.linalg.norm(s.agent - s.positions[self.goal_index]))
        within = distance <= self.config.success_radius
        if self._pending is not None and within:
            self._pending["reached"], self._pending = s.t, None
        self.success = s.t >= self.arm_tick and within
        limit = self.deadline if self.deadline is not None else self.last_start + 200
        if not self.success and self._pending is not None and s.t >= self._pending["deadline"]:
            self.failed_deadline = {"rule": "reach", **{k: v for k, v in self._pending.items() if k != "reached"}}
        elif not self.success and s.t >= limit:
            self.failed_deadline = {"rule": "final", "deadline": limit}
        self.done = self.success or self.failed_deadline is not None
        info = {"t": s.t, "success": self.success, "started": [c.type for c in started],
                "relevant_now": any(c.relevant for c in started), "distance": distance, "within": within,
                "deadline": self.deadline, "reach_deadline": self._pending and self._pending["deadline"],
                "failed_deadline": self.failed_deadline}
        return self._observe(), self.done, info

    # ----------------------------------------------------------------- dynamics
    def _advance(self, s: _State, action: np.ndarray) -> list[Change]:
        """Move the agent, then apply the changes of the new tick; returns the changes that started."""
        s.agent = np.clip(s.agent + action, 0.0, 1.0)
        s.t += 1
        started = [c for c in self.schedule if c.tick == s.t]
        for c in started:
            self._start(s, c, self.schedule.index(c))
        if s.t in s.path:
            s.positions[self.goal_index] = s.path.pop(s.t)
        return started

    def _start(self, s: _State, c: Change, index: int) -> None:
        rng = place_rng(self.seed, index)
        if c.type == "lighting":
            s.offset = s.offset + np.asarray(c.offset)
        elif c.type == "jump":
            s.positions[self.goal_index] = self._place(s, rng, self.goal_index, relevant=True)
        elif c.type == "distractor":
            others = [i for i in range(len(s.positions)) if i != self.goal_index]
            disc = others[int(rng.integers(len(others)))]
            s.positions[disc] = self._place(s, rng, disc, relevant=False)
        elif c.type == "move":
            s.path = self._move_path(s, rng, c)

    def _place(self, s: _State, rng: np.random.Generator, disc: int, relevant: bool) -> np.ndarray:
        """New centre for ``disc``: far from its old centre, clear of the agent and the other discs, and (for
        the goal) changing the expert's action; relaxed step by step rather than failing."""
        cfg = self.config
        old = s.positions[disc].copy()
        others = np.delete(s.positions, disc, axis=0)
        a_old = expert_action(old, s.agent, cfg.max_step)

        def changes_action(p: np.ndarray) -> bool:
            moved = np.linalg.norm(expert_action(p, s.agent, cfg.max_step) - a_old)
            return not relevant or moved >= MIN_ACTION_CHANGE * cfg.max_step

        for clearance, jump in ((cfg.jump_clearance, cfg.min_jump), (0.0, cfg.min_jump), (0.0, 0.0)):
            clear = _keeps_clear([(old[None], jump), (s.agent[None], clearance), (others, cfg.min_separation)])
            p = _sample_point(rng, cfg.target_low, cfg.target_high,
                              lambda q, ok=clear: ok(q) and changes_action(q))
            if p is not None:
                return p
        raise ValueError(f"TaskConfig.min_separation={cfg.min_separation}: no room to move disc {disc}")

    def _move_path(self, s: _State, rng: np.random.Generator, c: Change) -> dict[int, np.ndarray]:
        """Goal positions for ticks c.tick..c.end at constant speed, reflected at the borders, clear of the
        other discs and ending where the expert's action differs (the direction that changes it most of 200
        tried when none does: an agent far from the goal sees a small change of direction only)."""
        cfg = self.config
        lo, hi = cfg.target_low, cfg.target_high
        start = s.positions[self.goal_index].copy()
        others = np.delete(s.positions, self.goal_index, axis=0)
        a_old = expert_action(start, s.agent, cfg.max_step)
        best: tuple[float, dict[int, np.ndarray]] = (-1.0, {})
        for _ in range(200):
            angle = rng.uniform(0, 2 * np.pi)
            v = c.speed * np.array([np.cos(angle), np.sin(angle)])
            p, path = start.copy(), {}
            for k in range(c.duration):
                p = p + v
                for ax in range(2):  # reflect at the border
                    if not lo <= p[ax] <= hi:
                        v[ax] = -v[ax]
                        p[ax] = np.clip(p[ax], lo, hi)
                path[c.tick + k] = p.copy()
            if not all(_keeps_clear([(others, cfg.min_separation)])(q) for q in path.values()):
                continue
            moved = float(np.linalg.norm(expert_action(p, s.agent, cfg.max_step) - a_old))
            if moved >= MIN_ACTION_CHANGE * cfg.max_step:
                return path
            best = max(best, (moved, path), key=lambda b: b[0])
        return best[1] or path  # no direction kept clear of the other discs: the last one tried

    def _expert_success_tick(self, s: _State, armed: bool = True) -> int:
        """Tick at which the noise-free expert, taking over now, would succeed (on a copy of the state); with
        ``armed`` False, the first tick it is within the success radius (the reach deadlines' rule)."""
        sim = copy.deepcopy(s)
        for _ in range(500):
            if (sim.t >= self.arm_tick or not armed) and np.linalg.norm(sim.agent - sim.positions[self.goal_index]) <= \
                    self.config.success_radius:
                return sim.t
            self._advance(sim, expert_action(sim.positions[self.goal_index], sim.agent, self.config.max_step))
        raise RuntimeError("BenchEnv: the scripted expert cannot reach the goal (task config too hard)")

    # ----------------------------------------------------------------- observation
    def render(self) -> np.ndarray:
        s = self._state()
        img = render_frame(self.config, s.positions, self.colors, s.agent)
        noise = [c for c in self.schedule if c.type == "noise" and c.tick <= s.t <= c.end]
        if not np.any(s.offset) and not noise:
            return img
        out = shift_levels(img.astype(np.float64), s.offset, 0.0, None)
        for c in noise:
            out = shift_levels(out, (0.0, 0.0, 0.0), c.noise_std, np.random.default_rng([self.seed, NOISE_SALT, s.t]))
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def _observe(self) -> dict[str, Any]:
        s = self._state()
        return {IMAGE_KEY: self.render(), STATE_KEY: s.agent.astype(np.float32), "task": self.instruction}

    def _state(self) -> _State:
        if self._s is None:
            raise RuntimeError("BenchEnv: call reset() first")
        return self._s

    # ----------------------------------------------------------------- read-only state
    @property
    def t(self) -> int:
        return self._state().t

    @property
    def agent_position(self) -> np.ndarray:
        return self._state().agent.copy()

    @property
    def goal_position(self) -> np.ndarray:
        return self._state().positions[self.goal_index].copy()

    @property
    def target_positions(self) -> np.ndarray:
        return self._state().positions.copy()

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current state (what an up-to-date plan would do)."""
        return expert_action(self.goal_position, self._state().agent, self.config.max_step)
