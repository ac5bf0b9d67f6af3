"""The one definition of an *irrelevant* image change (the action must not depend on it): a global brightness
offset, a per-channel colour cast, or a burst of Gaussian sensor noise, all in 8-bit levels.

Two users draw from here so that what training teaches obs-CLS to ignore and what the gate benchmark scores
are the same kind of change:
- the gate benchmark (`simtask.events` schedules, `simtask.bench_env` renders) and the obs-CLS drift
  measurement (`scripts/act_cls_wiring.py --drift`) draw from `BENCHMARK`: THE definition, whose numbers
  docs/11-gate-benchmark.md reports;
- the training augmentation (`smolvla_cls.irrelevant_changes`, `train.py --irrelevant-augment P`) draws from
  `TRAINING`, a documented superset of `BENCHMARK` (every benchmark change is a possible training change;
  training also sees milder and stronger ones), checked by `contains`.
Numpy only: the runtime never imports this (it has no training and no benchmark).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FULL_SCALE = 255.0  # levels per unit of a float image in [0, 1]
KINDS = ("brightness", "colour", "noise")


@dataclass(frozen=True)
class ChangeRanges:
    """Magnitude ranges, uniform, in 8-bit levels; offsets get a random sign."""

    brightness: tuple[float, float]  # |offset| added to all three channels alike
    colour: tuple[float, float]  # |offset| per channel, drawn and signed independently
    noise_std: tuple[float, float]  # per-pixel, per-channel Gaussian sigma
    noise_ticks: tuple[int, int] = (3, 6)  # burst length in ticks, [lo, hi) (the benchmark's bursts)

    def contains(self, other: ChangeRanges) -> bool:
        """Whether every magnitude `other` can draw, this can draw too."""
        pairs = zip((self.brightness, self.colour, self.noise_std), (other.brightness, other.colour,
                                                                     other.noise_std))
        return all(a[0] <= b[0] and b[1] <= a[1] for a, b in pairs)


# Small on purpose: the default model (trained on one lighting) already fails on some +-10-level shifts, and at
# +-25-40 levels it failed most episodes (docs/11-gate-benchmark.md).
BENCHMARK = ChangeRanges(brightness=(5.0, 10.0), colour=(4.0, 8.0), noise_std=(12.0, 20.0))
TRAINING = ChangeRanges(brightness=(2.0, 20.0), colour=(2.0, 16.0), noise_std=(6.0, 24.0))


def brightness_offset(rng: np.random.Generator, ranges: ChangeRanges = BENCHMARK) -> tuple[float, float, float]:
    """One signed level added to R, G and B."""
    level = float(rng.uniform(*ranges.brightness)) * (1 if rng.random() < 0.5 else -1)
    return (level, level, level)


def colour_offset(rng: np.random.Generator, ranges: ChangeRanges = BENCHMARK) -> tuple[float, float, float]:
    """Three independently drawn and signed per-channel levels."""
    v = rng.uniform(*ranges.colour, size=3) * rng.choice([-1, 1], size=3)
    return (float(v[0]), float(v[1]), float(v[2]))


def lighting_offset(rng: np.random.Generator, ranges: ChangeRanges = BENCHMARK) -> tuple[float, float, float]:
    """The benchmark's `lighting` change: brightness or colour cast, even odds."""
    return brightness_offset(rng, ranges) if rng.random() < 0.5 else colour_offset(rng, ranges)


def noise_std(rng: np.random.Generator, ranges: ChangeRanges = BENCHMARK) -> float:
    return float(rng.uniform(*ranges.noise_std))


def noise_ticks(rng: np.random.Generator, ranges: ChangeRanges = BENCHMARK) -> int:
    return int(rng.integers(*ranges.noise_ticks))


def shift_levels(img: np.ndarray, offset: np.ndarray | tuple[float, ...], std: float,
                 noise_rng: np.random.Generator | None, channel_axis: int = -1,
                 full_scale: float = FULL_SCALE) -> np.ndarray:
    """`img` (float, `full_scale` = white) plus a per-channel `offset` and Gaussian noise of `std`, both in
    levels, unclipped; `noise_rng` may be None when `std` is 0."""
    shape = [1] * img.ndim
    shape[channel_axis] = img.shape[channel_axis]
    out = img + np.asarray(offset, dtype=np.float64).reshape(shape) * (full_scale / FULL_SCALE)
    if std > 0.0:
        if noise_rng is None:
            raise ValueError("shift_levels: noise std > 0 needs a noise_rng")
        out = out + noise_rng.normal(0.0, std * full_scale / FULL_SCALE, size=img.shape)
    return out


def perturb_float(img: np.ndarray, kind: str, rng: np.random.Generator, ranges: ChangeRanges = TRAINING,
                  channel_axis: int = -3) -> np.ndarray:
    """`img` float in [0, 1] with channels on `channel_axis`, under one change of `kind` drawn from `ranges`;
    clipped to [0, 1], same dtype."""
    if kind == "brightness":
        out = shift_levels(img, brightness_offset(rng, ranges), 0.0, None, channel_axis, 1.0)
    elif kind == "colour":
        out = shift_levels(img, colour_offset(rng, ranges), 0.0, None, channel_axis, 1.0)
    elif kind == "noise":
        out = shift_levels(img, (0.0, 0.0, 0.0), noise_std(rng, ranges), rng, channel_axis, 1.0)
    else:
        raise ValueError(f"irrelevant change kind={kind!r}: expected one of {KINDS}")
    return np.clip(out, 0.0, 1.0).astype(img.dtype, copy=False)


def perturb_uint8_hwc(img: np.ndarray, kind: str, rng: np.random.Generator,
                      ranges: ChangeRanges = TRAINING) -> np.ndarray:
    """A simtask observation image (uint8 HWC) under `kind`, rounded back to uint8."""
    out = perturb_float(img.astype(np.float32) / 255.0, kind, rng, ranges, channel_axis=-1)
    return np.round(out * 255.0).astype(np.uint8)
