"""The control side of asynchronous execution: which action the robot executes at each tick.

`ActionTimeline` holds the chunk being executed, pinned to absolute ticks: row i of a chunk runs at tick
`base + i`. With alignment `base` is the tick the chunk was planned from, so the actions that elapsed during
inference are skipped, never replayed; without it `base` is the tick the chunk arrived (the LeRobot-async
failure mode: actions planned for an older observation run late). Ticks must increase, so no row of any
chunk runs twice or out of order. `ActionEmitter` turns the row into a raw action through the same safety
guard as the synchronous runtime: the robot never gets nothing, never anything unsafe.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields

import numpy as np

from runtime.policy import EdgePolicy
from runtime.safety import ActionGuard


@dataclass(frozen=True)
class TimedChunk:
    """A normalised chunk [T, max_action_dim] planned from the observation of `planned_tick`."""

    planned_tick: int
    actions: np.ndarray
    chunk_id: int


@dataclass(frozen=True)
class TimelineTick:
    """What the timeline gave for one tick: the normalised row (None when nothing is queued) and its origin."""

    tick: int
    row: np.ndarray | None
    chunk_id: int  # -1 when nothing is queued
    index: int  # row index within the chunk, -1 when nothing is queued


@dataclass
class TimelineCounters:
    ticks: int = 0
    chunks_installed: int = 0
    skipped_actions: int = 0  # rows that elapsed during inference (aligned mode) and were never executed
    stale_chunks: int = 0  # chunks that arrived with every row already elapsed (dropped, old plan kept)
    empty_ticks: int = 0  # ticks with no queued row (the emitter sends the safety fallback)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class ActionTimeline:
    """Thread-safe: the worker installs chunks while the control loop takes one row per tick."""

    def __init__(self, align: bool = True):
        self.align = bool(align)
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._actions: np.ndarray | None = None
            self._base = 0
            self._chunk_id = -1
            self._last_tick = -1
            self.counters = TimelineCounters()

    @property
    def next_tick(self) -> int:
        """The first tick whose action has not been taken yet."""
        return self._last_tick + 1

    def install(self, chunk: TimedChunk) -> bool:
        """Make `chunk` the executing plan from the next untaken tick on; False when it is entirely stale."""
        with self._lock:
            now = self._last_tick + 1
            base = chunk.planned_tick if self.align else now
            first = now - base
            if first >= len(chunk.actions):
                self.counters.stale_chunks += 1
                return False
            self._actions, self._base, self._chunk_id = chunk.actions, base, chunk.chunk_id
            self.counters.chunks_installed += 1
            self.counters.skipped_actions += max(first, 0)
            return True

    def take(self, tick: int) -> TimelineTick:
        """The row for `tick` (ticks must increase; a skipped tick's row is skipped, never replayed later)."""
        with self._lock:
            if tick <= self._last_tick:
                raise ValueError(f"tick {tick} was already taken (last tick {self._last_tick}); ticks must increase")
            self._last_tick = tick
            self.counters.ticks += 1
            i = tick - self._base
            if self._actions is None or not 0 <= i < len(self._actions):
                self.counters.empty_ticks += 1
                return TimelineTick(tick, None, -1, -1)
            return TimelineTick(tick, self._actions[i], self._chunk_id, i)

    def executing(self, tick: int) -> tuple[np.ndarray | None, int]:
        """(rows the plan runs from `tick` on, rows of it already run before `tick`) — the planner's view."""
        with self._lock:
            if self._actions is None:
                return None, 0
            i = max(tick - self._base, 0)
            rows = self._actions[i:]
            return (rows if len(rows) else None), i


class ActionEmitter:
    """Timeline row → raw, safe action: unnormalise as the policy does, then a control-side `ActionGuard`
    (the worker's policy keeps its own, so no guard state is shared between threads)."""

    def __init__(self, policy: EdgePolicy, timeline: ActionTimeline):
        self.timeline = timeline
        self.unnormalize = policy.unnormalize
        g = policy.guard
        self.guard = ActionGuard(policy.manifest.action_bounds, policy.manifest.stop_action, g.fallback_mode,
                                 g.out_of_bounds)
        self.fallbacks = 0
        self.clipped = 0
        self.last: TimelineTick | None = None

    def reset(self) -> None:
        self.guard.reset()

    def emit(self, tick: int) -> np.ndarray:
        taken = self.timeline.take(tick)
        res = self.guard.check(None if taken.row is None else self.unnormalize(taken.row))
        self.fallbacks += res.fallback
        self.clipped += res.clipped
        self.last = taken
        return res.action
