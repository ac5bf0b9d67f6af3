"""`runtime serve`'s server-wide bookkeeping under a client that repeats itself: the retired-peer list (no
duplicates, evicted by last retirement), refusal logging (rate-limited, counts exact) and the budget of
observation bytes in flight (all sessions together)."""

from __future__ import annotations

import logging
import re
import threading

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.serve import safe_pickle, wire
from runtime.serve.budget import ObservationBudget
from runtime.serve.refusal_log import RefusalLog
from runtime.serve.server import InferenceServicer, ServeConfig
from runtime.serve.session import RetiredPeers, ServeSession
from tests.serve_fixtures import robot_artifacts, running_server

pytest.importorskip("lerobot.async_inference.helpers")
from tests.test_serve_hostile import chunks, observation_bytes, refused, setup_bytes, wait_for
from tests.test_serve_limits import _OwnConnection


class Context:
    """A gRPC context for calling the servicer directly: a peer, and abort raising as gRPC's does."""

    def __init__(self, peer: str = "ipv4:10.0.0.5:4242"):
        self._peer = peer

    def peer(self) -> str:
        return self._peer

    def is_active(self) -> bool:
        return True

    def cancel(self) -> None:
        pass

    def abort(self, code, reason):
        raise RuntimeError(f"{code.name}: {reason}")


@pytest.fixture
def servicer():
    svc = InferenceServicer(ServeConfig(artifacts=robot_artifacts(), port=0))
    yield svc
    svc.close()


@settings(max_examples=200, deadline=None)
@given(maxlen=st.integers(1, 6), retired=st.lists(st.sampled_from("abcdefgh"), max_size=40))
def test_retired_peers_hold_each_peer_once_by_last_retirement(maxlen, retired):
    peers = RetiredPeers(maxlen)
    for p in retired:
        peers.add(p)
    by_last = list(dict.fromkeys(reversed(retired)))[:maxlen][::-1]  # distinct, least recently retired first
    assert list(peers) == by_last and len(peers) == len(by_last)
    assert all(p in peers for p in by_last) and not any(p in peers for p in set(retired) - set(by_last))


def test_repeated_setups_do_not_push_a_retired_peer_out(servicer):
    """A peer that sets up again and again retires its own old session each time: it is remembered once, so a
    genuinely retired peer stays retired (and cannot adopt a quiet session without setting up again)."""
    servicer._retired_peers = type(servicer._retired_peers)(maxlen=4)
    gone, busy = Context("ipv4:10.0.0.9:1"), Context("ipv4:10.0.0.9:2")
    servicer.SendPolicyInstructions(wire.PolicySetup(data=setup_bytes()), gone)
    with servicer._sessions_lock:
        servicer._retire(gone.peer())
    for _ in range(6):
        servicer.SendPolicyInstructions(wire.PolicySetup(data=setup_bytes()), busy)
    assert gone.peer() in servicer._retired_peers and list(servicer._retired_peers).count(busy.peer()) == 1
    with servicer._sessions_lock:
        servicer.sessions[busy.peer()].last_seen -= 60  # quiet: adoptable by a new peer of its host, not by `gone`
    assert servicer._session(gone) is None


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@settings(max_examples=150, deadline=None)
@given(events=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["INVALID_ARGUMENT", "stream broken"]),
                                 st.sampled_from([0.0, 0.0, 0.5, 4.0, 11.0])), max_size=120),
       burst=st.integers(1, 4), max_lines=st.integers(1, 12), max_keys=st.integers(1, 8))
def test_refusal_logging_is_bounded_per_window_and_counts_every_refusal(events, burst, max_lines, max_keys):
    now = [0.0]
    lines = _Lines()
    logger = logging.getLogger(f"test.refusals.{burst}.{max_lines}.{max_keys}")
    logger.handlers[:], logger.propagate = [lines], False
    rl = RefusalLog(logger, burst=burst, interval_s=10.0, max_lines=max_lines, max_keys=max_keys, clock=lambda: now[0])
    window_end, per_key, in_window = 10.0, {}, 0
    for i, (host, kind, dt) in enumerate(events):
        now[0] += dt
        if now[0] >= window_end:  # the model of a window: it starts with the first refusal after the last one ended
            window_end, per_key, in_window = now[0] + 10.0, {}, 0
        before = len(lines.lines)
        rl.warn(f"ipv4:10.0.0.{host}:{1000 + i}", kind, "refused %s #%d", f"10.0.0.{host} {kind}", i)
        if any(x.startswith("refused") for x in lines.lines[before:]):
            per_key[host, kind] = per_key.get((host, kind), 0) + 1
            in_window += 1
        assert in_window <= max_lines and max(per_key.values(), default=0) <= burst
        assert len(lines.lines) - before <= 2  # at most a summary and the line itself
    now[0] += 10.0
    rl.flush()
    logged = sum(x.startswith("refused") for x in lines.lines)
    summed = sum(int(m.group(1)) for x in lines.lines if (m := re.match(r"(\d+) refusals not logged", x)))
    assert logged + rl.unlogged == len(events) and summed == rl.unlogged  # nothing lost, every skip summed up


