"""The gRPC server: `transport.AsyncInference` (Ready, SendPolicyInstructions, SendObservations as a chunked
stream, GetActions) over EdgePolicy, so LeRobot's stock robot client drives the runtime.

Safety of the service itself: payloads go through `safe_pickle` (never plain pickle), a refused payload
is logged (rate-limited) and answered with an error to that client only; assembled observations are bounded
in size, one by one and all in flight together;
each client has its own session and only inference is serialised (one backend), so a slow or vanished
client holds no lock; binds 127.0.0.1 unless told otherwise; an optional shared token is checked in the
call metadata (`authorization: Bearer <token>` or `x-runtime-token: <token>`).
"""

from __future__ import annotations

import errno
import hmac
import logging
import socket
import threading
import time
from collections import Counter
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from runtime.chunk_planner import STALE, ChunkPlanner
from runtime.manifest import ManifestError
from runtime.observation import ObservationError
from runtime.policy import EdgePolicy
from runtime.robot_interface import RobotInterface, RobotInterfaceError
from runtime.serve import wire
from runtime.serve.action_pickle import timed_actions
from runtime.serve.budget import ObservationBudget
from runtime.serve.deadlines import DeadlineWatch
from runtime.serve.refusal_log import RefusalLog
from runtime.serve.safe_pickle import PayloadError, RemotePolicyConfig, TimedObservation, loads
from runtime.serve.session import POLLS_PER_SESSION, STREAMS_PER_SESSION, RetiredPeers, ServeSession, session_counters

log = logging.getLogger("runtime.serve")
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
MAX_MESSAGE_BYTES = 4 << 20  # one gRPC message: the client sends 2 MB chunks
MAX_SETUP_BYTES = 1 << 20
# a session quiet this long, from the host of a peer that never set up, is that client's: the stock client sets up
# once (start()) and, after a TCP drop, its channel reconnects from a new port and goes on without a new setup
ADOPT_QUIET_S = 1.0
# a refusal's text travels in a gRPC header: over 16 KiB the client drops the call (and its connection) with
# "metadata size exceeds hard limit" instead of the reason; client-chosen names can be that long
MAX_REASON_CHARS = 1000
ACTIVE_WINDOW_S = 5.0  # a client heard from within this is driving: its session is never dropped for a newcomer
ANONYMOUS_POLLS = 4  # GetActions from peers without a session that wait (an evicted client does not spin); more: refused
SPARE_WORKERS = 8  # for Ready, setups and refusals: never all held by the calls that wait
INFLIGHT_PER_OBSERVATION = 4  # default server-wide budget: this many maximal observations in flight at once


def worker_budget(max_sessions: int) -> int:
    """Workers no client can exhaust: each session's stream and GetActions, the anonymous waits, and spares."""
    return max_sessions * (STREAMS_PER_SESSION + POLLS_PER_SESSION) + ANONYMOUS_POLLS + SPARE_WORKERS


def clip_reason(reason: str) -> str:
    """A refusal's text within MAX_REASON_CHARS: its start and end kept (what was refused, what was expected)."""
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    head, tail = MAX_REASON_CHARS * 7 // 10, MAX_REASON_CHARS // 5
    return f"{reason[:head]}…({len(reason) - head - tail} characters elided)…{reason[-tail:]}"


def _host(peer: str) -> str:
    """A gRPC peer without its port: 'ipv4:10.0.0.5:49710' -> 'ipv4:10.0.0.5', 'ipv6:[::1]:5' -> 'ipv6:[::1]'."""
    return peer.rsplit(":", 1)[0]


