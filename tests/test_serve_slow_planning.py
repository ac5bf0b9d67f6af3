"""`runtime serve` planning slower than the plan lasts, against lerobot's stock robot client. The client drops every
returned row at or before the last action it executed (`RobotClient._aggregate_action_queues`, used here as is),
so the rows that elapse while the server plans are lost. Before, the server cut every chunk to n_action_steps rows
whatever the client's actions_per_chunk, so with planning d ticks a chunk kept n - d rows (1 of 4 at d = 6) and the
robot stood still most of the time; now a fresh chunk carries up to 2·d + 1 of the model's chunk_size rows (never
more than actions_per_chunk), as the async robot path does (`rows_to_run`), while the gate and the policy's queue
still see only the first n_action_steps. The loop is stepped tick by tick with a simulated clock: no timing."""

from __future__ import annotations

import threading
from queue import Queue

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import chunk_planner
from runtime.async_planner import rows_to_run
from runtime.chunk_planner import ChunkPlanner
from runtime.policy import EdgePolicy
from runtime.robot_interface import RobotInterface
from tests.fake_artifacts import cached_fake_artifacts
from tests.serve_fixtures import _add_robot

client_module = pytest.importorskip("lerobot.async_inference.robot_client")
helpers = pytest.importorskip("lerobot.async_inference.helpers")

CHUNK, N, FPS = 10, 4, 30.0


class _Clock:
    """The planner's `time` module: a clock the simulated backend advances by the planning time."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def _planner(monkeypatch, delay: int, actions_per_chunk: int, gate: str = "always") -> ChunkPlanner:
    """A ChunkPlanner (as `runtime serve` builds one per client) whose every plan takes `delay` - 0.5 ticks."""
    clock = _Clock()
    monkeypatch.setattr(chunk_planner, "time", clock)
    art = cached_fake_artifacts(edit_manifest=_add_robot, chunk_size=CHUNK, n_action_steps=N)
    policy = EdgePolicy(art, gate=gate, seed=0, backend_options={"intra_op_threads": 1})
    inner = policy.backend.run_prefix

    def slow_prefix(*args, **kwargs):
        clock.now += (delay - 0.5) / FPS
        return inner(*args, **kwargs)

    policy.backend.run_prefix = slow_prefix
    return ChunkPlanner(policy, RobotInterface.from_manifest(policy.manifest), ("x", "y"), actions_per_chunk, fps=FPS)


class _StockClient:
    """The parts of lerobot's RobotClient its `_aggregate_action_queues` reads, and its control loop's rules."""

    def __init__(self) -> None:
        self.action_queue: Queue = Queue()
        self.action_queue_lock = threading.Lock()
        self.latest_action_lock = threading.Lock()
        self.latest_action = -1
        self.must_go = True

    def receive(self, rows: np.ndarray, first_timestep: int) -> None:
        timed = [helpers.TimedAction(timestamp=0.0, timestep=first_timestep + i, action=row) for i, row in enumerate(rows)]
        client_module.RobotClient._aggregate_action_queues(self, timed, lambda old, new: new)  # latest_only
        self.must_go = True  # set after every non-empty reply


def _run(planner: ChunkPlanner, delay: int, ticks: int) -> tuple[list[int], list[int]]:
    """Step the stock client (an observation every tick: chunk_size_threshold 1.0) against a server whose plan
    lands `delay` ticks after it took the observation. Returns the timesteps executed per tick (-1: none) and the
    sizes of the chunks sent."""
    client = _StockClient()
    rng = np.random.default_rng(0)
    pending, in_flight = None, None  # the session's mailbox; (landing tick, chunk) being planned
    executed, sizes = [], []
    for tick in range(ticks):
        if in_flight is not None and in_flight[0] == tick:
            chunk = in_flight[1]
            if len(chunk.actions):
                client.receive(chunk.actions, chunk.first_timestep)
            in_flight = None
        if not client.action_queue.empty():
            client.latest_action = client.action_queue.get_nowait().timestep
            executed.append(client.latest_action)
        else:
            executed.append(-1)
        must_go = client.must_go and client.action_queue.empty()
        client.must_go = client.must_go and not must_go
        obs = {"x": 0.3, "y": 0.6, "top": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
               "task": "reach the red target"}
        pending = (obs, max(client.latest_action, 0), must_go or bool(pending and pending[2]))
        if in_flight is None:
            chunk = planner.plan(*pending)
            pending = None
            if len(chunk.actions):
                sizes.append(len(chunk.actions))
            in_flight = (tick + delay, chunk)
    return executed, sizes


@settings(max_examples=10, deadline=None)
@given(delay=st.integers(1, CHUNK - 1), actions_per_chunk=st.integers(1, 2 * CHUNK))
def test_a_slow_server_keeps_the_stock_client_moving(delay, actions_per_chunk):
    with pytest.MonkeyPatch.context() as mp:
        planner = _planner(mp, delay, actions_per_chunk)
        executed, sizes = _run(planner, delay, 120)
    want = min(actions_per_chunk, rows_to_run(N, CHUNK, delay, 1))
    assert sizes and set(sizes) == {want}, (sizes, want)  # always-gate: every chunk is fresh
    ran = [t for t in executed if t >= 0]
    assert ran == sorted(set(ran)), "a timestep ran twice or out of order"
    assert max(ran) <= planner.sent_through
    if 2 * delay + 1 <= min(actions_per_chunk, CHUNK):  # the served rows bridge the delay: after the first
        first = executed.index(ran[0])  # chunk lands, the robot runs on every tick
        assert -1 not in executed[first:], (delay, actions_per_chunk, executed)
    # the gate and the policy's queue still see n_action_steps rows at most
    assert len(planner.policy.queued_actions()) <= N - 1
