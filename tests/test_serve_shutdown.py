"""`runtime serve`'s shutdown: an inference in flight finishes, then every session's policy and the template are
closed (the backend they share, e.g. TensorRT's CUDA memory, released once nothing can use it)."""

from __future__ import annotations

import threading

import pytest

from runtime.serve import safe_pickle, wire
from runtime.serve.server import InferenceServicer, ServeConfig
from tests.serve_fixtures import robot_artifacts
from tests.test_serve_resources import Context

pytest.importorskip("lerobot.async_inference.helpers")
from tests.test_serve_hostile import setup_bytes
from tests.test_serve_limits import _robot_obs


def test_close_waits_for_the_inference_in_flight_then_closes_every_policy_and_the_backend():
    svc = InferenceServicer(ServeConfig(artifacts=robot_artifacts(), port=0))
    backend, events = svc.template.backend, []
    entered, release = threading.Event(), threading.Event()
    run_prefix, close_backend = backend.run_prefix, backend.close

    def slow_prefix(*a, **k):  # a graph call still running when the stop's grace ran out
        entered.set()
        release.wait(10)
        events.append("inference done")
        return run_prefix(*a, **k)

    def recording_close():
        events.append("backend closed")
        close_backend()

    backend.run_prefix, backend.close = slow_prefix, recording_close
    peers = [Context(f"ipv4:10.0.0.{i}:1") for i in range(3)]
    for ctx in peers:
        svc.SendPolicyInstructions(wire.PolicySetup(data=setup_bytes()), ctx)
    for peer, session in svc.sessions.items():
        close_policy = session.policy.close
        session.policy.close = lambda peer=peer, close=close_policy: (events.append(f"policy {peer}"), close())
    close_template = svc.template.close
    svc.template.close = lambda: (events.append("template"), close_template())
    svc.sessions[peers[0].peer()].put(safe_pickle.TimedObservation(0.0, 0, _robot_obs(0), True))
    poll = threading.Thread(target=svc.GetActions, args=(wire.Empty(), peers[0]))
    poll.start()
    assert entered.wait(10)
    closing = threading.Thread(target=svc.close)
    closing.start()
    closing.join(0.3)
    assert closing.is_alive() and events == []  # nothing is released under the running graph call
    release.set()
    poll.join(10)
    closing.join(10)
    assert events[0] == "inference done" and events[-2:] == ["template", "backend closed"]
    assert {e for e in events if e.startswith("policy")} == {f"policy {c.peer()}" for c in peers}
    # a call that reaches inference after the stop gets nothing and touches no released backend
    svc.sessions[peers[1].peer()].closed = False
    svc.sessions[peers[1].peer()].put(safe_pickle.TimedObservation(0.0, 0, _robot_obs(0), True))
    n = len(events)
    assert svc.GetActions(wire.Empty(), peers[1]).data == b"" and len(events) == n
    svc.close()  # twice: harmless
