"""Closed-loop evaluation of any policy object with ``reset()`` and ``act(obs) -> action``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from simtask.config import TaskConfig
from simtask.reach_env import ReachEnv
from simtask.seeding import episode_seeds


class Policy(Protocol):
    def reset(self) -> None: ...

    def act(self, obs: dict[str, Any]) -> np.ndarray | None: ...  # None: nothing sent this tick (the agent stays)


@dataclass(frozen=True)
class EpisodeResult:
    """Outcome of one evaluation episode (``seed`` reproduces its scene with ``ReachEnv.reset``)."""

    seed: int
    success: bool
    steps: int  # env steps taken (== ticks_to_success when successful)
    perturb_tick: int | None  # step at which the goal jumped; None if unperturbed
    ticks_to_success: int | None  # steps from the start to success; None on failure
    recovery_ticks: int | None  # steps from the jump to success; None if unperturbed or failed
    instruction: str
    target_index: int  # disc that counted for success
    instruction_index: int  # disc the instruction named (differs when swapped)
    final_distance: float
    act_seconds: float  # total wall time spent inside policy.act


@dataclass(frozen=True)
class EvalReport:
    """Aggregate of an evaluation run; ``as_dict()`` is JSON-serialisable."""

    success_rate: float
    n_episodes: int
    seed: int
    perturb: bool
    swap_instruction: bool
    config: TaskConfig
    episodes: tuple[EpisodeResult, ...] = field(repr=False)

    @property
    def mean_ticks_to_success(self) -> float | None:
        vals = [e.ticks_to_success for e in self.episodes if e.ticks_to_success is not None]
        return float(np.mean(vals)) if vals else None

    @property
    def mean_recovery_ticks(self) -> float | None:
        vals = [e.recovery_ticks for e in self.episodes if e.recovery_ticks is not None]
        return float(np.mean(vals)) if vals else None

    @property
    def mean_act_ms(self) -> float | None:
        steps = sum(e.steps for e in self.episodes)
        return 1000.0 * sum(e.act_seconds for e in self.episodes) / steps if steps else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "success_rate": self.success_rate,
            "n_episodes": self.n_episodes,
            "seed": self.seed,
            "perturb": self.perturb,
            "swap_instruction": self.swap_instruction,
            "mean_ticks_to_success": self.mean_ticks_to_success,
            "mean_recovery_ticks": self.mean_recovery_ticks,
            "mean_act_ms": self.mean_act_ms,
            "config": self.config.to_dict(),
            "episodes": [asdict(e) for e in self.episodes],
        }


def run_episode(env: ReachEnv, policy: Policy, seed: int, perturb: bool, swap_instruction: bool) -> EpisodeResult:
    """One closed-loop episode of ``policy`` in ``env``."""
    obs = env.reset(seed=seed, perturb=perturb, swap_instruction=swap_instruction)
    policy.reset()
    act_seconds = 0.0
    done = False
    info: dict[str, Any] = {"distance": float(np.linalg.norm(env.agent_position - env.goal_position))}
    while not done:
        t0 = time.perf_counter()
        action = policy.act(obs)
        act_seconds += time.perf_counter() - t0
        obs, done, info = env.step(action)
    tick = env.perturb_tick
    ok = env.success
    return EpisodeResult(
        seed=seed,
        success=ok,
        steps=env.t,
        perturb_tick=tick,
        ticks_to_success=env.t if ok else None,
        recovery_ticks=(env.t - tick) if (ok and tick is not None) else None,
        instruction=env.instruction,
        target_index=env.target_index,
        instruction_index=env.instruction_index,
        final_distance=float(info["distance"]),
        act_seconds=act_seconds,
    )


def evaluate_policy(
    policy: Policy,
    n_episodes: int = 50,
    seed: int = 0,
    perturb: bool = False,
    swap_instruction: bool = False,
    config: TaskConfig | None = None,
    on_episode: Callable[[EpisodeResult], None] | None = None,
) -> EvalReport:
    """Run ``n_episodes`` scenes from the 'eval' seed stream of ``seed``.

    ``swap_instruction=True`` shows the same scenes (same seed) but the instruction names another
    disc while success is still measured on the originally named one: a policy that follows
    language scores near 0, one that ignores it keeps its score.
    """
    if not (isinstance(n_episodes, int) and n_episodes >= 1):
        raise ValueError(f"evaluate_policy: n_episodes must be an int >= 1 (got {n_episodes!r})")
    for name in ("reset", "act"):
        if not callable(getattr(policy, name, None)):
            raise TypeError(f"evaluate_policy: policy needs a callable {name}()")
    cfg = config if config is not None else TaskConfig()
    env = ReachEnv(cfg)
    results = []
    for s in episode_seeds(seed, n_episodes, stream="eval"):
        res = run_episode(env, policy, s, perturb, swap_instruction)
        results.append(res)
        if on_episode is not None:
            on_episode(res)
    rate = sum(r.success for r in results) / len(results)
    return EvalReport(rate, n_episodes, seed, perturb, swap_instruction, cfg, tuple(results))
