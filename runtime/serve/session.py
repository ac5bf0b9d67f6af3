"""One robot client of `runtime serve`: its ChunkPlanner (an EdgePolicy sharing the server's backend, and
the motor names its robot announced) and a one-slot mailbox for its latest observation."""

from __future__ import annotations

import threading
import time
from typing import Any

from runtime.chunk_planner import Chunk, ChunkPlanner
from runtime.serve.safe_pickle import TimedObservation


class ServeSession:
    """`infer` is serialised by the server's inference lock (one backend)."""

    def __init__(self, planner: ChunkPlanner, fps: float):
        self.planner = planner
        self.policy = planner.policy
        self.dt = 1.0 / fps
        self.pending: TimedObservation | None = None
        self.cond = threading.Condition()
        self.last_seen = time.monotonic()

    def put(self, obs: TimedObservation) -> None:
        """Latest observation wins; a must_go flag survives being replaced (the client's queue is still dry)."""
        with self.cond:
            if self.pending is not None and self.pending.must_go:
                obs.must_go = True
            self.pending = obs
            self.last_seen = time.monotonic()
            self.cond.notify_all()

    def take(self, timeout: float) -> TimedObservation | None:
        with self.cond:
            if self.pending is None:
                self.cond.wait(timeout)
            obs, self.pending = self.pending, None
            return obs

    def infer(self, tobs: TimedObservation) -> Chunk:
        return self.planner.plan(tobs.observation, tobs.timestep, tobs.must_go)

    def close(self) -> None:
        with self.cond:
            self.pending = None
            self.cond.notify_all()


def session_counters(policies: list[Any]) -> dict[str, int]:
    """Sum of the EdgePolicy counters of the given sessions' policies."""
    total: dict[str, int] = {}
    for p in policies:
        for k, v in p.counters.as_dict().items():
            total[k] = total.get(k, 0) + v
    return total
