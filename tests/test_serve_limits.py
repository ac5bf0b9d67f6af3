"""`runtime serve`'s limits under a misbehaving client: decode budgets and missing fields in the payload,
numbers that do not fit a float, stale or duplicate timesteps, repeated motor names, trickling streams,
too many sessions, and settings out of range. Each is refused naming what, or skipped without inference."""

from __future__ import annotations

import dataclasses
import pickle
import resource
import struct
import threading
import time

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.serve import safe_pickle
from tests.serve_fixtures import robot_artifacts, running_server

helpers = pytest.importorskip("lerobot.async_inference.helpers")
from lerobot.transport import services_pb2

from tests.test_serve_hostile import Client, features, good_client_is_served, observation_bytes, refused, wait_for


def _stock(cls, state: dict, protocol: int = 2) -> bytes:
    """lerobot's class pickled with exactly `state` as its fields (NEWOBJ + BUILD, as the stock client)."""
    obj = cls.__new__(cls)
    obj.__dict__.update(state)
    return pickle.dumps(obj, protocol=protocol)


STOCK_OBS = {"timestamp": 1.5, "timestep": 3, "observation": {"task": "reach"}, "must_go": True}
STOCK_SETUP = {"policy_type": "smolvla_cls", "pretrained_name_or_path": "x", "lerobot_features": features(),
               "actions_per_chunk": 10, "device": "cpu", "rename_map": {}}


@pytest.mark.parametrize("cls,stock,local", [(helpers.TimedObservation, STOCK_OBS, safe_pickle.TimedObservation),
                                             (helpers.RemotePolicyConfig, STOCK_SETUP, safe_pickle.RemotePolicyConfig)])
def test_every_missing_field_is_named_or_defaulted(cls, stock, local):
    for name in stock:
        state = {k: v for k, v in stock.items() if k != name}
        data = _stock(cls, state)
        if name in local.REQUIRED:
            with pytest.raises(safe_pickle.PayloadError, match=f"missing field.*{name}"):
                safe_pickle.loads(data, local)
            continue
        got = safe_pickle.loads(data, local)  # optional in lerobot too: the default, never an AttributeError
        f = local.__dataclass_fields__[name]
        assert getattr(got, name) == (f.default_factory() if f.default is dataclasses.MISSING else f.default)