@dataclass
class ServeConfig:
    artifacts: str | Path
    backend: str = "onnxruntime"
    gate: str = "default"  # the manifest's gate.default
    refine: bool = False
    fallback: str = "hold"
    device: str = "cpu"
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    max_observation_bytes: int = 32 << 20
    max_inflight_bytes: int | None = None  # all sessions' observations in flight; None: 4 × max_observation_bytes
    get_actions_wait_s: float = 0.5  # how long GetActions waits for an observation before an empty reply
    max_workers: int | None = None  # gRPC worker threads; None (and at least): worker_budget(max_sessions)
    session_idle_s: float = 600.0  # a client silent this long loses its session when another one sets up
    max_sessions: int = 32  # sessions kept at once (each holds an EdgePolicy); a newcomer may drop one quiet for ACTIVE_WINDOW_S
    stream_deadline_s: float = 10.0  # one observation stream must end (TRANSFER_END) within this
    seed: int = 0
    expected_digest: str | None = None  # accept only this export (sessions are pinned to the loaded one anyway)
    trusted_keys: tuple = ()  # Ed25519 public keys, one of which must have signed the export
    backend_options: dict | None = None  # EdgePolicy's, e.g. {"engines": folder} for tensorrt

    def __post_init__(self) -> None:
        """Refuse settings that would disable a limit or overflow a timer, naming the field."""
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            # gRPC would bind port % 65536 (another port, silently)
            raise ValueError(f"serve: port={self.port!r} must be an integer in [0, 65535] (0: any free port)")
        if self.max_workers is None:
            self.max_workers = worker_budget(self.max_sessions) if isinstance(self.max_sessions, int) else 16
        bounds = {"max_observation_bytes": (1 << 10, 1 << 30), "max_sessions": (1, 1024), "max_workers": (2, 4096),
                  "stream_deadline_s": (0.01, 3600.0), "session_idle_s": (0.01, 86400.0),
                  "get_actions_wait_s": (0.0, 60.0)}
        for name, (lo, hi) in bounds.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise ValueError(f"serve: {name}={v!r} must be a number in [{lo}, {hi}]")
        if self.max_inflight_bytes is None:
            self.max_inflight_bytes = INFLIGHT_PER_OBSERVATION * self.max_observation_bytes
        v = self.max_inflight_bytes
        if isinstance(v, bool) or not isinstance(v, int) or not self.max_observation_bytes <= v <= 1 << 36:
            raise ValueError(f"serve: max_inflight_bytes={v!r} must be an integer in [max_observation_bytes="
                             f"{self.max_observation_bytes}, {1 << 36}] (one maximal observation must fit)")
        if self.max_workers < worker_budget(self.max_sessions):  # waiting calls must not hold every worker
            raise ValueError(f"serve: max_workers={self.max_workers} must be at least {worker_budget(self.max_sessions)} "
                             f"for max_sessions={self.max_sessions} ({STREAMS_PER_SESSION} stream + {POLLS_PER_SESSION} "
                             f"GetActions each, {ANONYMOUS_POLLS + SPARE_WORKERS} spare)")


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


