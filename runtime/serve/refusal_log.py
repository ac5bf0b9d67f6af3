"""Rate-limited refusal logging for `runtime serve`: a client hammering bad calls cannot flood the journal.

Per window of `interval_s`: the first `burst` refusals of each (client host, kind) are logged at WARNING, at most
`max_lines` from all clients together; the rest are counted, and when the window ends one line sums them up
(the busiest keys first). Counts stay exact (`unlogged`); the server's own counters are kept apart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

OTHER = ("(other hosts)", "")  # keys beyond max_keys in one window share this one
TOP_KEYS = 5  # keys named in a window's summary line


class RefusalLog:
    """`warn(peer, kind, msg, *args)` logs like `logger.warning(msg, *args)` unless this window's limits are reached."""

    def __init__(self, logger: logging.Logger, burst: int = 5, interval_s: float = 60.0, max_lines: int = 100,
                 max_keys: int = 1024, clock: Callable[[], float] = time.monotonic):
        self.logger, self.burst, self.interval_s, self.max_lines, self.max_keys = logger, burst, interval_s, max_lines, max_keys
        self.clock = clock
        self.unlogged = 0  # refusals not logged one by one, since start
        self._lock = threading.Lock()
        self._window_end = clock() + interval_s
        self._logged: Counter[tuple[str, str]] = Counter()  # this window's logged lines per key
        self._skipped: Counter[tuple[str, str]] = Counter()  # this window's unlogged refusals per key
        self._lines = 0  # this window's logged lines, all keys

    def warn(self, peer: str, kind: str, msg: str, *args: object) -> None:
        with self._lock:
            summary = self._roll()
            key = (peer.rsplit(":", 1)[0], kind)  # the host: a client reconnecting from new ports is one client
            if key not in self._logged and key not in self._skipped and len(self._logged) + len(self._skipped) >= self.max_keys:
                key = OTHER
            log_it = self._logged[key] < self.burst and self._lines < self.max_lines
            if log_it:
                self._logged[key] += 1
                self._lines += 1
            else:
                self._skipped[key] += 1
                self.unlogged += 1
        if summary:
            self.logger.warning("%s", summary)
        if log_it:
            self.logger.warning(msg, *args)

    def flush(self, force: bool = False) -> None:
        """Log the summary of a window that has ended (with the periodic counters), or of this one (`force`: at stop)."""
        with self._lock:
            summary = self._roll(force)
        if summary:
            self.logger.warning("%s", summary)

    def _roll(self, force: bool = False) -> str | None:
        """Start a new window if this one ended (caller holds the lock); its summary line, if any went unlogged."""
        now = self.clock()
        if now < self._window_end and not force:
            return None
        skipped, total = self._skipped.most_common(), sum(self._skipped.values())
        self._logged, self._skipped, self._lines = Counter(), Counter(), 0
        self._window_end = now + self.interval_s
        if not total:
            return None
        named = ", ".join(f"{' '.join(filter(None, key))} ×{n}" for key, n in skipped[:TOP_KEYS])
        more = f" and {len(skipped) - TOP_KEYS} more clients/kinds" if len(skipped) > TOP_KEYS else ""
        return (f"{total} refusals not logged in a {self.interval_s:g} s window (first {self.burst} per client and "
                f"kind, {self.max_lines} in all): {named}{more}")
