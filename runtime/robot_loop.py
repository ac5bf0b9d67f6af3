"""`runtime robot`: a paced control loop over any object with LeRobot's `Robot` interface (connect,
get_observation, send_action, disconnect, observation_features / action_features).

Actions come from an `ActionSource`: `AsyncSource` (the default) runs the asynchronous executor
`AsyncEdgePolicy` — chunks planned on a worker thread, aligned to the tick they were planned from, so a slow
resample never stalls the rate; `SyncSource` runs EdgePolicy on the loop thread (fast models). Safe stop: on Ctrl-C and after `max_faults` consecutive
faults the loop sends the manifest's stop action once (`on_stop="stop"`) or sends nothing more
(`"hold"`: the arm keeps its last target), then disconnects. Each tick is logged (gate decision, latency).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from runtime.async_policy import AsyncEdgePolicy
from runtime.interrupts import own_sigint
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


class AsyncSource:
    """`AsyncEdgePolicy` (runtime.async_policy): chunks aligned to the tick they were planned from (elapsed
    actions skipped, never replayed) and continued with seam handling; one action per tick, never blocking."""

    def __init__(self, policy: EdgePolicy, interface: RobotInterface, task: str | None = None, *, fps: float,
                 seam: str = "inpaint", margin: int = 1, reanchor: bool = False, slew: float | None = None):
        self.interface, self.task = interface, task
        self.executor = AsyncEdgePolicy(policy, tick_hz=fps, seam=seam, margin=margin, reanchor=reanchor,
                                        slew=slew).start()
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
    if not getattr(robot, "is_connected", False):
        robot.connect()
    with own_sigint():  # Ctrl-C must reach the safe stop below, whatever the process inherited
        return _paced_loop(robot, source, interface, stop_action, fps, max_ticks, max_faults, on_stop, should_stop,
                           on_tick)


def _paced_loop(robot, source, interface, stop_action, fps, max_ticks, max_faults, on_stop, should_stop,
                on_tick) -> LoopReport:
    """The loop of `run_robot` (arguments checked there)."""
    period = 1.0 / fps
    rep = LoopReport()
    consecutive = 0  # robot I/O or source exceptions in a row
    inference_faults = 0  # inference results in a row that were faults (the robot got the safe fallback)
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
