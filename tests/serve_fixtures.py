"""Shared by the serve / robot-loop tests: fake artifacts with a `robot` section for the simulated reach
robot, and a running `runtime serve` on a free loopback port."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from runtime.serve.server import InferenceServicer, ServeConfig, build_server
from tests.fake_artifacts import cached_fake_artifacts

ROBOT_SECTION = {"fps": 30, "action_names": ["dx", "dy"], "state_names": ["x", "y"],
                 "cameras": {"observation.images.top": {"height": 64, "width": 64, "channels": 3}}}
ACTION_BOUND = 0.08


def _add_robot(m: dict) -> None:
    m["robot"] = ROBOT_SECTION


def robot_artifacts():
    return cached_fake_artifacts(edit_manifest=_add_robot, chunk_size=10, n_action_steps=10)


@contextlib.contextmanager
def running_server(**overrides) -> Iterator[tuple[InferenceServicer, int]]:
    cfg = ServeConfig(artifacts=overrides.pop("artifacts", robot_artifacts()), port=0, **overrides)
    server, svc, port = build_server(cfg)
    server.start()
    try:
        yield svc, port
    finally:
        server.stop(grace=None).wait()
        svc.close()
