"""The control side of asynchronous execution: which action the robot executes at each tick.

`ActionTimeline` holds the chunk being executed, pinned to absolute ticks: row i of a chunk runs at tick
`base + i`. With alignment `base` is the tick the chunk was planned from, so the actions that elapsed during
inference are skipped, never replayed; without it `base` is the tick the chunk arrived (the LeRobot-async
failure mode: actions planned for an older observation run late). Ticks must increase, so no row of any
chunk runs twice or out of order. `ActionEmitter` turns the row into a raw action through the same safety
guard as the synchronous runtime: the robot never gets nothing, never anything unsafe.

Re-anchoring (`ActionEmitter(reanchor=True)`, for *displacement* action spaces only): a chunk of displacements
planned from tick k describes positions relative to where the robot was at k. Skipping its first d rows
assumes the robot moved as those rows say while it executed the old plan; when it did not (the old plan had
already stopped, or turned elsewhere), the difference — the sum of the skipped rows minus the sum of the
actions really sent in those ticks — is the motion the new plan still expects. The emitter adds it over the
next max(d, 3) rows (at most the rows the chunk has left) on a rising ramp, never pushing a row outside the
action bounds (what they cut is carried on until spent or the chunk ends), so the catch-up does not start
with a jump at the seam and never turns an in-bounds row into a fallback. With absolute actions (joint targets)
skipping is already right: leave it off.

Seam slew limit (`slew=k`): the new chunk's first rows may still disagree with the action the robot is executing
(the two plans were made from different observations). The emitted action then moves toward the row by at most
max(k × the plans' mean row-to-row step, SLEW_FLOOR × the bounds' diagonal) per tick, starting from the last
action delivered to the robot (what `emit` returned, corrected by the caller's `delivered` reports) — across empty
ticks, fallbacks and chunk boundaries; only `reset` (a new episode) drops it. With re-anchoring what the
limit holds back stays in the residual, so the robot still ends where the plan means; with absolute actions
nothing needs carrying (the next row is a whole target again). A row out of bounds is clipped first when the
guard clips (`out_of_bounds="clip"`); non-finite rows and `"fallback"` mode are never limited: the guard decides.
"""

from __future__ import annotations

import threading
from collections import deque
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
    # the executing plan itself, refined (not a new plan; `planned_tick` = the tick passed to `executing()`):
    # spliced into the executing chunk, never a fresh one for the emitter (`ActionTimeline.install`)
    continues: bool = False


@dataclass(frozen=True)
class TimelineTick:
    """What the timeline gave for one tick: the normalised row (None when nothing is queued) and its origin."""

    tick: int
    row: np.ndarray | None
    chunk_id: int  # -1 when nothing is queued
    index: int  # row index within the chunk, -1 when nothing is queued
    skipped: np.ndarray | None = None  # first take of an aligned chunk: its rows that elapsed during inference
    rows_left: int = 0  # rows of this chunk from this tick on, this one included (read under the same lock)
    chunk: np.ndarray | None = None  # first take of a chunk: all its rows (the emitter's step scale)


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
            self._fresh = False
            self._last_tick = -1
            self.counters = TimelineCounters()

    @property
    def next_tick(self) -> int:
        """The first tick whose action has not been taken yet."""
        return self._last_tick + 1

    def install(self, chunk: TimedChunk) -> bool:
        """Make `chunk` the executing plan from the next untaken tick on; False when it is entirely stale.

        A continuation (`chunk.continues`: the executing plan refined, its row 0 being the row `executing()`
        gave for `planned_tick`) is spliced into the executing chunk at that row: base, id and the fresh
        flag stay, so a fresh chunk not taken yet keeps its skipped rows (re-anchoring) and nothing shifts
        when chunks are pinned to their arrival (`align=False`)."""
        with self._lock:
            now = self._last_tick + 1
            if chunk.continues:
                return self._splice(chunk, now)
            base = chunk.planned_tick if self.align else now
            first = now - base
            if first >= len(chunk.actions):
                self.counters.stale_chunks += 1
                return False
            self._actions, self._base, self._chunk_id = chunk.actions, base, chunk.chunk_id
            self._fresh = True
            self.counters.chunks_installed += 1
            self.counters.skipped_actions += max(first, 0)
            return True

    def _splice(self, chunk: TimedChunk, now: int) -> bool:
        """Install a continuation (lock held): the executing rows before its first one, then its rows."""
        if self._actions is None:
            self.counters.stale_chunks += 1
            return False
        at = max(chunk.planned_tick - self._base, 0)  # as `executing()` clamps
        rows = np.concatenate([self._actions[:at], chunk.actions])
        if now - self._base >= len(rows):
            self.counters.stale_chunks += 1
            return False
        self._actions = rows
        self.counters.chunks_installed += 1
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
            skipped = self._actions[:i] if self._fresh else None
            self._fresh = False
            return TimelineTick(tick, self._actions[i], self._chunk_id, i, skipped, len(self._actions) - i,
                                self._actions if skipped is not None else None)

    def executing(self, tick: int) -> tuple[np.ndarray | None, int]:
        """(rows the plan runs from `tick` on, rows of it already run before `tick`) — the planner's view."""
        with self._lock:
            if self._actions is None:
                return None, 0
            i = max(tick - self._base, 0)
            rows = self._actions[i:]
            return (rows if len(rows) else None), i


