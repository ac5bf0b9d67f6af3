"""The initial noise of a resample: the test hook `next_noise`, a caller's `noise_fn`, else the policy's generator."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def draw_noise(shape: tuple[int, ...], rng: np.random.Generator, given: np.ndarray | None = None,
               noise_fn: Callable[[tuple[int, ...], np.random.Generator], np.ndarray] | None = None) -> np.ndarray:
    """float32 noise of `shape`: `given` (its size must match; ValueError otherwise), else `noise_fn(shape, rng)`,
    else standard normal from `rng`."""
    if given is not None:
        noise = np.asarray(given, dtype=np.float32)
        if noise.size != int(np.prod(shape)):
            raise ValueError(f"next_noise has shape {noise.shape}, expected {shape}")
        return noise.reshape(shape)
    if noise_fn is not None:
        return np.asarray(noise_fn(shape, rng), dtype=np.float32).reshape(shape)
    return rng.standard_normal(shape, dtype=np.float32)
