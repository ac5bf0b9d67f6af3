"""Ctrl-C that always reaches the safe stop.

A process can start with SIGINT ignored or blocked — inherited from its parent (a supervisor, `nohup`, a test
runner whose multiprocessing helper blocked it while spawning), or set by a library. Python then never raises
KeyboardInterrupt, and the robot loop or the server would not stop on Ctrl-C. `own_sigint()` makes SIGINT
raise KeyboardInterrupt in the main thread while the block runs and restores what was there before.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def own_sigint() -> Iterator[None]:
    """Default SIGINT handler and SIGINT unblocked for the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    old_mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        signal.signal(signal.SIGINT, old_handler)
