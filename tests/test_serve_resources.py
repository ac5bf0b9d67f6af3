"""`runtime serve`'s server-wide bookkeeping under a client that repeats itself: the retired-peer list (no
duplicates, evicted by last retirement)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.serve import wire
from runtime.serve.server import InferenceServicer, ServeConfig
from runtime.serve.session import RetiredPeers
from tests.serve_fixtures import robot_artifacts

pytest.importorskip("lerobot.async_inference.helpers")
from tests.test_serve_hostile import setup_bytes


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
    svc.template.close()


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
