"""One robot client of `runtime serve`: its ChunkPlanner (an EdgePolicy sharing the server's backend, and
the motor names its robot announced) and a one-slot mailbox for its latest observation."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from runtime.chunk_planner import Chunk, ChunkPlanner
from runtime.serve.budget import ObservationBudget
from runtime.serve.safe_pickle import TimedObservation

STREAMS_PER_SESSION = 1  # concurrent SendObservations per client (the stock client sends them one by one)
POLLS_PER_SESSION = 2  # concurrent GetActions per client (the stock client's one receive thread; 2: a reconnect's overlap)


class ServeSession:
    """`infer` is serialised by the server's inference lock (one backend)."""

    def __init__(self, planner: ChunkPlanner, fps: float, budget: ObservationBudget | None = None):
        self.planner = planner
        self.budget = budget or ObservationBudget(1 << 62)  # the server's: what the mailbox holds counts in it
        self.policy = planner.policy
        self.dt = 1.0 / fps
        self.pending: TimedObservation | None = None
        self.pending_bytes = 0  # its payload's share of the budget
        self.closed = False
        self.cond = threading.Condition()
        self.last_seen = time.monotonic()
        self.streams = threading.BoundedSemaphore(STREAMS_PER_SESSION)  # observation streams in flight
        self.polls = threading.BoundedSemaphore(POLLS_PER_SESSION)  # GetActions calls in flight
        self.stream_context: Any = None  # the gRPC context of the open observation stream, if any
        self.calls = 0  # this client's SendObservations / GetActions running now: a session in use is never adopted

    @contextmanager
    def call(self, refresh: bool = False) -> Iterator[None]:
        """One call of this client in flight (`calls`); `refresh`: it counts as heard from when it ends, too (a
        GetActions whose inference outlasted ADOPT_QUIET_S must not leave the session looking abandoned)."""
        with self.cond:
            self.calls += 1
        try:
            yield
        finally:
            with self.cond:
                self.calls -= 1
                if refresh:
                    self.last_seen = time.monotonic()

    def put(self, obs: TimedObservation, nbytes: int = 0) -> None:
        """The newest observation wins (by timestep: one overtaken on the wire does not replace a newer one);
        a must_go flag survives being replaced (the client's queue is still dry). `nbytes` of the budget go with
        it: given back when it is dropped (replaced, or the session closed) or once `take`'s caller planned."""
        with self.cond:
            if self.closed:
                self.budget.give(nbytes)
                return
            if self.pending is not None:
                older = obs.timestep < self.pending.timestep
                obs.must_go = obs.must_go or self.pending.must_go
                if older:
                    self.pending.must_go = obs.must_go
                    self.budget.give(nbytes)  # the overtaken one is dropped
                    obs, nbytes = self.pending, self.pending_bytes
                else:
                    self.budget.give(self.pending_bytes)
            self.pending, self.pending_bytes = obs, nbytes
            self.last_seen = time.monotonic()
            self.cond.notify_all()

    def take(self, timeout: float) -> tuple[TimedObservation | None, int]:
        """The pending observation (None if none came within `timeout`) and its bytes, to `budget.give` after planning."""
        with self.cond:
            if self.pending is None:
                self.cond.wait(timeout)
            taken = (self.pending, self.pending_bytes)
            self.pending, self.pending_bytes = None, 0
            return taken

    def infer(self, tobs: TimedObservation) -> Chunk:
        return self.planner.plan(tobs.observation, tobs.timestep, tobs.must_go)

    def close(self) -> None:
        """Forget the pending observation and cancel an open stream (its worker thread is freed now)."""
        with self.cond:
            self.budget.give(self.pending_bytes)
            self.pending, self.pending_bytes, self.closed = None, 0, True
            self.cond.notify_all()
        ctx = self.stream_context
        if ctx is not None:
            ctx.cancel()


class RetiredPeers:
    """Peers whose session was dropped or taken over, at most `maxlen`: each once, the least recently retired
    evicted first (a peer that sets up again and again must not push out the others)."""

    def __init__(self, maxlen: int = 1024):
        self.maxlen = maxlen
        self._peers: OrderedDict[str, None] = OrderedDict()

    def add(self, peer: str) -> None:
        self._peers.pop(peer, None)
        self._peers[peer] = None
        while len(self._peers) > self.maxlen:
            self._peers.popitem(last=False)

    def __contains__(self, peer: object) -> bool:
        return peer in self._peers

    def __iter__(self) -> Any:
        return iter(self._peers)

    def __len__(self) -> int:
        return len(self._peers)


def session_counters(policies: list[Any]) -> dict[str, int]:
    """Sum of the EdgePolicy counters of the given sessions' policies."""
    total: dict[str, int] = {}
    for p in policies:
        for k, v in p.counters.as_dict().items():
            total[k] = total.get(k, 0) + v
    return total
