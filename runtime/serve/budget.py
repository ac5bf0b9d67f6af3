"""The server-wide budget of observation bytes in flight: received (or being received) but not yet planned from.

`--max-observation-mb` bounds one observation; without a bound on all of them, 32 sessions each streaming a
maximal one held ~2.6 GB at once (payloads, their join, the decoded arrays and the mailboxes), enough to OOM
an 8 GB Jetson. A stream takes bytes chunk by chunk; they go back when its observation is refused, replaced in
its session's mailbox, dropped with the session, or planned from.
"""

from __future__ import annotations

import threading


class ObservationBudget:
    """`take(n)` reserves n bytes unless that would pass `limit` (False: refuse the stream); `give(n)` returns them."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_use = 0
        self.peak = 0  # the most ever reserved at once (for tests and stats)
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.in_use + n > self.limit:
                return False
            self.in_use += n
            self.peak = max(self.peak, self.in_use)
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.in_use -= n
            assert self.in_use >= 0, "observation budget given back more than was taken"
