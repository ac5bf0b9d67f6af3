"""Scripted expert: heads straight for the goal disc at full speed. It reads the environment's
internals (not the observation), so it ignores language by construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simtask.reach_env import ReachEnv, clip_action


class ScriptedExpert:
    """``act`` gives the clean action (what to record); ``noisy`` adds Gaussian noise to it (what to
    execute) so recorded states cover small deviations from the ideal path."""

    def __init__(self, noise_std: float = 0.0, seed: int | None = None) -> None:
        if not noise_std >= 0.0:
            raise ValueError(f"ScriptedExpert.noise_std must be >= 0 (got {noise_std!r})")
        self.noise_std = float(noise_std)
        self._rng = np.random.default_rng(seed)

    def act(self, env: ReachEnv) -> np.ndarray:
        """Displacement towards the goal centre, clipped to max_step; float32 [2]."""
        return clip_action(env.goal_position - env.agent_position, env.config.max_step).astype(np.float32)

    def noisy(self, action: np.ndarray, max_step: float) -> np.ndarray:
        """``action`` plus N(0, noise_std^2) per axis, norm-clipped to ``max_step``; float32 [2]."""
        if self.noise_std == 0.0:
            return np.asarray(action, dtype=np.float32).copy()
        noise = self._rng.normal(0.0, self.noise_std, size=2)
        return clip_action(np.asarray(action, dtype=np.float64) + noise, max_step).astype(np.float32)


@dataclass
class ExpertEpisode:
    """One recorded expert episode: observation i was followed by clean action i."""

    seed: int
    perturb: bool
    perturb_tick: int | None
    success: bool
    success_length: int | None = None  # frames up to success; later frames are the hold after success
    observations: list[dict[str, Any]] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    goals: list[np.ndarray] = field(default_factory=list)  # the goal disc's centre at each frame (after a jump: the new one)

    def __len__(self) -> int:
        return len(self.actions)


def run_expert_episode(
    env: ReachEnv,
    expert: ScriptedExpert,
    seed: int,
    perturb: bool = False,
    instruction_target: int | None = None,
    keep_observations: bool = True,
    hold_after_success: int = 0,
) -> ExpertEpisode:
    """Roll out one episode: record the clean action, execute the noisy one.

    ``hold_after_success`` = K >= 1 continues a successful episode for K more frames with the
    expert's own action at the goal (clean: the displacement to the goal centre, which holds the
    agent there; executed with noise as before), so the last pre-success frames have K future
    actions inside the episode. K = 0 (default) ends at success, frame for frame as before."""
    if not isinstance(hold_after_success, int) or hold_after_success < 0:
        raise ValueError(f"run_expert_episode.hold_after_success must be an int >= 0 (got {hold_after_success!r})")
    obs = env.reset(seed=seed, perturb=perturb, instruction_target=instruction_target)
    ep = ExpertEpisode(seed=seed, perturb=perturb, perturb_tick=env.perturb_tick, success=False)
    done = False
    while not done:
        clean = expert.act(env)
        if keep_observations:
            ep.observations.append(obs)
        ep.actions.append(clean)
        ep.goals.append(env.goal_position.copy())
        obs, done, _ = env.step(expert.noisy(clean, env.config.max_step))
    ep.success = env.success
    if ep.success:
        ep.success_length = len(ep.actions)
        for _ in range(hold_after_success):
            clean = expert.act(env)
            if keep_observations:
                ep.observations.append(obs)
            ep.actions.append(clean)
            ep.goals.append(env.goal_position.copy())
            obs = env.step_after_success(expert.noisy(clean, env.config.max_step))
    return ep