def _amplified(n_copies: int, blob_bytes: int = 1 << 20) -> bytes:
    """A pickle that stores one buffer once and feeds it to numpy's _frombuffer n times via the memo."""
    parts = [b"\x80\x02]q\x00(", b"B" + struct.pack("<I", blob_bytes) + b"\0" * blob_bytes + b"q\x01",
             b"cnumpy\ndtype\nX\x02\x00\x00\x00f4\x89\x88\x87Rq\x02"]
    call = b"cnumpy.core.numeric\n_frombuffer\n(h\x01h\x02J" + struct.pack("<i", blob_bytes // 4) + b"\x85X\x01\x00\x00\x00CtR"
    return b"".join([*parts, call * n_copies, b"e."])


def test_memo_amplification_is_refused_before_it_allocates():
    assert pickle.loads(_amplified(1))[-1].shape == (1 << 18,)  # the construction itself is a valid pickle
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(safe_pickle.PayloadError, match="more bytes than it carries"):
        safe_pickle.loads(_amplified(200), safe_pickle.TimedObservation)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 32, f"decoding a 1 MiB payload grew the process by {grown_mib:.0f} MiB"


@settings(max_examples=30, deadline=None)
@given(side=st.integers(1, 300), protocol=st.integers(2, 5))
def test_stock_arrays_fit_the_budget(side, protocol):
    """The budget never refuses what the stock client sends: arrays up to the payload's own size."""
    img = np.arange(side * side * 3, dtype=np.uint8).reshape(side, side, 3)
    data = pickle.dumps(helpers.TimedObservation(0.0, 0, {"a": img, "b": img.astype(np.float64)}, False), protocol=protocol)
    got = safe_pickle.loads(data, safe_pickle.TimedObservation)
    np.testing.assert_array_equal(got.observation["b"], img)


@pytest.mark.parametrize("field,value,words", [
    ("timestamp", float("nan"), "timestamp must be a finite"), ("timestamp", float("inf"), "timestamp must be a finite"),
    ("timestamp", 10**400, "timestamp must be a finite"), ("timestep", 2**62 + 1, "timestep must be in"),
    ("timestep", 2**2100, "digits"), ("timestep", -1, "timestep must be in")])
def test_timeline_numbers_are_bounded(field, value, words):
    data = _stock(helpers.TimedObservation, {**STOCK_OBS, field: value})
    with pytest.raises(safe_pickle.PayloadError, match=words):
        safe_pickle.loads(data, safe_pickle.TimedObservation)


@pytest.mark.parametrize("value", [10**400, float("nan"), float("-inf"), 1e39, np.float64(-3.5e38)])
def test_state_values_that_do_not_fit_float32_are_named(value):
    from runtime.manifest import Manifest
    from runtime.robot_interface import RobotInterface, RobotInterfaceError

    ri = RobotInterface.from_manifest(Manifest.load(robot_artifacts()))
    obs = {"x": 0.1, "y": value, "top": np.zeros((64, 64, 3), np.uint8)}
    with pytest.raises(RobotInterfaceError, match="'y' must be a finite float32"):
        ri.observation(obs)


def test_repeated_motor_names_are_refused_without_a_robot_section():
    from runtime.manifest import Manifest
    from runtime.robot_interface import RobotInterface, RobotInterfaceError
    from tests.fake_artifacts import cached_fake_artifacts

    ri = RobotInterface.from_manifest(Manifest.load(cached_fake_artifacts(chunk_size=10, n_action_steps=10)))
    assert ri.state_names is None
    with pytest.raises(RobotInterfaceError, match=r"repeats motor\(s\) \['x'\]"):
        ri.check_lerobot_features(features(("x", "x")))


def _planner():
    from runtime.chunk_planner import ChunkPlanner
    from runtime.policy import EdgePolicy
    from runtime.robot_interface import RobotInterface

    pol = EdgePolicy(robot_artifacts(), gate="interval:4")
    return ChunkPlanner(pol, RobotInterface.from_manifest(pol.manifest), ("x", "y"), 10)


def _robot_obs(t):
    return {"x": 0.3, "y": 0.6, "top": np.random.default_rng(t).integers(0, 256, (64, 64, 3), dtype=np.uint8),
            "task": "reach the red target"}


@settings(max_examples=8, deadline=None)
@given(steps=st.lists(st.integers(1, 3), min_size=3, max_size=7), stale=st.lists(st.integers(0, 6), max_size=7))
def test_stale_and_duplicate_timesteps_change_nothing(steps, stale):
    """Old or repeated timesteps interleaved into a rising sequence are skipped without inference, and the
    rising sequence's chunks stay exactly what they are without them (the plan stays on the robot's timeline)."""
    clean, noisy = _planner(), _planner()
    for p in (clean, noisy):
        p.plan(_robot_obs(0), 0, True)
    last = 0
    for i, t in enumerate(int(x) for x in np.cumsum(steps)):
        if i < len(stale):
            old = max(0, last - stale[i])  # a duplicate of the last one (0) or older
            skipped = noisy.plan(_robot_obs(old + 1000), old, False)
            assert skipped.gate_reason == "stale" and len(skipped.actions) == 0
        want, got = clean.plan(_robot_obs(t), t, False), noisy.plan(_robot_obs(t), t, False)
        assert (got.first_timestep, got.resampled) == (want.first_timestep, want.resampled)
        np.testing.assert_array_equal(got.actions, want.actions)
        last = t
    assert clean.policy.counters.as_dict() == noisy.policy.counters.as_dict()


@settings(max_examples=12, deadline=None)
@given(bad=st.sets(st.integers(0, 9), max_size=3))
def test_a_chunk_never_carries_a_fallback_row(bad):
    """Plan rows `bad` non-finite once unnormalised: the chunk is the clean plan up to the first bad row (the
    robot's queue runs dry there), empty for a bad first row, and the next observation then plans afresh —
    before, a bad row went out as the guard's fallback: for row 0 the stop pose (a `.pos` arm driven to zeros)."""
    clean, planner = _planner(), _planner()
    p = planner.policy
    real, poisoned_once = p.unnormalize, []

    def poisoned(x):
        out = np.array(real(x), copy=True)
        if not poisoned_once:
            rows = [0] if out.ndim == 1 else [i - 1 for i in bad if i >= 1]  # step: row 0; queued: rows 1..
            if out.ndim == 1 and 0 in bad:
                out[:] = np.nan
            elif out.ndim == 2:
                out[rows] = np.nan
                poisoned_once.append(1)
        return out

    p.unnormalize = poisoned
    want, got = clean.plan(_robot_obs(0), 0, True), planner.plan(_robot_obs(0), 0, True)
    first_bad = min(bad, default=10)
    np.testing.assert_array_equal(got.actions, want.actions[:first_bad])
    if first_bad == 0:
        poisoned_once.append(1)
        again = planner.plan(_robot_obs(0), 0, False)  # same timestep: planned afresh, never skipped as stale
        assert again.gate_reason != "stale" and len(again.actions) == 10


@settings(max_examples=8, deadline=None)
@given(steps=st.lists(st.integers(0, 4), min_size=3, max_size=7), jumps=st.lists(st.integers(1, 2**62), max_size=7))
def test_a_timestep_beyond_what_was_sent_is_refused_and_changes_nothing(steps, jumps):
    """A robot's timestep is the last action it ran, so never beyond the last one sent: such an observation is
    refused naming `timestep` and the session's timeline is untouched (before, one 2**62 made every later
    observation stale until must_go)."""
    from runtime.observation import ObservationError

    clean, noisy = _planner(), _planner()
    for p in (clean, noisy):
        p.plan(_robot_obs(0), 0, True)
    t = 0
    for i, step in enumerate(steps):
        t = min(t + step, clean.sent_through)  # what a robot executing the sent actions can report
        if i < len(jumps):
            with pytest.raises(ObservationError, match="'timestep'.*beyond the last action sent"):
                noisy.plan(_robot_obs(t + 1000), noisy.sent_through + jumps[i], i % 2 == 0)
        want, got = clean.plan(_robot_obs(t), t, False), noisy.plan(_robot_obs(t), t, False)
        assert (got.first_timestep, got.gate_reason) == (want.first_timestep, want.gate_reason)
        np.testing.assert_array_equal(got.actions, want.actions)
    assert clean.policy.counters.as_dict() == noisy.policy.counters.as_dict()


def test_the_server_refuses_a_timestep_jump_by_name():
    with running_server() as (svc, port):
        c = Client(port)
        c.setup()
        c.observe(observation_bytes(timestep=0, must_go=True))
        assert len(c.actions()) == 10
        c.observe(observation_bytes(timestep=2**62, must_go=False))
        refused(c.actions, grpc.StatusCode.INVALID_ARGUMENT, "'timestep'", "beyond the last action sent")
        c.observe(observation_bytes(timestep=3, must_go=False))  # planned, not stale
        c.actions()
        assert svc.counters["observations_processed"] == 2 and svc.counters["observations_stale"] == 0
        c.close()


@pytest.mark.parametrize("failure", ["backend fault", "bad observation"])
def test_a_failed_tick_never_locks_the_client_out(failure):
    """The stock client clears must_go after one observation and repeats its timestep while its queue is dry:
    a faulted or refused tick must leave the next observation with that timestep planned, never skipped."""
    from runtime.observation import ObservationError

    planner = _planner()
    p = planner.policy
    real = p.backend.run_prefix if failure == "backend fault" else p.step
    calls = []

    def once_broken(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise (RuntimeError("transient") if failure == "backend fault" else ObservationError("task", "refused"))
        return real(*a, **k)

    if failure == "backend fault":
        p.backend.run_prefix = once_broken
        assert len(planner.plan(_robot_obs(0), 0, True).actions) == 0  # the fault: nothing for the robot
    else:
        p.step = once_broken
        with pytest.raises(ObservationError):
            planner.plan(_robot_obs(0), 0, True)
    again = planner.plan(_robot_obs(0), 0, False)  # same timestep, must_go cleared by the client
    assert again.gate_reason != "stale" and len(again.actions) == 10 and again.first_timestep == 1
    assert planner.plan(_robot_obs(0), 0, False).gate_reason == "stale"  # now a real duplicate


def test_session_keeps_the_newest_observation():
    from runtime.serve.session import ServeSession

    s = ServeSession(_planner(), 30.0)
    s.put(safe_pickle.TimedObservation(0.0, 7, {}, True))
    s.put(safe_pickle.TimedObservation(0.0, 5, {}, False))  # overtaken on the wire: does not replace 7
    got, _ = s.take(0.0)
    assert (got.timestep, got.must_go) == (7, True)


def test_trickling_streams_hold_no_worker():
    stop = threading.Event()

    def trickle():
        yield services_pb2.Observation(transfer_state=services_pb2.TRANSFER_BEGIN, data=b"x")
        stop.wait(20)

    with running_server(stream_deadline_s=2.0) as (svc, port):
        anon = Client(port)  # no setup: refused before a byte is read
        futs = [anon.stub.SendObservations.future(trickle()) for _ in range(20)]
        for f in futs:
            with pytest.raises(grpc.RpcError) as err:
                f.result(timeout=5)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # only now: channels of one process share a connection, so `anon` and the good client are one peer; a
        # trickle still on its way once that peer had set up found the session and held its stream slot
        # ("more than 1 concurrent observation streams", on a loaded machine)
        good_client_is_served(port)
        c = Client(port)
        c.setup()
        first = c.stub.SendObservations.future(trickle())
        assert wait_for(lambda: any(s.stream_context is not None for s in svc.sessions.values()), timeout_s=5)
        refused(lambda: c.stub.SendObservations(trickle()), grpc.StatusCode.RESOURCE_EXHAUSTED, "concurrent")
        with pytest.raises(grpc.RpcError):  # cancelled by the server at its deadline, not after 20 s
            first.result(timeout=8)

        def slot_free() -> bool:  # the server thread releases the slot just after the client sees the cancel
            try:
                c.observe()
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                return False
            return True

        assert wait_for(slot_free, timeout_s=5)
        assert svc.counters["streams_broken"] + svc.counters["refused"] >= 22
        assert len(c.actions()) == 10
        stop.set()
        c.close()
        anon.close()


class _OwnConnection(Client):
    """A client on its own TCP connection (grpc shares one between channels of a process): its own peer."""

    def __init__(self, port: int):
        super().__init__(port)
        self.channel.close()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
        from lerobot.transport import services_pb2_grpc

        self.stub = services_pb2_grpc.AsyncInferenceStub(self.channel)


def test_sessions_are_capped_and_only_quiet_ones_make_room():
    """At the cap a driving client is never dropped for a newcomer (refused instead); a session whose client
    went quiet makes room, and its open stream is cancelled at once."""
    from runtime.serve.server import ACTIVE_WINDOW_S

    stop = threading.Event()

    def trickle():
        yield services_pb2.Observation(transfer_state=services_pb2.TRANSFER_BEGIN, data=b"x")
        stop.wait(20)

    with running_server(max_sessions=2, stream_deadline_s=30) as (svc, port):
        clients = [_OwnConnection(port) for _ in range(3)]
        clients[0].setup()
        clients[1].setup()
        refused(clients[2].setup, grpc.StatusCode.RESOURCE_EXHAUSTED, "max-sessions")  # both active
        stuck = clients[0].stub.SendObservations.future(trickle())  # client 0's stream hangs, and it goes quiet
        assert wait_for(lambda: any(s.stream_context is not None for s in svc.sessions.values()), timeout_s=5)
        clients[1].observe(observation_bytes(timestep=0))
        assert len(clients[1].actions()) == 10
        with svc._sessions_lock:
            for s in svc.sessions.values():
                if s.stream_context is not None:
                    s.last_seen -= ACTIVE_WINDOW_S + 1
        t0 = time.monotonic()
        clients[2].setup()  # client 0 is dropped, client 1 (driving) is kept
        with pytest.raises(grpc.RpcError):
            stuck.result(timeout=5)
        assert time.monotonic() - t0 < 5 and svc.stats()["sessions"] == 2 and svc.counters["sessions_evicted"] == 1
        clients[1].observe(observation_bytes(timestep=1, must_go=True))
        assert len(clients[1].actions()) == 10
        refused(clients[0].observe, grpc.StatusCode.FAILED_PRECONDITION, "no policy setup")
        stop.set()
        for c in clients:
            c.close()


def test_a_client_whose_channel_reconnected_keeps_its_session():
    """The stock client sets up once; after a TCP drop its channel comes back from a new port without a new
    setup. That peer takes over the quiet session its host left (and the old peer must set up again); while
    the session is still driven, a peer without setup is refused as before."""
    from runtime.serve.server import ADOPT_QUIET_S

    with running_server() as (svc, port):
        before, after = _OwnConnection(port), _OwnConnection(port)
        before.setup()
        before.observe(observation_bytes(timestep=0, must_go=True))
        assert len(before.actions()) == 10
        refused(after.observe, grpc.StatusCode.FAILED_PRECONDITION, "no policy setup")  # still driven: not taken
        with svc._sessions_lock:
            for session in svc.sessions.values():
                session.last_seen -= ADOPT_QUIET_S + 0.5  # the old connection went quiet: dropped
        after.observe(observation_bytes(timestep=5))  # the robot's timeline went on meanwhile
        assert len(after.actions()) == 10  # served, and planned afresh (not aligned to the old queue)
        assert svc.counters["sessions_adopted"] == 1 and svc.stats()["sessions"] == 1
        refused(before.observe, grpc.StatusCode.FAILED_PRECONDITION, "no policy setup")  # the old peer sets up again
        before.close()
        after.close()


@pytest.mark.parametrize("field,value", [("max_sessions", 0), ("stream_deadline_s", float("nan")),
                                         ("stream_deadline_s", 1e308), ("max_observation_bytes", 0),
                                         ("session_idle_s", -1.0), ("max_workers", 1)])
def test_serve_settings_are_checked_by_name(field, value):
    from runtime.serve.server import ServeConfig

    with pytest.raises(ValueError, match=field):
        ServeConfig(artifacts=robot_artifacts(), **{field: value})


def test_workers_follow_the_session_cap():
    from runtime.serve.server import ServeConfig

    assert ServeConfig(artifacts=robot_artifacts(), max_sessions=100).max_workers == 100 * 3 + 12
    with pytest.raises(ValueError, match="max_workers=16 must be at least 60 for max_sessions=16"):
        ServeConfig(artifacts=robot_artifacts(), max_sessions=16, max_workers=16)


def test_a_tokenizer_changed_after_start_is_refused_for_new_sessions(tmp_path):
    """Each session reads tokenizer.json again; with the graphs verified once at start (verify_hashes=False per
    session) the tokenizer is still checked against the manifest, so an edited file serves no client."""
    import json
    import shutil

    folder = tmp_path / "artifacts"
    shutil.copytree(robot_artifacts(), folder)
    with running_server(artifacts=str(folder)) as (svc, port):
        good_client_is_served(port)
        tok = folder / "tokenizer.json"
        data = json.loads(tok.read_text())
        vocab = data["model"]["vocab"]
        vocab["red"], vocab["blue"] = vocab["blue"], vocab["red"]  # same size, other meaning
        tok.write_text(json.dumps(data))
        c = Client(port)
        try:
            refused(c.setup, grpc.StatusCode.FAILED_PRECONDITION, "tokenizer.json")
        finally:
            c.close()
        assert "changed since the server started" in svc.stats()["last_refusal"]
