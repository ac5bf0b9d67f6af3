"""The thin wrappers around LeRobot's stock client and the served-vs-direct comparison: plugins registered as
the stock entry point does, and the server's threads and model released even when the served run fails."""

from __future__ import annotations

import argparse
import threading

import pytest

from tests.serve_fixtures import robot_artifacts

pytest.importorskip("lerobot.async_inference.robot_client")


def test_the_client_wrapper_registers_third_party_plugins_first(monkeypatch):
    from robot_adapters import robot_client

    calls = []

    def parse(*args, **kwargs):
        calls.append("parse")
        raise SystemExit(2)

    monkeypatch.setattr(robot_client, "register_third_party_plugins", lambda: calls.append("plugins"))
    monkeypatch.setattr(robot_client.draccus, "parse", parse)
    with pytest.raises(SystemExit):
        robot_client.main([])
    assert calls == ["plugins", "parse"]  # a lerobot_robot_* package's robot type parses, as with the stock client


def test_compare_releases_the_server_when_the_served_run_fails(monkeypatch):
    from robot_adapters import closed_loop

    def fail(*args, **kwargs):
        raise RuntimeError("client died")
    monkeypatch.setattr(closed_loop, "served", fail)
    before = {t.name for t in threading.enumerate()}
    args = argparse.Namespace(artifacts=str(robot_artifacts()), gate="default", episodes=1, fps=30)
    with pytest.raises(RuntimeError, match="client died"):
        closed_loop._compare(args)
    left = {t.name for t in threading.enumerate() if t.is_alive()} - before
    assert "stream-deadlines" not in left, left
