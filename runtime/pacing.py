"""When each tick of `runtime robot`'s loop starts: a fixed grid (start + n x period) while the loop keeps up,
re-based after an overrun so that the robot never gets actions in a catch-up burst.

An overrun is a tick that ran past the next tick's slot (a camera read that hung, a resample on the loop
thread longer than a period). A purely absolute schedule then starts the
missed ticks back to back, and the robot gets their actions a fraction of a millisecond apart (a displacement
robot moves several steps at once, a position target jumps) while the reported rate still reads the target.
Here the next tick never starts sooner than lets its action go out one period (less `TOLERANCE`, for read and
sleep jitter) after the last one; where in a tick an action usually goes out (its lead) is the shortest
start-to-send time of the last `WINDOW` ticks, so the stalled tick itself does not raise it. The grid then
continues from there: the ticks after a stall keep the rate, the stall shows as one long period, and
`overruns` counts the ticks after which the grid moved. Should an action still be ready sooner than
(1 - TOLERANCE) periods after the last (the ticks before were all slow, so the usual lead was overestimated),
`sending()` holds it back until then: less than a period, the one hard bound on the spacing.

Tick numbers stay consecutive: a tick is one control step the robot executed, and during a stall it executed
none, so no plan row elapsed (the async timeline pins rows to ticks, runtime.timeline, and the planner
measures its delay in ticks). After a stall the plan continues where it stood; skipping tick numbers would
make the robot jump ahead in it (position targets) or lose the skipped rows' motion (displacements).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

TOLERANCE = 0.25  # of a period: how much closer than one period two actions may go out (jitter, not a stall)
WINDOW = 8  # ticks whose shortest start-to-send time is the usual lead


class Pacer:
    """Call `sending()` just before each action goes to the robot and `wait()` at the end of each tick."""

    def __init__(self, period_s: float, clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep):
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, got {period_s!r}")
        self.period, self.clock, self.sleep = float(period_s), clock, sleep
        self.overruns = 0  # ticks after which the grid was re-based (the next tick started late)
        self.tick_start = self.base = clock()  # the current tick's start; tick n of the grid starts at base + n·period
        self._n = 0  # ticks started since `base`
        self._leads: deque[float] = deque(maxlen=WINDOW)  # start-to-send time of the ticks before this one
        self._lead: float | None = None  # this tick's (None: nothing sent yet this tick)
        self._sent_at: float | None = None  # when the last action went out

    def sending(self) -> None:
        """An action is about to go to the robot: returns when it may (at once, but for the hard bound)."""
        now = self.clock()
        self._lead = now - self.tick_start  # where in the tick the action was ready (before any hold-back)
        if self._sent_at is not None and now < self._sent_at + (1.0 - TOLERANCE) * self.period:
            self.sleep(self._sent_at + (1.0 - TOLERANCE) * self.period - now)
            now = self.clock()
        self._sent_at = now

    def next_start(self) -> float:
        """When the next tick starts: its grid slot, unless this tick overran (ended past the slot) — then when
        the next action goes out one whole period after the last, and not before now. A tick that sent late but
        ended in time keeps the grid: `sending()`'s hold-back spaces the next actions (≥ 1 - TOLERANCE periods)
        for the few ticks it takes to get back onto it, so a resample that fits its period neither drifts the
        rate nor counts as an overrun."""
        slot = self.base + (self._n + 1) * self.period
        now = self.clock()
        if now <= slot:
            return slot  # on time: the grid holds, no drift
        due = now  # with nothing sent yet, only the end of this tick bounds the next start
        if self._sent_at is not None:
            # the usual lead: the shortest of the ticks before (not this one's, which a stall lengthened; this
            # one's if there is none before it)
            lead = min(self._leads, default=self._lead if self._lead is not None else 0.0)
            due = self._sent_at + self.period - lead
        return max(now, due)

    def wait(self) -> float:
        """Sleep until the next tick starts (re-basing the grid after an overrun); returns the period that
        ends here — this tick's start to the next one's — in milliseconds."""
        start = self.next_start()
        if self._lead is not None:
            self._leads.append(self._lead)
            self._lead = None
        self._n += 1
        if start > self.base + self._n * self.period:  # overran: the grid continues from the late start
            self.overruns += 1
            self.base = start - self._n * self.period
        self.sleep(max(0.0, start - self.clock()))
        previous, self.tick_start = self.tick_start, self.clock()
        return (self.tick_start - previous) * 1e3
