"""`runtime serve` under concurrency: the counters gRPC workers update at once, and the worker budget (one
client's calls, or calls from peers without a session, cannot hold every worker: extra ones are refused)."""

from __future__ import annotations

import sys
import threading

import pytest

from runtime.serve.server import InferenceServicer, ServeConfig
from tests.serve_fixtures import robot_artifacts


class _Context:
    def peer(self) -> str:
        return "ipv4:10.0.0.5:4242"

    def abort(self, code, reason):
        raise RuntimeError(reason)


@pytest.fixture(scope="module")
def servicer():
    svc = InferenceServicer(ServeConfig(artifacts=robot_artifacts(), port=0))
    yield svc
    svc.close()
    svc.template.close()


@pytest.mark.parametrize("call", ["Ready", "_refuse"])
def test_counters_lose_no_update_when_workers_race(servicer, call):
    """Eight workers bump a counter at once, its first update included (a Counter's `+=` on a missing key runs
    Python code, where the interpreter may switch threads): every update is counted."""
    ctx, threads_per_round, rounds = _Context(), 8, 1000
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        lost = 0
        for _ in range(rounds):
            servicer.counters.clear()
            barrier = threading.Barrier(threads_per_round)

            def bump(barrier=barrier):
                barrier.wait()
                try:
                    getattr(servicer, call)(*((None, ctx) if call == "Ready" else (ctx, None, "x")))
                except RuntimeError:
                    pass

            workers = [threading.Thread(target=bump) for _ in range(threads_per_round)]
            for t in workers:
                t.start()
            for t in workers:
                t.join()
            key = "ready" if call == "Ready" else "refused"
            lost += threads_per_round - servicer.stats()[key]
    finally:
        sys.setswitchinterval(old)
    assert lost == 0, f"{lost} of {rounds * threads_per_round} counter updates lost"