def slew_step(prev: np.ndarray, wanted: np.ndarray, limit: float) -> np.ndarray:
    """`wanted`, or the point `limit` (L2) from `prev` on the way to it: on the segment, so inside any box
    that holds both ends."""
    delta = wanted - prev
    norm = float(np.linalg.norm(delta))
    if not np.isfinite(norm) or norm <= limit:
        return wanted
    return (prev + delta * (limit / norm)).astype(wanted.dtype)


SLEW_FLOOR = 0.1  # the slew limit never goes below this fraction of the bounds' diagonal: a near-constant plan
# (step scale ~0) would otherwise freeze the robot at a seam

MIN_RAMP = 3  # re-anchoring spreads a catch-up over at least this many rows (a 1-tick delay: no single-row jump)


def _ramp(d: int) -> list[float]:
    """Fractions of the *remaining* residual to add on each of the next d rows so that the amounts added rise
    as 1, 2, …, d (their sum is the whole residual when the bounds cut nothing)."""
    w = np.arange(1, max(d, 1) + 1, dtype=np.float64)
    left = np.cumsum(w[::-1])[::-1]  # weight still to come, this row included
    return list(w / left)


class ActionEmitter:
    """Timeline row → raw, safe action: unnormalise as the policy does, then a control-side `ActionGuard`
    (the worker's policy keeps its own, so no guard state is shared between threads)."""

    def __init__(self, policy: EdgePolicy, timeline: ActionTimeline, reanchor: bool = False,
                 slew: float | None = None):
        if slew is not None and not (np.isfinite(slew) and slew > 0):
            raise ValueError(f"slew must be a positive multiple of the plans' row step (or None), got {slew!r}")
        self.timeline = timeline
        self.reanchor = bool(reanchor)
        self.slew = None if slew is None else float(slew)
        self.unnormalize = policy.unnormalize
        g = policy.guard
        self.guard = ActionGuard(policy.manifest.action_bounds, policy.manifest.stop_action, g.fallback_mode,
                                 g.out_of_bounds, g.stop_dims)
        self.fallbacks = 0
        self.clipped = 0
        self.last: TimelineTick | None = None
        self.residual: np.ndarray | None = None  # re-anchoring: displacement the current chunk still expects
        self._ramp: list[float] = []  # re-anchoring: fractions of the residual still to add, one per row
        self._sent: deque[tuple[int, np.ndarray]] = deque(maxlen=256)  # (tick, raw action sent)
        self._step_sum, self._step_n = 0.0, 0  # slew: row-to-row steps of this episode's plans (raw units)

    def reset(self) -> None:
        self.guard.reset()
        self.residual = None
        self._ramp = []
        self._sent.clear()
        self._step_sum, self._step_n = 0.0, 0

    def emit(self, tick: int, hold_empty: bool = False) -> np.ndarray | None:
        """The safe raw action for `tick`: its plan row through the guard, or the guard's fallback when no row is
        queued — or, with `hold_empty`, None then (the caller sends nothing, so nothing is recorded as sent:
        re-anchoring must not count motion the robot never made); None too when the guard has no safe target."""
        taken = self.timeline.take(tick)
        if taken.row is None and hold_empty:
            self.last = taken  # nothing sent: the slew limit still starts from the last action delivered
            return None
        planned = None if taken.row is None else self.unnormalize(taken.row)
        if planned is not None and self.slew is not None and self.guard.out_of_bounds == "clip" \
                and np.isfinite(planned).all():
            planned = np.clip(planned, self.guard.low, self.guard.high)  # the guard would clip it: limit what goes out
        wanted, catching_up = planned, False
        if planned is not None and taken.chunk is not None and self.slew is not None:
            self._learn_step(taken.chunk)
        if self.reanchor and planned is not None:
            if taken.skipped is not None:  # a chunk's first executed row: what did the robot do meanwhile?
                self.residual = self._deficit(taken)
                self._ramp = _ramp(max(1, min(max(len(taken.skipped), MIN_RAMP), taken.rows_left)))
            elif self.residual is None:
                self.residual = np.zeros_like(planned)
            share = self._ramp.pop(0) if self._ramp else 1.0  # after the ramp: whatever the bounds cut before
            low, high = self.guard.low, self.guard.high
            if self._valid(planned):
                # the catch-up may use the room the bounds leave, never more: it must not turn a valid row
                # into a fallback (out_of_bounds="fallback") or be clipped away unseen
                wanted = planned + np.clip(self.residual * share, low - planned, high - planned)
                wanted = self._limit(wanted)
                catching_up = True
        elif self.slew is not None and planned is not None and self._valid(planned):
            wanted = self._limit(planned)  # absolute targets: the next row is the whole target again, no carry
        res = self.guard.check(wanted)
        if catching_up and not res.fallback:
            self.residual = self.residual - (res.action - planned)  # what the bounds let through is spent
        self.fallbacks += res.fallback
        self.clipped += res.clipped
        self.last = taken
        if res.action is not None:  # None: the guard had no safe target (position dims, nothing passed yet)
            self._sent.append((tick, res.action))
        return res.action

    def delivered(self, tick: int, action: np.ndarray | None) -> None:
        """What the robot really got for `tick`, when it differs from what `emit` returned: None (the send
        failed or a later check refused it), the action a later check clipped, or — on a tick `emit` answered
        None — what the caller sent instead (the stop a velocity robot gets when its plan runs dry). Re-anchoring
        and the slew limit then count the robot's real motion, not the plan's."""
        if action is not None and self.last is not None and self.last.tick == tick and \
                (not self._sent or self._sent[-1][0] != tick):  # `emit` sent nothing for this tick: the caller did
            a = np.asarray(action, dtype=self.guard.low.dtype).reshape(self.guard.low.shape)
            if np.all(np.isfinite(a)):
                self._sent.append((tick, a.copy()))
            return
        if not self._sent or self._sent[-1][0] != tick:
            return  # nothing was recorded for this tick (`hold_empty`), or it is not the last one emitted
        if action is None:
            self._sent.pop()  # the robot did not get it: the slew limit starts from the one before again
            return
        got = np.array(action, dtype=self._sent[-1][1].dtype).reshape(self._sent[-1][1].shape)
        if not np.array_equal(got, self._sent[-1][1]):
            self._sent[-1] = (tick, got)

    @property
    def last_delivered(self) -> np.ndarray | None:
        """The last action the robot got this episode (where the slew limit starts); None before any."""
        return self._sent[-1][1] if self._sent else None

    def _valid(self, planned: np.ndarray) -> bool:
        """A finite row inside the bounds: the only kind re-anchoring or the slew limit may change."""
        return bool(np.isfinite(planned).all() and ((planned >= self.guard.low) & (planned <= self.guard.high)).all())

    def _learn_step(self, chunk: np.ndarray) -> None:
        """Add this chunk's row-to-row steps to the episode's scale: finite rows only, clipped into the bounds
        first (the guard clips them so; one wild row must not switch the limit off for the episode)."""
        rows = self.unnormalize(chunk).astype(np.float64)
        rows = rows[np.all(np.isfinite(rows), axis=1)]
        if len(rows) < 2:
            return
        steps = np.linalg.norm(np.diff(np.clip(rows, self.guard.low, self.guard.high), axis=0), axis=1)
        self._step_sum += float(steps.sum())
        self._step_n += int(steps.size)

    def _limit(self, wanted: np.ndarray) -> np.ndarray:
        """Move from the last action delivered toward `wanted` by at most max(slew × mean plan row step,
        SLEW_FLOOR × the bounds' diagonal) (L2); unlimited before anything was delivered this episode or a plan
        step is known. Both ends lie within the bounds, so the result does too."""
        start = self.last_delivered
        if self.slew is None or start is None or self._step_n == 0:
            return wanted
        floor = SLEW_FLOOR * float(np.linalg.norm(self.guard.high - self.guard.low))
        return slew_step(start, wanted, max(self.slew * self._step_sum / self._step_n, floor))

    def _deficit(self, taken: TimelineTick) -> np.ndarray:
        """Sum of the skipped rows (raw) minus the sum of the actions sent in the ticks they stood for."""
        first = taken.tick - taken.index
        expected = self.unnormalize(taken.skipped).sum(axis=0, dtype=np.float64)
        sent = sum((a for t, a in self._sent if first <= t < taken.tick), np.zeros_like(self.guard.low))
        deficit = (expected - sent).astype(np.float32)
        return deficit if np.all(np.isfinite(deficit)) else np.zeros_like(deficit)  # never a NaN catch-up
