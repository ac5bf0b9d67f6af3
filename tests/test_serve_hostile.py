"""`runtime serve` under hostile or broken input: code-running pickles, unknown classes, oversize and
truncated streams, wrong feature sets, a client vanishing mid-stream, a missing token. Each is refused
(or logged) and a second, well-behaved client is still served afterwards."""

from __future__ import annotations

import contextlib
import pickle
import threading
import time

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serve_fixtures import running_server

helpers = pytest.importorskip("lerobot.async_inference.helpers")
from lerobot.transport import services_pb2, services_pb2_grpc


def features(state_names=("x", "y"), cameras=("top",)) -> dict:
    out = {"observation.state": {"dtype": "float32", "shape": (len(state_names),), "names": list(state_names)}}
    for c in cameras:
        out[f"observation.images.{c}"] = {"dtype": "image", "shape": (64, 64, 3), "names": ["height", "width", "channels"]}
    return out


def setup_bytes(**kw) -> bytes:
    return pickle.dumps(helpers.RemotePolicyConfig("smolvla_cls", "x", features(**kw), 10, "cpu"))


def observation_bytes(timestep=0, must_go=True, **extra) -> bytes:
    rng = np.random.default_rng(timestep)
    obs = {"x": 0.3, "y": 0.6, "top": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "task": "reach the red target", **extra}
    return pickle.dumps(helpers.TimedObservation(time.time(), timestep, obs, must_go=must_go))


def wait_for(condition, timeout_s: float) -> bool:
    """Poll `condition` until it holds (True) or `timeout_s` passes (False): no fixed sleep to flake on."""
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def chunks(data: bytes, size: int = 2 << 20, end: bool = True):
    pieces = [data[i:i + size] for i in range(0, len(data), size)] or [b""]
    for i, p in enumerate(pieces):
        last = i == len(pieces) - 1
        state = services_pb2.TRANSFER_END if last and end else (services_pb2.TRANSFER_BEGIN if i == 0 else services_pb2.TRANSFER_MIDDLE)
        yield services_pb2.Observation(transfer_state=state, data=p)


class Client:
    def __init__(self, port: int, metadata=None):
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = services_pb2_grpc.AsyncInferenceStub(self.channel)
        self.md = metadata

    def setup(self, data: bytes | None = None):
        self.stub.Ready(services_pb2.Empty(), metadata=self.md)
        return self.stub.SendPolicyInstructions(services_pb2.PolicySetup(data=data or setup_bytes()), metadata=self.md)

    def observe(self, data: bytes | None = None):
        return self.stub.SendObservations(chunks(data or observation_bytes()), metadata=self.md)

    def actions(self):
        return pickle.loads(self.stub.GetActions(services_pb2.Empty(), metadata=self.md).data)

    def close(self):
        self.channel.close()


def good_client_is_served(port: int) -> None:
    c = Client(port)
    try:
        c.setup()
        c.observe()
        acts = c.actions()
        assert len(acts) == 10 and acts[0].get_timestep() == 1
        assert acts[0].get_action().device.type == "cpu" and tuple(acts[0].get_action().shape) == (2,)
    finally:
        c.close()


@contextlib.contextmanager
def then_good_client(port: int, setup: bool = True):
    """A client for the bad input; afterwards a second, well-behaved client must still be served."""
    c = Client(port)
    if setup:
        c.setup()
    try:
        yield c
    finally:
        c.close()
    good_client_is_served(port)


def refused(call, code: grpc.StatusCode, *words: str) -> str:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == code, err.value
    for w in words:
        assert w in err.value.details(), err.value.details()
    return err.value.details()


class RunsCode:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('pwned')",))


@pytest.fixture(scope="module")
def server():
    with running_server(max_observation_bytes=1 << 20) as (svc, port):
        yield svc, port


def test_code_running_pickle_never_runs(server, tmp_path):
    svc, port = server
    probe = tmp_path / "plain"
    pickle.loads(pickle.dumps(RunsCode(probe)))  # the payload does run under plain pickle.loads ...
    assert probe.read_text() == "pwned"
    marker = tmp_path / "server"
    evil = pickle.dumps(RunsCode(marker))
    c = Client(port)
    refused(lambda: c.setup(evil), grpc.StatusCode.INVALID_ARGUMENT, "builtins.exec", "refused")
    c.setup()
    refused(lambda: c.observe(evil), grpc.StatusCode.INVALID_ARGUMENT, "builtins.exec")
    hidden = pickle.dumps(helpers.TimedObservation(0.0, 0, {"top": RunsCode(marker)}, True))
    refused(lambda: c.observe(hidden), grpc.StatusCode.INVALID_ARGUMENT, "exec")
    c.close()
    assert not marker.exists()  # ... and never on the server
    assert svc.counters["refused"] >= 3
    good_client_is_served(port)


@pytest.mark.parametrize("payload", [
    {"top": np.array([object()], dtype=object)},  # object arrays carry arbitrary pickles
    {"when": __import__("datetime").datetime(2026, 1, 1)},  # a harmless but unknown class
    {"x": __import__("collections").OrderedDict(a=1)},
])
def test_unknown_classes_refused(server, payload):
    data = pickle.dumps(helpers.TimedObservation(0.0, 0, payload, True))
    with then_good_client(server[1]) as c:
        refused(lambda: c.observe(data), grpc.StatusCode.INVALID_ARGUMENT, "refused")


