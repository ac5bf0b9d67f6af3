"""Scheduled scene changes for the gate benchmark: what changes, when, and whether it matters for the action.

A *relevant* change moves the goal disc (a jump, or a stretch of constant-velocity motion), so the scripted
expert's action changes and a queued plan goes stale. An *irrelevant* change alters the image but never the
goal: a non-goal disc jumps, the global brightness / colour shifts (persistent), or a burst of sensor noise; the
magnitudes of the last two are `simtask.image_changes.BENCHMARK` (shared with the training augmentation).
The schedule (kinds, ticks, durations, magnitudes) is drawn up front from the episode seed; where a moved
disc lands is drawn when it moves (it must keep clear of the agent), from a stream of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from simtask import image_changes
from simtask.config import TaskConfig

RELEVANT_KINDS = ("jump", "multi_jump", "moving")
IRRELEVANT_KINDS = ("distractor", "lighting", "noise")
EPISODE_KINDS = (*RELEVANT_KINDS, *IRRELEVANT_KINDS, "mixed")
CHANGE_TYPES = ("jump", "move", "distractor", "lighting", "noise")
RELEVANT_CHANGES = ("jump", "move")

# Salts for the per-episode random streams (kept distinct from simtask.layout's jump stream).
_SCHEDULE_SALT = 0x62656E63  # "benc"
_PLACE_SALT = 0x706C6163  # "plac"
NOISE_SALT = 0x6E6F6973  # "nois"


@dataclass(frozen=True)
class Change:
    """One scheduled change. ``tick`` is the env step whose observation first shows it; it acts for
    ``duration`` steps (a move or a noise burst), else once (persistent afterwards where that applies)."""

    tick: int
    type: str  # one of CHANGE_TYPES
    duration: int = 1
    speed: float = 0.0  # move: goal displacement per step
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)  # lighting: added to every pixel's RGB
    noise_std: float = 0.0  # noise: std of the Gaussian added per pixel and channel

    @property
    def relevant(self) -> bool:
        return self.type in RELEVANT_CHANGES

    @property
    def end(self) -> int:
        """Last step at which the change is still acting."""
        return self.tick + self.duration - 1


def _lighting(rng: np.random.Generator, tick: int) -> Change:
    return Change(tick, "lighting", offset=image_changes.lighting_offset(rng, image_changes.BENCHMARK))


def _noise(rng: np.random.Generator, tick: int) -> Change:
    r = image_changes.BENCHMARK
    return Change(tick, "noise", duration=image_changes.noise_ticks(rng, r), noise_std=image_changes.noise_std(rng, r))


def _distinct_ticks(rng: np.random.Generator, lo: int, hi: int, n: int, gap: int) -> list[int]:
    """``n`` sorted ticks in [lo, hi] at least ``gap`` apart (the window is widened if it is too small)."""
    hi = max(hi, lo + gap * (n - 1))
    for _ in range(1000):
        ticks = sorted(int(t) for t in rng.integers(lo, hi + 1, size=n))
        if all(b - a >= gap for a, b in pairwise(ticks)):
            return ticks
    return [lo + i * gap for i in range(n)]


def sample_schedule(seed: int, kind: str, cfg: TaskConfig) -> tuple[Change, ...]:
    """The changes of one benchmark episode of ``kind`` (one of EPISODE_KINDS), sorted by tick."""
    if kind not in EPISODE_KINDS:
        raise ValueError(f"episode kind must be one of {EPISODE_KINDS} (got {kind!r})")
    rng = np.random.default_rng([int(seed), _SCHEDULE_SALT, EPISODE_KINDS.index(kind)])
    lo, hi = cfg.perturb_window
    out: list[Change] = []
    if kind == "jump":
        out.append(Change(int(rng.integers(lo, hi + 1)), "jump"))
    elif kind == "multi_jump":
        n = int(rng.integers(2, 4))
        out += [Change(t, "jump") for t in _distinct_ticks(rng, lo - 2, hi, n, 6)]
    elif kind == "moving":
        out.append(Change(int(rng.integers(lo, hi - 8)), "move", duration=int(rng.integers(8, 13)),
                          speed=float(rng.uniform(0.025, 0.035))))
    elif kind == "distractor":
        out += [Change(t, "distractor") for t in _distinct_ticks(rng, lo, hi, int(rng.integers(1, 3)), 6)]
    elif kind == "lighting":
        out.append(_lighting(rng, int(rng.integers(lo, hi + 1))))
    elif kind == "noise":
        out += [_noise(rng, t) for t in _distinct_ticks(rng, lo, hi, int(rng.integers(1, 3)), 8)]
    else:  # mixed: one target jump among a distractor jump, a lighting shift and a noise burst
        ticks = _distinct_ticks(rng, lo - 2, hi + 4, 4, 4)
        order = rng.permutation(4)
        makers = (lambda t: Change(t, "jump"), lambda t: Change(t, "distractor"), lambda t: _lighting(rng, t),
                  lambda t: _noise(rng, t))
        out += [makers[int(i)](t) for i, t in zip(order, ticks)]
    return tuple(sorted(out, key=lambda c: c.tick))


def place_rng(seed: int, index: int) -> np.random.Generator:
    """The stream that decides where the ``index``-th moved disc of an episode lands (or which way it moves)."""
    return np.random.default_rng([int(seed), _PLACE_SALT, int(index)])
