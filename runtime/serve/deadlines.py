"""One watchdog thread for every open observation stream's deadline.

A client at 30 Hz opens 30 streams a second; a `threading.Timer` each would start (and tear down) 30 threads
a second. Here a stream's deadline is one heap entry, and one daemon thread cancels whatever runs past it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Deadline:
    """A handle for one armed deadline. `cancel()` (idempotent) keeps its callback from running and returns
    whether it was too late: True if the deadline had already fired (its callback runs or ran), so the caller
    knows the stream was cancelled even when the cancellation lands as the stream finishes."""

    __slots__ = ("_lock", "cancelled", "fired")

    def __init__(self, lock: threading.Condition) -> None:
        self._lock, self.cancelled, self.fired = lock, False, False

    def cancel(self) -> bool:
        with self._lock:
            self.cancelled = True
            return self.fired


class DeadlineWatch:
    """`arm(seconds, callback)` runs `callback` once after `seconds` unless cancelled first; one thread in all."""

    def __init__(self, name: str = "stream-deadlines") -> None:
        self._heap: list[tuple[float, int, Deadline, Callable[[], object]]] = []
        self._order = itertools.count()  # ties broken by arming order; handles and callbacks are never compared
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def arm(self, seconds: float, callback: Callable[[], object]) -> Deadline:
        handle = Deadline(self._wake)
        with self._wake:
            if self._closed:
                raise RuntimeError("DeadlineWatch is closed")
            heapq.heappush(self._heap, (time.monotonic() + seconds, next(self._order), handle, callback))
            self._wake.notify()
        return handle

    def pending(self) -> int:
        """Armed deadlines not yet due and not cancelled (for tests and stats)."""
        with self._wake:
            return sum(not h.cancelled for _, _, h, _ in self._heap)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed:
                    while self._heap and self._heap[0][2].cancelled:  # finished streams leave the heap here
                        heapq.heappop(self._heap)
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    if wait is not None and wait <= 0:
                        break
                    self._wake.wait(wait)
                if self._closed:
                    return
                _, _, handle, callback = heapq.heappop(self._heap)
                handle.fired = not handle.cancelled  # decided under the lock that cancel() takes
            if handle.fired:
                try:
                    callback()
                except Exception:
                    log.exception("deadline callback failed")
