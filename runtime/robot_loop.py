"""`runtime robot`: a paced control loop over any object with LeRobot's `Robot` interface (connect,
get_observation, send_action, disconnect, observation_features / action_features).

Actions come from an `ActionSource`: `SyncSource` runs EdgePolicy on the loop thread (fast models);
`ThreadedSource` plans chunks on a worker thread (ChunkPlanner) so a slow resample never stalls the rate:
the loop executes the queued chunk while the next one is computed. The runtime's asynchronous executor
(its own issue) plugs in as another ActionSource. Safe stop: on Ctrl-C and after `max_faults` consecutive
faults the loop sends the manifest's stop action once (`on_stop="stop"`) or sends nothing more
(`"hold"`: the arm keeps its last target), then disconnects. Each tick is logged (gate decision, latency).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from runtime.async_policy import AsyncEdgePolicy
from runtime.chunk_planner import ChunkPlanner
from runtime.policy import EdgePolicy
from runtime.robot_interface import RobotInterface

log = logging.getLogger("runtime.robot")
ON_STOP = ("stop", "hold")


@dataclass
class SourceAction:
    action: np.ndarray | None  # None: nothing available this tick (the loop holds / falls back)
    gate_reason: str = ""
    resampled: bool = False
    latency_ms: float = 0.0
    fault: str = ""  # an inference fault reported with this tick (the action is then the safe fallback)
    news: bool = True  # this tick carries a new inference result (a fault or a healthy job)


class ActionSource(Protocol):
    def reset(self) -> None: ...

    def next_action(self, tick: int, robot_obs: dict[str, Any]) -> SourceAction: ...

    def close(self) -> None: ...


class SyncSource:
    """EdgePolicy.step on the loop thread: one observation in, one action out."""

    def __init__(self, policy: EdgePolicy, interface: RobotInterface, task: str | None = None):
        self.policy, self.interface, self.task = policy, interface, task

    def reset(self) -> None:
        self.policy.reset()

    def next_action(self, tick: int, robot_obs: dict[str, Any]) -> SourceAction:
        a = self.policy.step(self.interface.observation(robot_obs, task=self.task))
        i = self.policy.last_info
        return SourceAction(a, i.gate_reason, i.resampled, i.total_ms, fault=i.fault or "")

    def close(self) -> None:
        pass


class ThreadedSource:
    """Chunks planned on a worker thread from the latest observation; the loop pops one action per tick.

    The gate runs on every observation the worker takes. A resample is forced early enough that the next
    chunk lands before the queued one runs out: when fewer actions are left than a resample takes ticks
    (measured: EMA of resample latency over the loop period, plus one).
    """

    def __init__(self, policy: EdgePolicy, interface: RobotInterface, task: str | None = None):
        self.planner = ChunkPlanner(policy, interface)
        self.task = task
        self._buf: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self._job: tuple[dict, int, bool] | None = None
        self._wake = threading.Condition(self._lock)
        self._busy = False
        self._last = SourceAction(None)
        self._fresh = False  # a job finished since the loop last asked (its result is news once)
        self._stop = False
        self._error: str | None = None  # the worker's last failure, raised by the next tick (a loop fault)
        self._resample_ms: float | None = None  # EMAs: resample latency, loop period
        self._period_ms: float | None = None
        self._last_call: float | None = None
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._work, name="runtime-robot-inference", daemon=True)
        self._thread.start()

    def reset(self) -> None:
        with self._lock:
            self._buf.clear()
        self.planner.policy.reset()

    def next_action(self, tick: int, robot_obs: dict[str, Any]) -> SourceAction:
        with self._lock:
            error, self._error = self._error, None
            if error is not None:
                raise RuntimeError(f"inference: {error}")
            now = time.perf_counter()
            if self._last_call is not None:
                self._period_ms = _ema(self._period_ms, (now - self._last_call) * 1e3)
            self._last_call = now
            for t in [t for t in self._buf if t < tick]:
                del self._buf[t]
            if not self._busy:  # the worker takes the newest observation; the robot executed up to tick - 1
                obs = dict(robot_obs)
                if self.task is not None:
                    obs["task"] = self.task
                must_go = len(self._buf) < self.lead_ticks  # refill before the queue runs dry
                self._job, self._busy = (obs, tick - 1, must_go), True
                self._wake.notify()
            a = self._buf.pop(tick, None)
            last, news, self._fresh = self._last, self._fresh, False
        return SourceAction(a, last.gate_reason, last.resampled, last.latency_ms, fault=last.fault, news=news)

    def _work(self) -> None:
        while True:
            with self._lock:
                while self._job is None and not self._stop:
                    self._wake.wait()
                if self._stop:
                    return
                job, self._job = self._job, None
            try:
                chunk = self.planner.plan(*job)
                with self._lock:
                    for i, row in enumerate(chunk.actions):  # a new chunk replaces the old plan from its start
                        self._buf[chunk.first_timestep + i] = row
                    self._last = SourceAction(None, chunk.gate_reason, chunk.resampled, chunk.latency_ms,
                                              fault=self.planner.policy.last_info.fault or "")
                    self._fresh = True
                    if chunk.resampled:
                        self._resample_ms = _ema(self._resample_ms, chunk.latency_ms)
            except Exception as exc:  # noqa: BLE001 — raised on the next tick; the loop's fault rule decides
                self.errors.append(str(exc))
                with self._lock:
                    self._error = str(exc)
            finally:
                with self._lock:
                    self._busy = False

    @property
    def lead_ticks(self) -> int:
        """Actions that must still be queued when a resample starts (≥ 1: an empty queue always resamples)."""
        if self._resample_ms is None or not self._period_ms:
            return 1
        return math.ceil(self._resample_ms / self._period_ms) + 1

    def close(self) -> None:
        with self._lock:
            self._stop = True
            self._wake.notify_all()
        self._thread.join(timeout=5)


class AsyncSource:
    """`AsyncEdgePolicy` (runtime.async_policy): chunks aligned to the tick they were planned from (elapsed
    actions skipped, never replayed) and continued with seam handling; one action per tick, never blocking."""

    def __init__(self, policy: EdgePolicy, interface: RobotInterface, task: str | None = None, *, fps: float,
                 seam: str = "inpaint"):
        self.interface, self.task = interface, task
        self.executor = AsyncEdgePolicy(policy, tick_hz=fps, seam=seam).start()
        self._seen = (0, 0)  # (jobs, faults + worker errors) already reported
        self._planned = False  # a chunk has reached the robot

    def reset(self) -> None:
        self.executor.reset()
        self._planned = False

    def next_action(self, tick: int, robot_obs: dict[str, Any]) -> SourceAction:
        ex = self.executor
        ex.submit(self.interface.observation(robot_obs, task=self.task), tick)
        action = ex.action_for_tick(tick)
        self._planned = self._planned or (ex.emitter.last is not None and ex.emitter.last.row is not None)
        if not self._planned:
            action = None  # before the first chunk the robot holds where it is (never drives to the stop pose)
        c = ex.counters
        seen, self._seen = self._seen, (c.jobs, c.faults + c.worker_errors)
        fault = ""
        if self._seen[1] > seen[1]:
            fault = str(ex.last_error) if ex.last_error is not None else (ex.last_job.fault if ex.last_job else "")
            fault = fault or "inference fault"
        job = ex.last_job
        return SourceAction(action, job.gate_reason if job else "", bool(job and job.resampled),
                            job.total_ms if job else 0.0, fault=fault, news=self._seen != seen)

    def close(self) -> None:
        self.executor.close()


def _ema(prev: float | None, x: float, alpha: float = 0.2) -> float:
    return x if prev is None else prev + alpha * (x - prev)


@dataclass
class LoopReport:
    ticks: int = 0
    seconds: float = 0.0
    faults: int = 0
    starved: int = 0  # ticks with no action available (held / fallback)
    stop_reason: str = ""
    stops_sent: int = 0
    periods_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def rate_hz(self) -> float:
        return (len(self.periods_ms) / (sum(self.periods_ms) / 1e3)) if self.periods_ms else 0.0


def run_robot(robot: Any, source: ActionSource, interface: RobotInterface, stop_action: np.ndarray, *,
              fps: float, max_ticks: int | None = None, max_faults: int = 3, on_stop: str = "stop",
              should_stop: Callable[[], bool] | None = None, on_tick: Callable[[int, SourceAction, float], None] | None = None) -> LoopReport:
    """Run the paced loop until `max_ticks`, `should_stop()`, Ctrl-C or `max_faults` consecutive faults.

    Connects the robot if needed and always disconnects it; the safe stop (stop action once, or hold)
    runs on every exit except a normal end of `max_ticks`/`should_stop`.
    """
    if on_stop not in ON_STOP:
        raise ValueError(f"on_stop must be one of {ON_STOP}, got {on_stop!r}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    period = 1.0 / fps
    rep = LoopReport()
    consecutive = 0  # robot I/O or source exceptions in a row
    inference_faults = 0  # inference results in a row that were faults (the robot got the safe fallback)
    if not getattr(robot, "is_connected", False):
        robot.connect()
    start = last = time.perf_counter()
    try:
        while (max_ticks is None or rep.ticks < max_ticks) and not (should_stop and should_stop()):
            tick = rep.ticks
            try:
                obs = robot.get_observation()
                sa = source.next_action(tick, obs)
                if sa.action is None:  # nothing ready: the robot holds; neither a fault nor a recovery
                    rep.starved += 1
                else:
                    robot.send_action(interface.action_dict(sa.action))
                    consecutive = 0
                if sa.fault:
                    rep.faults += 1
                    inference_faults += 1
                    log.warning("tick %d inference fault (%d in a row): %s", tick, inference_faults, sa.fault)
                    if inference_faults >= max_faults:
                        rep.stop_reason = f"{inference_faults} consecutive inference faults ({sa.fault})"
                        break
                elif sa.news:
                    inference_faults = 0
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # noqa: BLE001 — a fault: counted, the loop's fault rule decides
                rep.faults += 1
                consecutive += 1
                sa = SourceAction(None)
                log.warning("tick %d fault (%d in a row): %s", tick, consecutive, exc)
                if consecutive >= max_faults:
                    rep.stop_reason = f"{consecutive} consecutive faults ({exc})"
                    break
            now = time.perf_counter()
            if on_tick is not None:
                on_tick(tick, sa, (now - last) * 1e3)
            log.debug("tick %d: gate %s resampled=%s inference %.1f ms", tick, sa.gate_reason, sa.resampled, sa.latency_ms)
            rep.ticks += 1
            deadline = start + rep.ticks * period  # absolute schedule: no drift from sleep jitter
            time.sleep(max(0.0, deadline - time.perf_counter()))
            now = time.perf_counter()
            rep.periods_ms.append((now - last) * 1e3)
            last = now
    except KeyboardInterrupt:
        rep.stop_reason = "interrupted (Ctrl-C)"
    finally:
        rep.seconds = time.perf_counter() - start
        if rep.stop_reason:
            log.warning("safe stop: %s → %s", rep.stop_reason, on_stop)
            if on_stop == "stop":
                try:
                    robot.send_action(interface.action_dict(stop_action))
                    rep.stops_sent += 1
                except Exception as exc:  # noqa: BLE001
                    log.error("stop action failed: %s", exc)
        try:
            source.close()
        finally:
            robot.disconnect()
    return rep