class InferenceServicer:
    """The service methods; one `ServeSession` per client peer."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.template = EdgePolicy(cfg.artifacts, backend=cfg.backend, gate=cfg.gate, refine=cfg.refine,
                                   fallback=cfg.fallback, device=cfg.device, seed=cfg.seed,
                                   expected_digest=cfg.expected_digest, trusted_keys=list(cfg.trusted_keys),
                                   backend_options=cfg.backend_options)
        self.interface = RobotInterface.from_manifest(self.template.manifest)
        self.fps = self.interface.fps or 30.0
        self.sessions: dict[str, ServeSession] = {}
        self._sessions_lock = threading.Lock()
        self._infer_lock = threading.Lock()  # one backend: inference runs one session at a time
        self._anonymous_polls = threading.BoundedSemaphore(ANONYMOUS_POLLS)  # GetActions without a session, waiting
        self.counters: Counter[str] = Counter()  # changed only through _count (gRPC workers run at once)
        self._counters_lock = threading.Lock()
        self._retired: Counter[str] = Counter()  # EdgePolicy counters of sessions replaced or expired
        self._retired_peers = RetiredPeers(1024)  # peers whose session was dropped or taken over
        self.deadlines = DeadlineWatch()  # one thread for every open stream's --stream-deadline-s
        self.budget = ObservationBudget(cfg.max_inflight_bytes)  # observation bytes in flight, all sessions
        self.refusal_log = RefusalLog(log)  # refusals and broken streams, rate-limited per client host and kind
        self._closed = False

    def close(self) -> None:
        """After the gRPC server stopped: an inference still running past the stop's grace finishes, then every
        session's policy and the template are closed (their shared backend, e.g. TensorRT's CUDA memory, once)."""
        self.deadlines.close()
        with self._infer_lock:
            self._closed = True  # a call still in a worker thread finds no backend to use
            with self._sessions_lock:
                sessions = list(self.sessions.values())  # kept: their counters stay in stats()
            for session in sessions:
                session.close()
                session.policy.close()
            self.template.close()
        self.refusal_log.flush(force=True)  # the last window's unlogged refusals

    # ----------------------------------------------------------------- helpers
    def _count(self, key: str, n: int = 1) -> None:
        """Add to a server counter; locked: a first `+=` on a Counter runs Python code (__missing__), so two
        workers could both start from 0 and one update was lost."""
        with self._counters_lock:
            self.counters[key] += n

    def _refuse(self, context: grpc.ServicerContext, code: grpc.StatusCode, reason: str) -> None:
        reason = clip_reason(reason)  # names a client chose can be megabytes long
        self._count("refused")
        self.last_refusal = reason  # in stats(): an operator (or a failing test) sees why without the log
        self.refusal_log.warn(context.peer(), code.name, "refused %s: %s", context.peer(), reason)
        context.abort(code, reason)

    def _session(self, context: grpc.ServicerContext) -> ServeSession | None:
        """The caller's session; for a peer that never had one, the quiet session its host left behind
        (adopted: the client's channel reconnected from a new port, ADOPT_QUIET_S)."""
        peer = context.peer()
        with self._sessions_lock:
            session = self.sessions.get(peer)
            if session is not None or peer in self._retired_peers:
                return session
            now, host = time.monotonic(), _host(peer)
            # quiet, and no call of its client running (a resample or an upload may outlast ADOPT_QUIET_S)
            orphans = [p for p, s in self.sessions.items()
                       if _host(p) == host and now - s.last_seen > ADOPT_QUIET_S and not s.calls]
            if not orphans:
                return None
            old = max(orphans, key=lambda p: self.sessions[p].last_seen)  # the most recently driven one
            session = self.sessions.pop(old)
            self._retired_peers.add(old)  # its connection is gone; should it come back, it sets up again
            session.planner.realign()  # what the robot holds after the drop is unknown: the next observation resamples
            session.last_seen = now
            self.sessions[peer] = session
            self._count("sessions_adopted")
        log.warning("client %s: took over the session of %s (its channel reconnected without a new setup)", peer, old)
        return session

    def _retire(self, peer: str) -> None:
        """Drop a session (caller holds the sessions lock); its counters stay in stats()."""
        self._retired_peers.add(peer)  # an evicted client must set up again, not take over another session
        old = self.sessions.pop(peer)
        old.close()
        self._retired.update(old.policy.counters.as_dict())

    def stats(self) -> dict[str, Any]:
        """Server counters plus the summed EdgePolicy counters of every session (gate savings show here)."""
        with self._sessions_lock:
            pol = session_counters([s.policy for s in self.sessions.values()])
            for k, v in self._retired.items():
                pol[k] = pol.get(k, 0) + v
        with self._counters_lock:
            counters = dict(self.counters)
        self.refusal_log.flush()  # stats() is the periodic counters log: a flood's summary line comes with it
        gated = counters.get("observations_processed", 0)
        return {**counters, "policy": pol, "sessions": len(self.sessions),
                "resample_fraction": (pol.get("resamples", 0) / gated) if gated else None,
                "refusals_unlogged": self.refusal_log.unlogged, "inflight_bytes_peak": self.budget.peak,
                "last_refusal": getattr(self, "last_refusal", None)}

    # ----------------------------------------------------------------- service
    def Ready(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._count("ready")
        log.info("client %s ready", context.peer())
        return wire.Empty()

    def SendPolicyInstructions(self, request: Any, context: grpc.ServicerContext) -> Any:
        peer = context.peer()
        if self._closed:
            self._refuse(context, grpc.StatusCode.UNAVAILABLE, "the server is stopping")
        if len(request.data) > MAX_SETUP_BYTES:
            self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, f"policy setup of {len(request.data)} bytes exceeds {MAX_SETUP_BYTES}")
        try:
            setup = loads(request.data, RemotePolicyConfig)
            state_names = self.interface.check_lerobot_features(setup.lerobot_features)
        except (PayloadError, RobotInterfaceError) as exc:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, f"policy setup: {exc}")
            return wire.Empty()
        try:
            policy = EdgePolicy(self.cfg.artifacts, backend=self.template.backend, gate=self.cfg.gate,
                                refine=self.cfg.refine, fallback=self.cfg.fallback, seed=self.cfg.seed,
                                verify_hashes=False,  # the shared backend's graphs were verified at start;
                                expected_digest=self.template.manifest.digest)  # the manifest: the same one
        except (ManifestError, OSError) as exc:  # the folder changed on disk since start (tokenizer, manifest)
            self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION,
                         f"artifacts {self.cfg.artifacts} changed since the server started: {exc}")
            return wire.Empty()
        session = ServeSession(ChunkPlanner(policy, self.interface, state_names, setup.actions_per_chunk, self.fps),
                               self.fps, self.budget)
        with self._sessions_lock:
            now = time.monotonic()
            stale = [p for p, s in self.sessions.items() if p == peer or now - s.last_seen > self.cfg.session_idle_s]
            for p in stale:  # a reconnecting client, or clients gone quiet for session_idle_s
                self._retire(p)
            if len(self.sessions) >= self.cfg.max_sessions:
                # full: the least recently seen session makes room if its client has been quiet for
                # ACTIVE_WINDOW_S (a robot that reconnected from a new port left it behind); its open stream is
                # cancelled. A driving robot (observations or GetActions polls) is never dropped for a newcomer.
                quiet = min(self.sessions, key=lambda p: self.sessions[p].last_seen)
                if now - self.sessions[quiet].last_seen > ACTIVE_WINDOW_S:
                    log.warning("%d sessions (--max-sessions): dropping the quietest, %s", len(self.sessions), quiet)
                    self._count("sessions_evicted")
                    self._retire(quiet)
            full = len(self.sessions) >= self.cfg.max_sessions
            if not full:
                self.sessions[peer] = session
        if full:
            self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"{self.cfg.max_sessions} clients were active in the last {ACTIVE_WINDOW_S:g} s "
                         "(--max-sessions)")
            return wire.Empty()
        self._count("setups")
        log.info("client %s: policy_type=%.80r, %d actions per chunk, motors %.400s (requested %.200r is served by %s)",
                 peer, setup.policy_type, setup.actions_per_chunk, list(state_names),
                 setup.pretrained_name_or_path, self.cfg.artifacts)
        return wire.Empty()

    def SendObservations(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        session = self._session(context)
        if session is None:  # before reading a byte: a client without setup holds no worker thread
            self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION,
                         "no policy setup from this client (call SendPolicyInstructions first)")
            return wire.Empty()
        if not session.streams.acquire(blocking=False):  # the stock client sends one observation at a time
            self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"more than {STREAMS_PER_SESSION} concurrent observation streams from this client")
            return wire.Empty()
        held = [0]  # budget bytes this stream took: handed to the session's mailbox with its observation, or given back
        try:
            with session.call():
                obs = self._receive(session, request_iterator, context, held)
            if obs is not None:
                self._count("observations_received")
                session.put(obs, held[0])
                held[0] = 0
        finally:
            self.budget.give(held[0])
        return wire.Empty()

    def _receive(self, session: ServeSession, request_iterator: Any, context: grpc.ServicerContext,
                 held: list[int]) -> TimedObservation | None:
        """One observation stream, assembled and decoded (None: refused, broken or past its deadline)."""
        # a stream that never ends would hold a worker thread: cancel it after the deadline
        timer = self.deadlines.arm(self.cfg.stream_deadline_s, context.cancel)
        session.stream_context = context  # a dropped session cancels its open stream (session.close)
        try:
            obs = loads(self._assemble(request_iterator, held), TimedObservation)
        except _Refused as exc:
            if not context.is_active():  # the client went away mid-stream (e.g. it stopped): nothing to answer
                self._count("streams_broken")
                self.refusal_log.warn(context.peer(), "stream broken", "observation stream from %s ended with the "
                                      "client gone: %s", context.peer(), clip_reason(exc.reason))
                return None
            self._refuse(context, exc.code, exc.reason)
            return None
        except PayloadError as exc:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, f"observation: {exc}")
            return None
        except grpc.RpcError as exc:  # the client vanished mid-stream, or the deadline cancelled it
            self._count("streams_broken")
            self.refusal_log.warn(context.peer(), "stream broken", "observation stream from %s broke (or ran past "
                                  "%g s): %s", context.peer(), self.cfg.stream_deadline_s, exc)
            return None
        finally:
            late = timer.cancel()  # True: the deadline fired as the stream ended; the client sees CANCELLED
            session.stream_context = None
            session.streams.release()
        if late:  # so the observation is not used either: client and server agree it was not delivered
            self._count("streams_broken")
            return None
        return obs

    def _assemble(self, chunks: Any, held: list[int]) -> bytes:
        """Join TRANSFER_BEGIN/MIDDLE/END chunks; refuse oversize, unknown states, streams with no END, and bytes
        beyond the server's budget of observations in flight (taken as they arrive, counted in `held[0]`)."""
        parts: list[bytes] = []
        size = 0
        done = None
        for msg in chunks:
            if msg.transfer_state == wire.TRANSFER_BEGIN:
                parts, size = [], 0
                self.budget.give(held[0])
                held[0] = 0
            elif msg.transfer_state not in (wire.TRANSFER_MIDDLE, wire.TRANSFER_END):
                raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"unknown transfer_state {msg.transfer_state}")
            size += len(msg.data)
            if size > self.cfg.max_observation_bytes:
                raise _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"observation exceeds {self.cfg.max_observation_bytes} bytes (--max-observation-mb)")
            if not self.budget.take(len(msg.data)):
                raise _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"observations in flight on this server would exceed {self.budget.limit} bytes "
                               "(--max-inflight-mb): retry later")
            held[0] += len(msg.data)
            parts.append(msg.data)
            if msg.transfer_state == wire.TRANSFER_END:
                done = b"".join(parts)  # the client sends one observation per stream; later chunks are ignored
                break
        if done is None:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"truncated observation stream ({size} bytes, no TRANSFER_END)")
        return done

    def GetActions(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Wait up to get_actions_wait_s for the client's observation, plan from it, reply with the chunk (empty:
        keep the plan). Calls beyond POLLS_PER_SESSION (or ANONYMOUS_POLLS without a session) are refused."""
        session = self._session(context)
        if session is None:
            if not self._anonymous_polls.acquire(blocking=False):
                self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"GetActions: no policy setup from this client, and {ANONYMOUS_POLLS} such calls wait "
                             "already (call SendPolicyInstructions first)")
            try:
                time.sleep(min(self.cfg.get_actions_wait_s, 0.1))  # no busy loop for a client without setup
            finally:
                self._anonymous_polls.release()
            return wire.Actions()
        if not session.polls.acquire(blocking=False):  # the stock client polls from one thread
            self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                         f"more than {POLLS_PER_SESSION} concurrent GetActions from this client")
        try:
            with session.call(refresh=True):
                return self._get_actions(session, context)
        finally:
            session.polls.release()

    def _get_actions(self, session: ServeSession, context: grpc.ServicerContext) -> Any:
        session.last_seen = time.monotonic()  # the stock client polls GetActions all the time: it is alive
        obs, nbytes = session.take(self.cfg.get_actions_wait_s)
        if obs is None:
            return wire.Actions()
        try:
            with self._infer_lock:
                if self._closed:  # stopping: the backend is released
                    return wire.Actions()
                reply = session.infer(obs)
        except (ObservationError, RobotInterfaceError) as exc:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, f"observation #{obs.timestep}: {exc}")
            return wire.Actions()
        finally:
            self.budget.give(nbytes)  # planned from (or refused): no longer in flight
        if reply.gate_reason == STALE:  # not newer than what this session last planned from: skipped
            self._count("observations_stale")
            return wire.Actions()
        self._count("observations_processed")
        self._count("must_go", int(reply.forced))
        self._count("chunks_sent" if len(reply.actions) else "kept_plan")
        info = session.policy.last_info
        log.debug("obs #%d %s: gate %s (d=%s thr=%s) %d actions, %.1f ms", obs.timestep, context.peer(),
                  info.gate_reason, info.gate_distance, info.gate_threshold, len(reply.actions), reply.latency_ms)
        if not len(reply.actions):
            return wire.Actions()
        return wire.Actions(data=timed_actions(reply.actions, reply.first_timestep, float(obs.timestamp) + session.dt, session.dt))


def _token_interceptor(token: str, refusals: RefusalLog) -> grpc.ServerInterceptor:
    class _Check(grpc.ServerInterceptor):
        def intercept_service(self, continuation: Any, details: Any) -> Any:
            md = dict(details.invocation_metadata or ())
            given = md.get("x-runtime-token") or md.get("authorization", "").removeprefix("Bearer ").strip()
            if given and hmac.compare_digest(given.encode(), token.encode()):
                return continuation(details)

            def deny(request: Any, context: grpc.ServicerContext) -> Any:
                refusals.warn(context.peer(), "UNAUTHENTICATED", "refused %s %s: missing or wrong token", context.peer(),
                              details.method)
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")

            return grpc.unary_unary_rpc_method_handler(deny)

    return _Check()


def _handlers(svc: InferenceServicer) -> grpc.GenericRpcHandler:
    E, O, A, S = wire.Empty, wire.Observation, wire.Actions, wire.PolicySetup
    return grpc.method_handlers_generic_handler(wire.SERVICE, {
        "Ready": grpc.unary_unary_rpc_method_handler(svc.Ready, E.FromString, E.SerializeToString),
        "SendPolicyInstructions": grpc.unary_unary_rpc_method_handler(svc.SendPolicyInstructions, S.FromString, E.SerializeToString),
        "SendObservations": grpc.stream_unary_rpc_method_handler(svc.SendObservations, O.FromString, E.SerializeToString),
        "GetActions": grpc.unary_unary_rpc_method_handler(svc.GetActions, E.FromString, A.SerializeToString),
    })


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another server listens on before the policy is loaded (fast, and without gRPC's own error
    log). A best-effort probe: gRPC's bind, without SO_REUSEPORT, still refuses a port taken in between."""
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError(f"--host {host!r}: not an address of this machine ({exc})") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: a TIME_WAIT port is free
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise RuntimeError(f"{host}:{port} is in use (another `runtime serve`?): stop that server "
                                       "or choose another --port") from None