def test_a_flood_of_bad_calls_logs_a_few_lines_and_counts_them_all(servicer, caplog):
    """Before, each of 500 refusals was a WARNING line; now the first few per client and kind are, the rest go
    into one summary, and the counters stay exact. Another client's refusal is still logged."""
    flood, other = Context("ipv4:10.0.0.7:5000"), Context("ipv4:10.0.0.8:5000")
    with caplog.at_level(logging.WARNING, logger="runtime.serve"):
        for i in range(500):
            with pytest.raises(RuntimeError, match="INVALID_ARGUMENT"):
                servicer._refuse(flood, grpc.StatusCode.INVALID_ARGUMENT, f"bad payload #{i}")
        with pytest.raises(RuntimeError):
            servicer._refuse(other, grpc.StatusCode.INVALID_ARGUMENT, "bad payload")
        servicer.refusal_log._window_end = 0.0  # the window ends: the next counters log carries the summary
        stats = servicer.stats()
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    burst = servicer.refusal_log.burst
    assert sum("10.0.0.7" in x and x.startswith("refused") for x in lines) == burst
    assert any("10.0.0.8" in x for x in lines) and len(lines) == burst + 2
    assert lines[-1].startswith(f"{500 - burst} refusals not logged") and "ipv4:10.0.0.7 INVALID_ARGUMENT" in lines[-1]
    assert stats["refused"] == 501 and stats["refusals_unlogged"] == 500 - burst


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["put", "take", "close"]), st.integers(0, 9), st.integers(0, 1000)),
                    max_size=30))
def test_a_sessions_mailbox_gives_back_every_byte_it_holds(ops):
    """Whatever is put, replaced, overtaken, taken or dropped with the session: the budget holds exactly the
    pending observation's bytes plus those taken and not yet planned from, and 0 once all is done."""
    budget = ObservationBudget(1 << 40)
    session = ServeSession(type("Planner", (), {"policy": None})(), 30.0, budget)  # the mailbox needs no policy
    taken = 0
    for op, timestep, nbytes in ops:
        if op == "put":
            assert budget.take(nbytes)
            session.put(safe_pickle.TimedObservation(0.0, timestep, {}, False), nbytes)
        elif op == "take":
            taken += session.take(0.0)[1]
        else:
            session.close()
        assert budget.in_use == session.pending_bytes + taken
    session.close()
    budget.give(taken)
    assert budget.in_use == 0


def test_observation_bytes_in_flight_are_capped_server_wide():
    """Before, each session could hold a maximal observation (32 of them ~2.6 GB of RSS); now a stream that
    would pass the server-wide budget is refused naming it, and the budget comes back when streams end."""
    limit = 1 << 20
    stop = threading.Event()

    def trickle():  # 700 kB taken, then the stream hangs
        yield from list(chunks(b"x" * 700_000, end=False))
        stop.wait(20)

    big = observation_bytes(timestep=0, pad=np.zeros(600_000, np.uint8))
    with running_server(max_observation_bytes=limit, max_inflight_bytes=limit, stream_deadline_s=30) as (svc, port):
        a, b = _OwnConnection(port), _OwnConnection(port)
        a.setup()
        b.setup()
        stuck = a.stub.SendObservations.future(trickle())
        assert wait_for(lambda: svc.budget.in_use >= 700_000, timeout_s=5)
        refused(lambda: b.observe(big), grpc.StatusCode.RESOURCE_EXHAUSTED, f"would exceed {limit} bytes",
                "--max-inflight-mb")
        stop.set()
        with pytest.raises(grpc.RpcError):  # ended without TRANSFER_END: refused, its bytes given back
            stuck.result(timeout=5)
        assert wait_for(lambda: svc.budget.in_use == 0, timeout_s=5)
        b.observe(big)
        assert svc.budget.in_use > 0  # in b's mailbox until planned from
        assert len(b.actions()) == 10 and svc.budget.in_use == 0 and svc.budget.peak <= limit
        a.close()
        b.close()


def test_the_inflight_budget_follows_the_observation_limit():
    assert ServeConfig(artifacts=robot_artifacts(), max_observation_bytes=1 << 20).max_inflight_bytes == 4 << 20
    with pytest.raises(ValueError, match="max_inflight_bytes=1024 must be an integer in .max_observation_bytes"):
        ServeConfig(artifacts=robot_artifacts(), max_observation_bytes=1 << 20, max_inflight_bytes=1024)
