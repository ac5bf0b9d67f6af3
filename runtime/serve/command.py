"""`python -m runtime serve`: run the LeRobot async-inference server until Ctrl-C / SIGTERM (see
runtime.serve.server).

Stopping: SIGINT and SIGTERM only set a flag that the main loop polls (`StopRequests`). A handler that took a
lock — `threading.Event.set()` from a handler on the thread blocked in that Event's `wait()` — could deadlock
(the Event's lock is not re-entrant), and a handler that raised could interrupt the shutdown itself; a flag
makes a signal safe at any moment, and a repeated one changes nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

from runtime.interrupts import own_sigint
from runtime.policy_arguments import add_engines_argument, add_identity_arguments, engine_options
from runtime.serve.server import ServeConfig, build_server

TOKEN_ENV = "RUNTIME_SERVE_TOKEN"
MIN_STATS_EVERY_S, MAX_STATS_EVERY_S = 0.1, 86_400.0
POLL_S = 0.1  # how soon a stop request is seen


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve LeRobot's robot client (async inference over gRPC)")
    p.add_argument("--artifacts", default="artifacts/onnx")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    p.add_argument("--device", default="cpu")
    add_engines_argument(p)
    p.add_argument("--gate", default="default", help="default (the manifest's gate.default) | drift[:thr] | consistency[:thr] | interval:k | always | ...")
    p.add_argument("--refine", action="store_true", help="refine the kept plan with the delta expert and re-send it")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--token", default=None, help=f"shared token clients send as 'authorization: Bearer <token>' "
                                                  f"(or set {TOKEN_ENV})")
    p.add_argument("--allow-unauthenticated", action="store_true",
                   help="allow a non-loopback --host without a token (LeRobot's stock client sends none)")
    p.add_argument("--max-observation-mb", type=float, default=32.0)
    p.add_argument("--max-inflight-mb", type=float, default=None,
                   help="observations received but not yet planned from, all clients together (default: 4 × "
                        "--max-observation-mb); beyond it a stream is refused RESOURCE_EXHAUSTED")
    p.add_argument("--max-sessions", type=int, default=32,
                   help="robot clients with a session at once (the server runs 3 × this + 12 worker threads)")
    p.add_argument("--stream-deadline-s", type=float, default=10.0,
                   help="an observation stream not finished within this is cancelled (frees its worker thread)")
    add_identity_arguments(p)
    p.add_argument("--stats-every", type=float, default=10.0,
                   help=f"log the counters every N seconds, N in [{MIN_STATS_EVERY_S:g}, {MAX_STATS_EVERY_S:g}] "
                        "(0: never)")
    p.add_argument("--verbose", action="store_true", help="log every observation (gate decision, latency)")
    p.set_defaults(func=run)


def check_stats_every(value: float) -> float | None:
    """--stats-every → seconds between counter logs (None: never). NaN, negative, tiny or huge values are refused:
    a period near 0 would flood the log in a busy loop."""
    if value == 0:
        return None
    if not (math.isfinite(value) and MIN_STATS_EVERY_S <= value <= MAX_STATS_EVERY_S):
        raise ValueError(f"--stats-every must be 0 (never) or a number of seconds in [{MIN_STATS_EVERY_S:g}, "
                         f"{MAX_STATS_EVERY_S:g}], got {value!r}")
    return value


class StopRequests:
    """SIGINT / SIGTERM → `requested` (a plain attribute: the handler takes no lock and raises nothing)."""

    def __init__(self) -> None:
        self.requested: str | None = None

    def handle(self, signum: int, frame: object) -> None:
        self.requested = self.requested or signal.Signals(signum).name

    @contextmanager
    def installed(self) -> Iterator[StopRequests]:
        """Both handlers for the block (SIGINT unblocked even if inherited blocked); the old ones after."""
        with own_sigint():
            old_int = signal.signal(signal.SIGINT, self.handle)
            old_term = signal.signal(signal.SIGTERM, self.handle)
            try:
                yield self
            finally:
                signal.signal(signal.SIGTERM, old_term)
                signal.signal(signal.SIGINT, old_int)


def run(args: argparse.Namespace) -> int:
    """Check the flags (a refusal is a ValueError naming the flag; `runtime.cli` prints it and exits 2), load the
    policy, bind, serve until a stop request, then print the counters."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    mb = args.max_observation_mb
    if not 0 < mb <= 1024:  # NaN fails this too
        raise ValueError(f"--max-observation-mb must be a number in (0, 1024], got {mb!r}")
    inflight = args.max_inflight_mb
    if inflight is not None and not mb <= inflight <= 65536:  # NaN fails this too
        raise ValueError(f"--max-inflight-mb must be a number in [--max-observation-mb ({mb:g}), 65536], got {inflight!r}")
    stats_every = check_stats_every(args.stats_every)
    cfg = ServeConfig(artifacts=args.artifacts, backend=args.backend, device=args.device, gate=args.gate,
                      refine=args.refine, host=args.host, port=args.port,
                      token=args.token or os.environ.get(TOKEN_ENV) or None,
                      max_observation_bytes=int(mb * (1 << 20)),
                      max_inflight_bytes=None if inflight is None else int(inflight * (1 << 20)),
                      max_sessions=args.max_sessions, stream_deadline_s=args.stream_deadline_s,
                      expected_digest=args.expect_digest, trusted_keys=args.trusted_key or (),
                      backend_options=engine_options(args.backend, args.engines))
    server, svc, port = build_server(cfg, allow_public=args.allow_unauthenticated)
    stop = StopRequests()
    with stop.installed():  # also over the shutdown: a second Ctrl-C cannot break it half-way
        server.start()
        log = logging.getLogger("runtime.serve")
        log.info("serving %s (%s, gate %s) on %s:%d; robot interface: %s", args.artifacts, args.backend, args.gate,
                 args.host, port, svc.interface.state_names or f"{svc.interface.state_dim} unnamed motors")
        period = stats_every or math.inf
        next_stats = time.monotonic() + period
        while stop.requested is None:
            time.sleep(POLL_S)  # a signal interrupts the sleep; the handler only sets the flag
            if time.monotonic() >= next_stats:
                log.info("counters %s", json.dumps(svc.stats()))
                next_stats = time.monotonic() + period
        log.info("%s: stopping", stop.requested)
        server.stop(grace=1.0).wait()
        svc.close()
    print(json.dumps(svc.stats(), indent=1))
    return 0