def test_oversize_and_truncated_streams(server):
    big = b"\0" * (3 << 20)  # 3 MB in 512 kB chunks > the 1 MB bound of this server
    cut = observation_bytes()[:-100]
    with then_good_client(server[1]) as c:
        refused(lambda: c.stub.SendObservations(chunks(big, 512 << 10)), grpc.StatusCode.RESOURCE_EXHAUSTED, "exceeds")
        refused(lambda: c.stub.SendObservations(chunks(b"\0" * (5 << 20), 5 << 20)), grpc.StatusCode.RESOURCE_EXHAUSTED)
        refused(lambda: c.stub.SendObservations(chunks(observation_bytes(), 4096, end=False)),
                grpc.StatusCode.INVALID_ARGUMENT, "truncated")
        refused(lambda: c.observe(cut), grpc.StatusCode.INVALID_ARGUMENT, "undecodable")


@pytest.mark.parametrize(("kw", "key"), [
    ({"state_names": ("x", "z")}, "'z'"),
    ({"state_names": ("x",)}, "'y'"),
    ({"cameras": ("front",)}, "observation.images.front"),
    ({"cameras": ()}, "observation.images.top"),
])
def test_wrong_feature_sets_name_the_key(server, kw, key):
    with then_good_client(server[1], setup=False) as c:
        refused(lambda: c.setup(setup_bytes(**kw)), grpc.StatusCode.INVALID_ARGUMENT, key)


def test_observation_missing_a_motor_is_refused(server):
    obs = {"x": 0.1, "top": np.zeros((64, 64, 3), np.uint8), "task": "reach the red target"}
    with then_good_client(server[1]) as c:
        c.observe(pickle.dumps(helpers.TimedObservation(0.0, 0, obs, True)))
        refused(c.actions, grpc.StatusCode.INVALID_ARGUMENT, "'y'")


def test_client_vanishing_mid_stream(server):
    svc, port = server
    c = Client(port)
    c.setup()
    before = svc.counters["streams_broken"] + svc.counters["refused"]
    release = threading.Event()

    def stalls():
        yield services_pb2.Observation(transfer_state=services_pb2.TRANSFER_BEGIN, data=b"\x80\x04")
        release.wait(10)

    fut = c.stub.SendObservations.future(stalls())
    time.sleep(0.3)
    good_client_is_served(port)  # served while the other stream hangs open
    fut.cancel()
    release.set()
    c.close()
    logged = wait_for(lambda: svc.counters["streams_broken"] + svc.counters["refused"] > before, timeout_s=10)
    good_client_is_served(port)
    assert logged and svc.counters["streams_broken"] + svc.counters["refused"] == before + 1  # logged once


def test_token_and_public_bind():
    from runtime.serve.server import ServeConfig, build_server
    from tests.serve_fixtures import robot_artifacts

    with pytest.raises(ValueError, match="--token"):
        build_server(ServeConfig(artifacts=robot_artifacts(), host="0.0.0.0", port=0))
    with running_server(token="s3cret") as (_, port):
        c = Client(port)
        refused(c.setup, grpc.StatusCode.UNAUTHENTICATED, "token")
        c.close()
        ok = Client(port, metadata=(("authorization", "Bearer s3cret"),))
        ok.setup()
        ok.observe()
        assert len(ok.actions()) == 10
        ok.close()


def test_reconnecting_and_idle_clients_release_their_sessions():
    with running_server(session_idle_s=0.2) as (svc, port):
        a = Client(port)
        a.setup()
        a.observe()
        assert len(a.actions()) == 10
        a.setup()  # the same client sets up again: its session is replaced, its counters kept
        assert svc.stats()["sessions"] == 1 and svc.stats()["policy"]["resamples"] == 1
        time.sleep(0.3)
        b = Client(port)
        b.setup()  # a's session went idle: dropped when b sets up
        assert svc.stats()["sessions"] == 1 and svc.stats()["policy"]["ticks"] == 1
        a.close()
        b.close()


def test_serve_refuses_another_export_when_a_digest_is_pinned():
    """`runtime serve --expect-digest`: a server pinned to one export never serves another."""
    from runtime.manifest import Manifest, ManifestError
    from runtime.serve.server import ServeConfig, build_server
    from tests.serve_fixtures import robot_artifacts

    good = Manifest.load(robot_artifacts()).digest
    with pytest.raises(ManifestError, match="not the expected"):
        build_server(ServeConfig(artifacts=robot_artifacts(), port=0, expected_digest="sha256:" + "0" * 64))
    server, svc, _ = build_server(ServeConfig(artifacts=robot_artifacts(), port=0, expected_digest=good))
    assert svc.template.manifest.digest == good
    server.stop(None)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(length=st.integers(1, 200_000), where=st.sampled_from(["motor", "observation key", "unknown field"]))
def test_refusals_reach_the_client_whatever_names_it_sent(server, length, where):
    """A refusal quoting a client-chosen name arrives as that refusal, bounded: over 16 KiB of status text the
    client got 'metadata size exceeds hard limit' (RESOURCE_EXHAUSTED) and lost its connection instead."""
    from runtime.serve.server import MAX_REASON_CHARS

    name = "n" * length
    c = Client(server[1])
    try:
        if where == "motor":
            details = refused(lambda: c.setup(setup_bytes(state_names=("x", name))), grpc.StatusCode.INVALID_ARGUMENT,
                              "policy setup", "the artifact expects")
        else:
            c.setup()
            obs = helpers.TimedObservation(0.0, 0, {name: {1: 2}} if where == "observation key" else {}, True)
            if where == "unknown field":
                obs.__dict__[name] = 1
            details = refused(lambda: c.observe(pickle.dumps(obs)), grpc.StatusCode.INVALID_ARGUMENT, "observation: ")
        assert len(details) <= MAX_REASON_CHARS + 64
        assert len(server[0].stats()["last_refusal"]) <= MAX_REASON_CHARS + 64
    finally:
        c.close()
