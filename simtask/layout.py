"""Deterministic scene sampling: disc positions/colours, agent start, instruction, perturbation.

Everything random about an episode except where the goal jumps is drawn up front, in a fixed order,
so a seed fixes the scene regardless of the ``perturb``/``swap`` switches. The jump destination is
drawn at the jump (it must keep clear of the agent) from its own seed-derived stream, so it depends
only on the seed and the agent's position then.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from simtask.config import TaskConfig

_MAX_TRIES = 2000


@dataclass(frozen=True)
class Scene:
    """One episode's fixed content. ``goal_index`` is the disc that counts for success (and jumps)."""

    target_positions: np.ndarray  # float64 [n_targets, 2]
    target_colors: tuple[str, ...]
    agent_start: np.ndarray  # float64 [2]
    goal_index: int
    instruction_index: int  # == goal_index unless the instruction was swapped
    perturb_tick: int


def _far_from(point: np.ndarray, others: np.ndarray, min_dist: float) -> bool:
    return others.size == 0 or bool(np.all(np.linalg.norm(others - point, axis=1) >= min_dist))


def _keeps_clear(rules: list[tuple[np.ndarray, float]]) -> Callable[[np.ndarray], bool]:
    """Predicate: a point is at least ``d`` from every point of each (points, d) rule."""
    return lambda p: all(_far_from(p, pts, d) for pts, d in rules)


def _sample_targets(rng: np.random.Generator, cfg: TaskConfig) -> np.ndarray:
    lo, hi = cfg.target_low, cfg.target_high
    for _ in range(_MAX_TRIES):
        placed: np.ndarray = np.zeros((0, 2))
        for _ in range(cfg.n_targets):
            for _ in range(200):
                p = rng.uniform(lo, hi, size=2)
                if _far_from(p, placed, cfg.min_separation):
                    placed = np.vstack([placed, p])
                    break
        if len(placed) == cfg.n_targets:
            return placed
    raise ValueError(f"TaskConfig.min_separation={cfg.min_separation}: cannot place {cfg.n_targets} discs")


def _sample_point(
    rng: np.random.Generator, lo: float, hi: float, ok: Callable[[np.ndarray], bool]
) -> np.ndarray | None:
    """First uniform point in [lo, hi]^2 that satisfies ``ok`` (None after _MAX_TRIES)."""
    for _ in range(_MAX_TRIES):
        p = rng.uniform(lo, hi, size=2)
        if ok(p):
            return p
    return None


def sample_scene(
    seed: int,
    cfg: TaskConfig,
    instruction_target: int | None = None,
    swap_instruction: bool = False,
) -> Scene:
    """Draw the scene for ``seed``. ``instruction_target`` fixes the goal disc (None = random);
    ``swap_instruction`` keeps the scene and goal but makes the instruction name another disc."""
    n = cfg.n_targets
    if instruction_target is not None and not (
        isinstance(instruction_target, (int, np.integer)) and 0 <= instruction_target < n
    ):
        raise ValueError(f"instruction_target must be None or an int in [0, {n}) (got {instruction_target!r})")
    if swap_instruction and n < 2:
        raise ValueError("swap_instruction needs TaskConfig.n_targets >= 2")
    rng = np.random.default_rng(seed)
    for _ in range(_MAX_TRIES):
        targets = _sample_targets(rng, cfg)
        start = _sample_point(rng, 0.05, 0.95, _keeps_clear([(targets, cfg.start_clearance)]))
        if start is not None:
            break
    else:
        raise ValueError(f"TaskConfig.start_clearance={cfg.start_clearance}: no room for the agent start")
    color_ids = rng.permutation(len(cfg.colors))[:n]
    colors = tuple(cfg.colors[int(i)] for i in color_ids)
    # Always draw every quantity (used or not) so the stream, hence the scene, never depends on flags.
    drawn_goal = int(rng.integers(n))
    swap_offset = int(rng.integers(1, n)) if n > 1 else 0
    tick = int(rng.integers(cfg.perturb_window[0], cfg.perturb_window[1] + 1))
    goal = drawn_goal if instruction_target is None else int(instruction_target)
    instruction_index = (goal + swap_offset) % n if swap_instruction else goal
    return Scene(targets, colors, start, goal, instruction_index, tick)


def sample_jump(seed: int, cfg: TaskConfig, positions: np.ndarray, goal: int, agent: np.ndarray) -> np.ndarray:
    """New centre for disc ``goal``: >= min_jump from its old centre, >= jump_clearance from the
    agent, >= min_separation from the other discs. Falls back to relaxing the agent clearance, then
    the jump length, rather than failing (never needed with the default config)."""
    rng = np.random.default_rng([int(seed), 0x6A756D70])
    old = positions[goal]
    others = np.delete(positions, goal, axis=0)
    for clearance, jump in ((cfg.jump_clearance, cfg.min_jump), (0.0, cfg.min_jump), (0.0, 0.0)):
        p = _sample_point(
            rng,
            cfg.target_low,
            cfg.target_high,
            _keeps_clear([(old[None], jump), (agent[None], clearance), (others, cfg.min_separation)]),
        )
        if p is not None:
            return p
    raise ValueError(f"TaskConfig.min_separation={cfg.min_separation}: no room to move the target")
