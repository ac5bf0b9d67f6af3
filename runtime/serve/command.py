"""`python -m runtime serve`: run the LeRobot async-inference server until Ctrl-C (see runtime.serve.server)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading

from runtime.interrupts import own_sigint
from runtime.policy_arguments import add_identity_arguments, expected_digest, trusted_keys
from runtime.serve.server import ServeConfig, build_server

TOKEN_ENV = "RUNTIME_SERVE_TOKEN"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve LeRobot's robot client (async inference over gRPC)")
    p.add_argument("--artifacts", default="artifacts/onnx")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--gate", default="default", help="default (the manifest's gate.default) | drift[:thr] | consistency[:thr] | interval:k | always | ...")
    p.add_argument("--refine", action="store_true", help="refine the kept plan with the delta expert and re-send it")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--token", default=None, help=f"shared token clients send as 'authorization: Bearer <token>' "
                                                  f"(or set {TOKEN_ENV})")
    p.add_argument("--allow-unauthenticated", action="store_true",
                   help="allow a non-loopback --host without a token (LeRobot's stock client sends none)")
    p.add_argument("--max-observation-mb", type=float, default=32.0)
    p.add_argument("--max-sessions", type=int, default=32,
                   help="robot clients with a session at once (the server runs max(16, 2 × this) worker threads)")
    p.add_argument("--stream-deadline-s", type=float, default=10.0,
                   help="an observation stream not finished within this is cancelled (frees its worker thread)")
    add_identity_arguments(p)
    p.add_argument("--stats-every", type=float, default=10.0, help="log the counters every N seconds (0: never)")
    p.add_argument("--verbose", action="store_true", help="log every observation (gate decision, latency)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    mb = args.max_observation_mb
    if not 0 < mb <= 1024:
        raise SystemExit(f"runtime serve: --max-observation-mb={mb} must be in (0, 1024]")
    try:
        cfg = ServeConfig(artifacts=args.artifacts, backend=args.backend, device=args.device, gate=args.gate,
                          refine=args.refine, host=args.host, port=args.port,
                          token=args.token or os.environ.get(TOKEN_ENV) or None,
                          max_observation_bytes=int(mb * (1 << 20)),
                          max_sessions=args.max_sessions, stream_deadline_s=args.stream_deadline_s,
                          expected_digest=expected_digest(args.expect_digest), trusted_keys=trusted_keys(args.trusted_key))
        server, svc, port = build_server(cfg, allow_public=args.allow_unauthenticated)
    except ValueError as exc:  # a setting out of range, or a public bind without a token: named, no trace
        raise SystemExit(f"runtime {exc}") from None
    server.start()
    log = logging.getLogger("runtime.serve")
    log.info("serving %s (%s, gate %s) on %s:%d; robot interface: %s", args.artifacts, args.backend, args.gate,
             args.host, port, svc.interface.state_names or f"{svc.interface.state_dim} unnamed motors")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with own_sigint():  # Ctrl-C stops the server even when the process inherited SIGINT ignored or blocked
            while not stop.wait(args.stats_every or None):
                log.info("counters %s", json.dumps(svc.stats()))
    except KeyboardInterrupt:
        pass
    server.stop(grace=1.0).wait()
    svc.close()
    print(json.dumps(svc.stats(), indent=1))
    return 0