def build_server(cfg: ServeConfig, allow_public: bool = False) -> tuple[grpc.Server, InferenceServicer, int]:
    """Create (not start) the server; returns it, the servicer and the bound port (cfg.port 0 → any free).

    SO_REUSEPORT is off (gRPC turns it on by default): a second server on the same port fails to bind instead of
    silently sharing the port with the first, each getting some of the clients."""
    if cfg.host not in LOOPBACK and not (cfg.token or allow_public):
        raise ValueError(f"refusing to bind {cfg.host!r} without --token (or --allow-unauthenticated): "
                         "anyone on that network could drive the robot")
    check_port_free(cfg.host, cfg.port)
    svc = InferenceServicer(cfg)
    interceptors = [_token_interceptor(cfg.token, svc.refusal_log)] if cfg.token else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=cfg.max_workers), interceptors=interceptors,
                         options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                  ("grpc.max_send_message_length", MAX_MESSAGE_BYTES), ("grpc.so_reuseport", 0)],
                         maximum_concurrent_rpcs=4 * cfg.max_workers)
    server.add_generic_rpc_handlers((_handlers(svc),))
    try:
        port = server.add_insecure_port(f"{cfg.host}:{cfg.port}")
    except RuntimeError:  # grpcio >= 1.56 raises instead of returning 0
        port = 0
    if port == 0:
        svc.close()
        raise RuntimeError(f"could not bind {cfg.host}:{cfg.port}: the port is in use or the address is not this "
                           "machine's; choose another --port or --host")
    return server, svc, port
