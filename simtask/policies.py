"""Reference policies that need only observations: a random baseline (the floor any trained
policy must beat) and a colour oracle that reads the image and the instruction (the ceiling for a
language-following policy; also a check that rendering and language agree)."""

from __future__ import annotations

from typing import Any

import numpy as np

from simtask.config import IMAGE_KEY, PALETTE, STATE_KEY, TaskConfig
from simtask.reach_env import clip_action


class RandomPolicy:
    """Uniform random displacement in the [-max_step, max_step] box."""

    def __init__(self, config: TaskConfig | None = None, seed: int | None = 0) -> None:
        self.config = config if config is not None else TaskConfig()
        self._seed = seed
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        m = self.config.max_step
        return self._rng.uniform(-m, m, size=2).astype(np.float32)


class ColorOraclePolicy:
    """Finds the pixels of the colour named in ``obs['task']`` and moves to their centroid."""

    def __init__(self, config: TaskConfig | None = None) -> None:
        self.config = config if config is not None else TaskConfig()

    def reset(self) -> None:
        pass

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        words = str(obs["task"]).split()
        colors = [w for w in words if w in PALETTE]
        if len(colors) != 1:
            raise ValueError(f"ColorOraclePolicy: no single colour word in task {obs['task']!r}")
        img = np.asarray(obs[IMAGE_KEY])
        mask = np.all(img == np.array(PALETTE[colors[0]], dtype=np.uint8), axis=-1)
        if not mask.any():
            return np.zeros(2, dtype=np.float32)
        rows, cols = np.nonzero(mask)
        size = img.shape[0]
        goal = np.array([(cols.mean() + 0.5) / size, (rows.mean() + 0.5) / size])
        return clip_action(goal - np.asarray(obs[STATE_KEY], dtype=np.float64), self.config.max_step).astype(np.float32)
