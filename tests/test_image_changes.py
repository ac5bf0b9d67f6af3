"""simtask.image_changes is the one definition of an irrelevant image change: the benchmark's schedules use its
BENCHMARK ranges (with the draws the benchmark always made, so its seeds give the same episodes), training
samples a superset of them, and both render through the same level arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from simtask import image_changes as ic
from simtask.config import TaskConfig
from simtask.events import EPISODE_KINDS, sample_schedule
from smolvla_cls.irrelevant_changes import random_change


def _draws(seeds, kinds):
    cfg = TaskConfig()
    return [c for s in seeds for k in kinds for c in sample_schedule(s, k, cfg)]


def test_training_ranges_are_a_superset_of_the_benchmark_ones():
    assert ic.TRAINING.contains(ic.BENCHMARK) and not ic.BENCHMARK.contains(ic.TRAINING)
    assert not ic.TRAINING.contains(ic.ChangeRanges((5.0, 30.0), (4.0, 8.0), (12.0, 20.0)))


def test_benchmark_schedules_stay_within_the_benchmark_ranges():
    r = ic.BENCHMARK
    changes = _draws(range(200), EPISODE_KINDS)
    lights = [c.offset for c in changes if c.type == "lighting"]
    noises = [c for c in changes if c.type == "noise"]
    assert lights and noises
    for o in lights:
        mags = np.abs(o)
        if o[0] == o[1] == o[2]:  # brightness
            assert r.brightness[0] <= mags[0] <= r.brightness[1]
        else:
            assert all(r.colour[0] <= m <= r.colour[1] for m in mags)
    assert all(r.noise_std[0] <= c.noise_std <= r.noise_std[1] for c in noises)
    assert all(r.noise_ticks[0] <= c.duration < r.noise_ticks[1] for c in noises)


# recorded from simtask.events before the ranges moved to simtask.image_changes (seed 3)
PINNED_LIGHTING = [5.793663, -5.132909, -6.799874]
PINNED_NOISE = [(21, 5, 12.596647), (29, 4, 12.788941)]


def test_benchmark_schedule_is_the_pinned_one():
    """The benchmark's seeds/kinds give the same episodes as before the move (same draws, same order)."""
    cfg = TaskConfig()
    (light,) = sample_schedule(3, "lighting", cfg)
    assert [round(v, 6) for v in light.offset] == PINNED_LIGHTING
    assert [(c.tick, c.duration, round(c.noise_std, 6)) for c in sample_schedule(3, "noise", cfg)] == PINNED_NOISE


def test_training_augmentation_draws_from_the_training_ranges():
    rng = np.random.default_rng(0)
    img = np.full((3, 8, 8), 0.5, dtype=np.float32)  # mid grey: offsets are not clipped
    for _ in range(200):
        out = random_change(img, 1.0, rng)
        delta = (out - img) * ic.FULL_SCALE
        if np.allclose(delta, delta[:, :1, :1], atol=1e-3):  # brightness or colour: one offset per channel
            mags = np.abs(delta[:, 0, 0])
            lo = min(ic.TRAINING.brightness[0], ic.TRAINING.colour[0])
            hi = max(ic.TRAINING.brightness[1], ic.TRAINING.colour[1])
            assert np.all((mags >= lo - 1e-3) & (mags <= hi + 1e-3)), mags
        else:  # noise
            assert ic.TRAINING.noise_std[0] * 0.7 <= delta.std() <= ic.TRAINING.noise_std[1] * 1.3


def test_shift_levels_agrees_between_uint8_and_unit_scales():
    img = np.random.default_rng(1).integers(0, 256, size=(6, 6, 3)).astype(np.float64)
    off = (7.0, -5.0, 3.0)
    levels = ic.shift_levels(img, off, 15.0, np.random.default_rng(2))
    unit = ic.shift_levels(img / 255.0, off, 15.0, np.random.default_rng(2), full_scale=1.0)
    np.testing.assert_allclose(unit * 255.0, levels, atol=1e-9)
    with pytest.raises(ValueError, match="noise_rng"):
        ic.shift_levels(img, off, 1.0, None)
