"""`runtime robot`: a paced control loop over any object with LeRobot's `Robot` interface (connect,
get_observation, send_action, disconnect, observation_features / action_features).

Actions come from an `ActionSource`: `AsyncSource` (the default) runs the asynchronous executor
`AsyncEdgePolicy` — chunks planned on a worker thread, aligned to the tick they were planned from, so a slow
resample never stalls the rate; `SyncSource` runs EdgePolicy on the loop thread (fast models). The schedule is
a fixed grid that, after an overrun (a stalled driver, a slow inline resample), is re-based instead of sending
the missed ticks back to back (runtime.pacing; `overruns` and the period statistics in the report show them).
Safe stop: on Ctrl-C, after `max_faults` consecutive faults, and when anything else ends the loop (an exception
from a hook or a driver, a SystemExit: re-raised after) the loop sends the safe stop once — `on_stop="auto"`: the
manifest's stop action on displacement / velocity dimensions and the last target sent on position ones (a stop
pose of zeros must not yank a joint-position arm across its workspace); `"stop"`: the stop action everywhere —
or sends nothing more (`"hold"`: the arm keeps its last target; a robot with velocity dimensions still gets
`auto`'s stop, `runtime.stop_commands`), then disconnects, then
closes the source (last: a worker stuck in a hung graph call must not delay the torque-off) — each of the
three steps runs even when the one before failed or a second Ctrl-C arrived (that interrupt is re-raised
after), and a failing disconnect is logged and noted in the report, never lost with it. Each tick is logged
(gate decision, latency). Before connecting, the robot's `observation_features` / `action_features` are
checked against the artifact; a robot whose `connect()` fails is disconnected again (what of it connected).

Nothing reaches the robot unvetted, whatever the source (`ActionSource` is a public interface): a non-finite
or wrong-sized action is not sent (a fault), a finite one outside the manifest's action bounds is clipped.
When no action is ready the robot is sent nothing (position-controlled arms keep their target, displacement
robots stand still) — never a repeat of the last action, which for displacement actions would keep moving; a
robot with velocity dimensions (`x.vel`), which nothing sent leaves running at its last command, gets the stop
action on its moving dimensions once (`starved_stop`) when such a run of ticks begins after an action was sent.
`max_starved` such ticks in a row (a hung or stalled backend; before the first action STARTUP_GRACE times as
many, for the first inference) end in the safe stop, with the source's account of why (`starved_reason`: chunks
that came stale); a source that cannot go on (`SourceAction.end`: no chunk can cover the planning delay) ends the
run at once, watchdog or not.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from runtime.async_policy import AsyncEdgePolicy
from runtime.interrupts import own_sigint
from runtime.manifest import Bounds
from runtime.pacing import Pacer
from runtime.policy import EdgePolicy
from runtime.robot_interface import RobotInterface
from runtime.safety import NO_ACTION
from runtime.stop_commands import starved_stop, stop_command

log = logging.getLogger("runtime.robot")
ON_STOP = ("auto", "stop", "hold")
STARTUP_GRACE = 5  # before the first action the watchdog allows 5x max_starved (first inference, CUDA warm-up)
PERIOD_WINDOW = 65_536  # tick periods the loop report keeps (p95): ~36 min at 30 Hz, ~2 MB; totals cover the whole run


@dataclass
class SourceAction:
    action: np.ndarray | None  # None: nothing available this tick (the loop holds / falls back)
    gate_reason: str = ""
    resampled: bool = False
    latency_ms: float = 0.0
    fault: str = ""  # an inference fault reported with this tick (the action is then the safe fallback)
    news: bool = True  # this tick carries a new inference result (a fault or a healthy job)
    end: str = ""  # the source cannot go on (no chunk can cover the planning delay): the run ends, safe stop


class ActionSource(Protocol):
    def reset(self) -> None: ...

    def next_action(self, tick: int, robot_obs: dict[str, Any]) -> SourceAction: ...

    def close(self) -> None: ...

    # optional: `delivered(tick, action)` — what the robot really got for the tick (None: nothing, the send failed
    # or the loop's last check refused it; else the array sent: the one that check may have clipped, or the stop a
    # velocity robot got on a tick without an action); `starved_reason()` — why no action is ready, for the stall
    # watchdog's message (None: not known)


class SyncSource:
    """EdgePolicy.step on the loop thread: one observation in, one action out (none when the policy has no plan
    to take it from: its fallback is not sent). One plan row per tick it is asked for: a stall of the loop
    elapses no row (the loop's ticks are control steps, runtime.pacing)."""

    def __init__(self, policy: EdgePolicy, interface: RobotInterface, task: str | None = None):
        self.policy, self.interface, self.task = policy, interface, task

    def reset(self) -> None:
        self.policy.reset()

    def next_action(self, tick: int, robot_obs: dict[str, Any]) -> SourceAction:
        a = self.policy.step(self.interface.observation(robot_obs, task=self.task))  # None: no safe target yet
        i = self.policy.last_info
        if i.fallback and i.safety == NO_ACTION:
            # nothing queued (a fault before the first plan, or after the plan ran out): the robot holds where it
            # is, as with AsyncSource — not the guard's fallback (a repeat keeps displacements moving)
            a = None
        return SourceAction(a, i.gate_reason, i.resampled, i.total_ms, fault=i.fault or "")

    def delivered(self, tick: int, action: np.ndarray | None) -> None:
        pass  # the synchronous policy keeps no record of what was sent

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
        self._seen = (0, 0, 0)  # (jobs, job faults, worker errors) already reported

    def reset(self) -> None:
        self.executor.reset()

    def next_action(self, tick: int, robot_obs: dict[str, Any]) -> SourceAction:
        ex = self.executor
        ex.submit(self.interface.observation(robot_obs, task=self.task), tick)  # arrays copied: driver buffers
        # no plan row for this tick (before the first chunk, or the timeline ran dry): None, the robot holds where it
        # is — not the emitter's fallback, which repeats the last action (moving on, for displacements) or is the
        # stop pose; nor is it recorded as sent (re-anchoring counts what the robot really did)
        action = ex.action_for_tick(tick, hold_empty=True)
        jobs, faults, errors, job, error = ex.job_report()  # one consistent snapshot of the worker's results
        seen, self._seen = self._seen, (jobs, faults, errors)
        fault = ""
        if errors > seen[2]:  # this report's own worker exception, never an older one
            fault = str(error) if error is not None else ""
        elif faults > seen[1]:
            fault = job.fault if job is not None and job.fault else ""
        if self._seen[1:] != seen[1:]:
            fault = fault or "inference fault"
        return SourceAction(action, job.gate_reason if job else "", bool(job and job.resampled),
                            job.total_ms if job else 0.0, fault=fault, news=self._seen != seen,
                            end=ex.coverage_error() or "")

    def starved_reason(self) -> str | None:
        """Chunks that came but landed stale, when that is why no action is ready (`AsyncEdgePolicy`)."""
        return self.executor.starved_reason()

    def delivered(self, tick: int, action: np.ndarray | None) -> None:
        self.executor.delivered(tick, action)  # re-anchoring and the slew limit count what the robot really got

    def close(self) -> None:
        self.executor.close()

    @property
    def hung(self) -> bool:
        """`close()` gave up on a worker stuck in a graph call: the policy must not be closed or waited on."""
        return self.executor.hung


@dataclass
class LoopReport:
    ticks: int = 0
    seconds: float = 0.0
    faults: int = 0
    starved: int = 0  # ticks with no action available (nothing sent: the robot holds)
    clipped: int = 0  # actions clipped into the action bounds before sending
    refused: int = 0  # non-finite / wrong-sized actions not sent (counted as faults)
    stop_reason: str = ""
    stops_sent: int = 0
    starved_stops: int = 0  # velocity robots: the stop sent when a run of ticks without an action began
    repeated_frames: int = 0  # camera frames with the content of the tick before (no new frame yet)
    disconnect_error: str = ""  # the robot's disconnect failed (logged; the report is still returned)
    overruns: int = 0  # ticks that overran (a stall; the schedule re-based instead of catching up, runtime.pacing)
    # tick start to the next tick's start: the last PERIOD_WINDOW kept (a run may last days), totals over all
    _periods: deque[float] = field(default_factory=lambda: deque(maxlen=PERIOD_WINDOW), repr=False)
    _period_count: int = field(default=0, repr=False)
    _period_sum_ms: float = field(default=0.0, repr=False)
    _period_max_ms: float = field(default=0.0, repr=False)

    def add_period(self, ms: float) -> None:
        """One tick's period (start to the next start), in milliseconds."""
        self._periods.append(ms)
        self._period_count += 1
        self._period_sum_ms += ms
        self._period_max_ms = max(self._period_max_ms, ms)

    @property
    def periods_ms(self) -> list[float]:
        """The periods of the last PERIOD_WINDOW ticks, oldest first."""
        return list(self._periods)

    @property
    def rate_hz(self) -> float:
        """Ticks per second really run, over the whole run (stalls included: the schedule never catches up on them)."""
        return (self._period_count / (self._period_sum_ms / 1e3)) if self._period_count else 0.0

    @property
    def max_period_ms(self) -> float:
        """The longest period of the whole run."""
        return self._period_max_ms

    @property
    def p95_period_ms(self) -> float:
        """95th percentile of the last PERIOD_WINDOW periods."""
        return float(np.percentile(self._periods, 95)) if self._periods else 0.0


def run_robot(robot: Any, source: ActionSource, interface: RobotInterface, stop_action: np.ndarray, *,
              fps: float, max_ticks: int | None = None, max_faults: int = 3, on_stop: str = "auto",
              should_stop: Callable[[], bool] | None = None, on_tick: Callable[[int, SourceAction, float], None] | None = None,
              bounds: Bounds | None = None, max_starved: int | None = None) -> LoopReport:
    """Run the paced loop until `max_ticks`, `should_stop()`, Ctrl-C, `max_faults` consecutive faults or
    `max_starved` consecutive ticks without an action (STARTUP_GRACE times as many before the first one).

    Checks the arguments and the robot's features against the artifact, resets the source (a source used for an
    earlier run starts a new episode: no plan from before reaches this robot), connects the robot if needed and always
    disconnects it (when it reports being connected; after a failed `connect()`, what of it connected); the safe
    stop (stop action once, or hold) runs on every exit of the loop except a normal end of
    `max_ticks`/`should_stop` — an exception from `should_stop`, `on_tick` or the robot that is not a fault
    (a SystemExit) is re-raised after it. `bounds`: the manifest's action bounds every action is clipped into
    (None: only finiteness and size are checked). `source` is closed on every exit, a refused argument included.
    """
    try:
        _check_arguments(fps, on_stop, max_starved)
        vet = _ActionVet(interface, bounds)
        interface.check_robot(robot)  # another robot (other motors or cameras) is refused before it is connected
        source.reset()  # a new run is a new episode: no plan, guard state or pending job from a run before it
        if not getattr(robot, "is_connected", False):
            try:
                robot.connect()
            except BaseException:
                _release_after_failed_connect(robot)
                raise
    except BaseException:
        try:
            source.close()
        except Exception as exc:  # noqa: BLE001 — logged; the refusal above is what the caller must see
            log.error("closing the action source failed: %s", exc)
        raise
    with own_sigint():  # Ctrl-C must reach the safe stop below, whatever the process inherited
        return _paced_loop(robot, source, interface, stop_action, fps, max_ticks, max_faults, on_stop, should_stop,
                           on_tick, vet, max_starved)


def _check_arguments(fps: object, on_stop: object, max_starved: object) -> None:
    if on_stop not in ON_STOP:
        raise ValueError(f"on_stop must be one of {ON_STOP}, got {on_stop!r}")
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a finite number > 0, got {fps!r}")
    if max_starved is not None and (isinstance(max_starved, bool) or not isinstance(max_starved, int) or max_starved < 1):
        raise ValueError(f"max_starved must be an integer >= 1 (ticks) or None, got {max_starved!r}")


def _release_after_failed_connect(robot: Any) -> None:
    """`connect()` raised, perhaps after connecting part of the robot (lerobot: the motor bus, then a camera that
    failed; the motors may hold torque): disconnect what is connected. lerobot's `disconnect()` refuses a robot
    that is not wholly connected (DeviceNotConnectedError), so then each part that reports being connected — its
    `bus` (torque off unless the robot's config says otherwise) and `cameras` — is disconnected itself. Failures
    are logged: the connect error is what the caller sees."""
    try:
        robot.disconnect()
        return
    except Exception as exc:  # noqa: BLE001 — e.g. DeviceNotConnectedError: the parts are tried below
        log.warning("disconnect after the failed connect: %s", exc)
    torque_off = getattr(getattr(robot, "config", None), "disable_torque_on_disconnect", True)
    bus, cameras = getattr(robot, "bus", None), getattr(robot, "cameras", None)
    parts = [("motor bus", bus, (torque_off,))] + [
        (f"camera {name}", cam, ()) for name, cam in (cameras.items() if isinstance(cameras, dict) else ())]
    for what, part, arguments in parts:
        if part is not None and getattr(part, "is_connected", False) is True:
            try:
                part.disconnect(*arguments)
                log.warning("%s disconnected after the failed connect", what)
            except Exception as exc:  # noqa: BLE001 — the next part is still released
                log.error("disconnecting the %s after the failed connect failed: %s", what, exc)


class UnsentAction(Exception):
    """An action from the source failed the loop's last check and was not sent."""


class _ActionVet:
    """The loop's last check before `send_action`: finite, the interface's size, inside the bounds."""

    def __init__(self, interface: RobotInterface, bounds: Bounds | None):
        self.size = len(interface.action_names) if getattr(interface, "action_names", None) else None
        # the bounds as float32, like the guard's and the action sent: one the guard clipped is not "outside" again
        self.bounds = None if bounds is None else tuple(np.asarray(b, np.float32).astype(np.float64)
                                                        for b in (bounds.low, bounds.high))

    def __call__(self, action: np.ndarray) -> tuple[np.ndarray | None, str]:
        """(action to send or None, why it was changed or refused — "" when it passed untouched)."""
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if self.size is not None and a.size != self.size:
            return None, f"action has {a.size} values, the robot takes {self.size}: not sent"
        if not np.isfinite(a).all():
            return None, "non-finite action: not sent"
        if self.bounds is None:
            return a, ""
        low, high = self.bounds
        if (a < low).any() or (a > high).any():
            return np.clip(a, low, high), "action outside the action bounds: clipped"
        return a, ""


def _paced_loop(robot, source, interface, stop_action, fps, max_ticks, max_faults, on_stop, should_stop,
                on_tick, vet, max_starved) -> LoopReport:
    """The loop of `run_robot` (arguments checked there)."""
    rep = LoopReport()
    consecutive = 0  # robot I/O or source exceptions in a row
    inference_faults = 0  # inference results in a row that were faults (the robot got the safe fallback)
    starved_run, sent_any = 0, False  # ticks in a row with nothing to send; whether anything was sent yet
    braked = False  # this run of starved ticks already sent a velocity robot its stop (`starved_stop`)
    last_sent: list[np.ndarray] = []  # the last action the robot took (the safe stop holds its position targets)
    frames = _RepeatedFrames(tuple(interface.camera_names))
    interrupt: BaseException | None = None
    pacer = Pacer(1.0 / fps)  # the schedule: a fixed grid, re-based after an overrun (never a catch-up burst)
    start = pacer.tick_start
    try:
        while (max_ticks is None or rep.ticks < max_ticks) and not (should_stop and should_stop()):
            tick = rep.ticks
            proposed, delivered = None, None  # the source's action for the tick; what send_action took
            try:
                obs = robot.get_observation()
                rep.repeated_frames += frames.count(obs)
                sa = source.next_action(tick, obs)
                if sa.end:  # the source cannot go on (no chunk can cover the planning delay): the safe stop
                    rep.stop_reason = sa.end
                    break
                proposed = sa.action
                action, why = (None, "") if sa.action is None else vet(sa.action)
                if sa.action is None:  # nothing ready: the robot holds; neither a fault nor a recovery
                    rep.starved += 1
                    starved_run += 1
                    limit = None if max_starved is None else max_starved * (1 if sent_any else STARTUP_GRACE)
                    if limit is not None and starved_run >= limit:
                        why = _starved_reason(source) or \
                            ("inference stalled?" if sent_any else "the first plan never came")
                        rep.stop_reason = f"no action for {starved_run} ticks in a row ({why})"
                        break
                    last = last_sent[0] if last_sent else None
                    command = None if braked else starved_stop(interface, stop_action, last)
                    if command is not None:  # a velocity robot would drive on at its last command: stop it once
                        pacer.sending()
                        robot.send_action(interface.action_dict(command))
                        delivered, braked = command, True  # the source learns it: the slew limit starts from it
                        rep.starved_stops += 1
                elif action is None:  # the source's action failed the last check: a fault, nothing sent
                    raise UnsentAction(why)
                else:
                    if why:
                        rep.clipped += 1
                        log.warning("tick %d: %s", tick, why)
                    pacer.sending()
                    sent = action.astype(np.float32)
                    robot.send_action(interface.action_dict(sent))
                    delivered = sent
                    last_sent[:] = [sent]
                    consecutive, starved_run, sent_any, braked = 0, 0, True, False
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
                rep.refused += isinstance(exc, UnsentAction)
                consecutive += 1
                sa = SourceAction(None)
                log.warning("tick %d fault (%d in a row): %s", tick, consecutive, exc)
                if consecutive >= max_faults:
                    rep.stop_reason = f"{consecutive} consecutive faults ({exc})"
                    break
            if proposed is not None or delivered is not None:
                _report_delivered(source, tick, delivered)
            if on_tick is not None:
                on_tick(tick, sa, (time.perf_counter() - pacer.tick_start) * 1e3)
            log.debug("tick %d: gate %s resampled=%s inference %.1f ms", tick, sa.gate_reason, sa.resampled, sa.latency_ms)
            rep.ticks += 1
            rep.add_period(pacer.wait())
    except KeyboardInterrupt:
        rep.stop_reason = "interrupted (Ctrl-C)"
    except BaseException as exc:  # a hook (should_stop, on_tick) or a driver's SystemExit: the safe stop runs
        rep.stop_reason = f"ended by {type(exc).__name__}: {exc}"  # (in `finally`), then the exception goes on
        raise
    finally:
        rep.seconds = time.perf_counter() - start
        rep.overruns = pacer.overruns
        interrupt = _shut_down(robot, source, interface, stop_action, on_stop, rep, last_sent[0] if last_sent else None)
    if interrupt is not None:  # a second Ctrl-C / SIGTERM during the shutdown: honoured now that it is done
        raise interrupt
    return rep


def _starved_reason(source: ActionSource) -> str | None:
    """The source's account of why no action is ready (chunks that came too late), or None."""
    ask = getattr(source, "starved_reason", None)
    try:
        return ask() if ask is not None else None
    except Exception as exc:  # noqa: BLE001 — a message only: the watchdog's stop stands
        log.warning("the source could not say why no action is ready: %s", exc)
        return None


def _report_delivered(source: ActionSource, tick: int, delivered: np.ndarray | None) -> None:
    """Tell the source what the robot really got (a source without `delivered` keeps no record of it)."""
    tell = getattr(source, "delivered", None)
    if tell is None:
        return
    try:
        tell(tick, delivered)
    except Exception as exc:  # noqa: BLE001 — bookkeeping only: the tick's outcome stands
        log.warning("tick %d: the source could not record what was sent: %s", tick, exc)


class _RepeatedFrames:
    """Counts camera frames whose content equals the tick before's: a driver with no new frame yet hands back its
    last one (LeRobot's `read_latest()`, the same object for up to 500 ms) or a copy of it. Compared on a strided
    sample of ~4,000 pixels (tens of µs): a real sensor's noise changes it every frame, and a buffer the driver
    refills in place is not mistaken for a repeat. A perfectly still synthetic scene counts as repeated too."""

    SAMPLE_PIXELS = 4096

    def __init__(self, cameras: tuple[str, ...]):
        self.cameras, self.last = cameras, dict.fromkeys(cameras)

    def _sample(self, img: Any) -> np.ndarray | None:
        a = np.asarray(img)
        if a.ndim < 2 or a.size == 0:
            return None
        step = max(1, int((a.shape[0] * a.shape[1] / self.SAMPLE_PIXELS) ** 0.5))
        return np.array(a[::step, ::step])  # a copy: the driver may overwrite its buffer

    def count(self, obs: Any) -> int:
        get = getattr(obs, "get", None)
        if get is None:
            return 0
        n = 0
        for cam in self.cameras:
            img = get(cam)
            sample = None if img is None else self._sample(img)
            prev = self.last[cam]
            n += sample is not None and prev is not None and prev.shape == sample.shape and np.array_equal(prev, sample)
            self.last[cam] = sample
        return n


def _shut_down(robot: Any, source: ActionSource, interface: RobotInterface, stop_action: np.ndarray, on_stop: str,
               rep: LoopReport, last_sent: np.ndarray | None = None) -> BaseException | None:
    """The safe stop (if one is due), disconnecting the robot, closing the source: each step runs whatever the
    one before did — failed, or was cut short by a second Ctrl-C / SIGTERM (nested `finally`s, so even an
    interrupt landing between steps cannot skip the disconnect, i.e. torque-off). The source closes last: its
    worker may be stuck in a hung graph call, and joining it (up to its timeout) must not delay the torque-off;
    nothing the source does reaches the robot (the loop thread alone sends). Returns such an interrupt."""
    interrupts: list[BaseException] = []

    def attempt(what: str, step: Callable[[], None]) -> None:
        try:
            step()
        except (KeyboardInterrupt, SystemExit) as exc:
            interrupts.append(exc)
            log.error("%s interrupted (%s): finishing the shutdown first", what, type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 — logged; the next step still runs
            log.error("%s failed: %s", what, exc)
            if what == "disconnect":
                rep.disconnect_error = str(exc) or type(exc).__name__

    def send_stop() -> None:
        if rep.stop_reason:
            command = stop_command(on_stop, stop_action, last_sent, getattr(interface, "moving_dims", None),
                                   velocity=bool(getattr(interface, "has_velocity", False)))
            log.warning("safe stop: %s → %s%s", rep.stop_reason, on_stop, "" if command is not None else " (nothing sent)")
            if command is not None:
                robot.send_action(interface.action_dict(command))
                rep.stops_sent += 1

    def disconnect() -> None:
        if getattr(robot, "is_connected", True):  # lerobot raises DeviceNotConnectedError otherwise
            robot.disconnect()
        else:
            rep.disconnect_error = "the robot was no longer connected (link lost?): disconnect skipped"
            log.warning(rep.disconnect_error)

    try:
        attempt("stop action", send_stop)
    finally:
        try:
            attempt("disconnect", disconnect)
        finally:
            attempt("closing the action source", source.close)
    return interrupts[0] if interrupts else None
