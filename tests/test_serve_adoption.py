"""`runtime serve`'s session adoption (a client whose channel reconnected from a new port takes over the session its
host left quiet) never takes the session of a client that is driving: one with a call in flight — a resample
longer than ADOPT_QUIET_S (the full-size model on a CPU: 1.3 s) — or whose last call just ended."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

import runtime.serve.server as server_module
from runtime.serve import safe_pickle, wire
from runtime.serve.server import InferenceServicer, ServeConfig
from tests.serve_fixtures import robot_artifacts
from tests.test_serve_resources import Context

pytest.importorskip("lerobot.async_inference.helpers")
from tests.test_serve_hostile import chunks, observation_bytes, setup_bytes
from tests.test_serve_limits import _robot_obs

QUIET_S = 0.05  # ADOPT_QUIET_S for the test: the slow call below lasts many times this


@pytest.fixture
def servicer(monkeypatch):
    monkeypatch.setattr(server_module, "ADOPT_QUIET_S", QUIET_S)
    svc = InferenceServicer(ServeConfig(artifacts=robot_artifacts(), port=0))
    yield svc
    svc.close()


@pytest.mark.parametrize("call", ["GetActions", "SendObservations"])
def test_a_session_with_a_call_in_flight_is_never_adopted(servicer, call):
    """While the driving client's call runs (a long inference, a long upload), a same-host peer without a session
    finds no orphan; once the call ends the session counts as just heard from. Before, `last_seen` was only set
    when a call began, so a resample over 1 s made a driving session look abandoned: another client of the host
    reconnecting (or any peer of it polling without a setup) took it over and the driving robot was refused
    FAILED_PRECONDITION for good."""
    svc = servicer
    driver, stranger = Context("ipv4:127.0.0.1:40000"), Context("ipv4:127.0.0.1:40001")
    svc.SendPolicyInstructions(wire.PolicySetup(data=setup_bytes()), driver)
    session = svc.sessions[driver.peer()]
    entered, release = threading.Event(), threading.Event()
    if call == "GetActions":
        backend = svc.template.backend
        run_prefix = backend.run_prefix

        def slow_prefix(*a, **k):
            entered.set()
            release.wait(10)
            return run_prefix(*a, **k)

        backend.run_prefix = slow_prefix
        session.put(safe_pickle.TimedObservation(0.0, 0, _robot_obs(0), True))
        worker = threading.Thread(target=svc.GetActions, args=(wire.Empty(), driver))
    else:
        def slow_stream():  # a client still uploading its observation
            entered.set()
            release.wait(10)
            yield from chunks(observation_bytes(timestep=0))

        worker = threading.Thread(target=lambda: _quiet(svc.SendObservations, slow_stream(), driver))
    worker.start()
    try:
        assert entered.wait(10)
        time.sleep(10 * QUIET_S)  # far longer than the quiet time: the call is still running
        assert svc._session(stranger) is None, "a session with a call in flight was adopted"
        assert driver.peer() in svc.sessions
    finally:
        release.set()
        worker.join(10)
    time.sleep(QUIET_S / 5)
    assert svc._session(stranger) is None, "a session whose call just ended was adopted"
    assert driver.peer() in svc.sessions and svc.counters["sessions_adopted"] == 0
    time.sleep(3 * QUIET_S)  # quiet now, nothing in flight: a reconnected channel does take it over
    assert svc._session(stranger) is session and svc.counters["sessions_adopted"] == 1


def _quiet(fn, *args):
    """Call `fn`; an exception (a refusal) is fine: only the session's fate is checked."""
    with contextlib.suppress(Exception):
        fn(*args)
