"""Asynchronous execution: the robot gets one action per tick at its own rate while inference runs on a worker.

    with AsyncEdgePolicy(EdgePolicy("artifacts/onnx", gate="drift"), tick_hz=30) as ap:
        while running:                       # the control loop, paced by the robot
            action = ap.step(robot_obs())    # submit the observation, take this tick's action: never blocks
            robot.send(action)

`step(obs)` = `submit(obs)` + `action_for_tick(tick)`; a loop that owns its tick counter calls the two itself.
The worker takes the newest submitted observation (older ones are dropped), runs gate + resample through
`AsyncChunkPlanner`, and installs a fresh chunk on the `ActionTimeline` aligned to the tick it was planned from.
Rules: the control side never waits for the model and never gets anything unsafe (an empty plan gives the
guard's fallback; None, send nothing, where that has no target for a position dimension yet); a failed resample is retried by the next job (the policy's own rule); a bad
observation raises `ObservationError` from `submit` (checked on the caller's thread) and never reaches the
worker; `submit` copies the observation's arrays, so a driver that refills one frame buffer in place cannot
change what a job pinned to a tick plans from; an unexpected worker error is counted and the worker keeps
going; one that ends the thread (SystemExit from a backend) makes `submit` raise `WorkerDied` naming it;
`close()` stops and joins it. Chunks that land stale are tracked: `starved_reason()` says so, and
`coverage_error()` names the delay when no chunk can cover it (the robot loop then ends the run). A worker stuck in a hung graph call is waited for at most
`_JOIN_TIMEOUT_S` by `close()` and `reset()`, which then raise `WorkerHung`; after such a `close()` the policy
is not released (its lock is the stuck call's: `hung` tells the owner not to wait on it).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, fields

import numpy as np

from runtime.async_planner import AsyncChunkPlanner
from runtime.policy import EdgePolicy, TickInfo
from runtime.timeline import ActionEmitter, ActionTimeline, TimelineCounters
from runtime.tokenizer import InstructionTokenizer

_JOIN_TIMEOUT_S = 30.0  # longer than any single graph call we expect; a hung backend is reported, not awaited
HOPELESS_STALE = 3  # fresh chunks in a row stale after >= chunk_size ticks each: no chunk can cover the delay
# (not one: a first inference, CUDA warm-up, may take that long once)


class WorkerHung(RuntimeError):
    """The planner worker did not finish its job in time: a graph call is hung."""


class WorkerDied(RuntimeError):
    """The planner worker thread ended (a BaseException such as SystemExit from a backend): no plan will come."""


def snapshot(observation: dict) -> dict:
    """The observation with its arrays copied (a shallow copy otherwise): what the worker plans from later must be
    the frame of the tick it was submitted for, whatever the driver does to its buffers meanwhile. A copy of a
    640x480 RGB frame is ~0.1 ms; strings and numbers are immutable already."""
    if not isinstance(observation, dict):
        return observation  # the validator names what is wrong with it
    return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in observation.items()}


@dataclass
class AsyncCounters:
    """Totals since the executor was built, across `reset()`s (as `EdgePolicy.counters`; the current episode's
    timeline counts are `timeline.counters`)."""

    ticks: int = 0
    submitted: int = 0
    dropped_observations: int = 0  # replaced by a newer one before the worker picked them up
    jobs: int = 0
    resamples: int = 0
    chunks_installed: int = 0
    stale_chunks: int = 0
    skipped_actions: int = 0
    empty_ticks: int = 0
    fallbacks: int = 0
    clipped: int = 0
    faults: int = 0  # chain faults reported by the policy (backend errors, non-finite outputs)
    worker_errors: int = 0  # unexpected exceptions in the worker (it keeps running)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class AsyncEdgePolicy:
    """Wraps an `EdgePolicy`; after `start()` only the worker touches it. `tick_hz` converts measured
    inference time into the delay (in ticks) that seam handling and the early resample use."""

    def __init__(self, policy: EdgePolicy, tick_hz: float, *, align: bool = True, seam: str = "inpaint",
                 seam_width: int = 3, delay_ticks: int | None = None, react_width: int = 1, margin: int = 1,
                 reanchor: bool = False, slew: float | None = None):
        if not tick_hz > 0:
            raise ValueError(f"tick_hz must be positive, got {tick_hz!r}")
        if delay_ticks is not None and delay_ticks < 0:
            raise ValueError(f"delay_ticks must be >= 0, got {delay_ticks!r}")
        self.policy = policy
        self.tick_hz = float(tick_hz)
        # margin 1: one row of slack when a resample takes longer than the running delay estimate
        self.planner = AsyncChunkPlanner(policy, seam=seam, seam_width=seam_width, react_width=react_width,
                                         margin=margin)
        self.timeline = ActionTimeline(align=align)
        # reanchor (displacement action spaces only): add back the motion the skipped rows assumed; slew: limit
        # each tick's action change to slew x the plans' mean row step, the rest carried (timeline.py)
        self.emitter = ActionEmitter(policy, self.timeline, reanchor=reanchor, slew=slew)
        m = policy.manifest
        # the caller's thread validates with its own tokenizer (the worker's one is never shared) and the policy's
        # own checks (its state_tolerance): what `submit` accepts, the worker's validation accepts too
        tokenizer = InstructionTokenizer(m.tokenizer_path, m.tokenizer, expected_sha256=m.files[m.tokenizer.file]["sha256"])
        self._validator = policy.validator.with_tokenizer(tokenizer)
        self._fixed_delay = delay_ticks
        self._delays: list[int] = []
        self._stale_run = 0  # fresh chunks in a row that landed with every row elapsed (since one installed)
        self._stale_last: list[tuple[int, int]] = []  # (measured delay, rows) of the last HOPELESS_STALE of them
        self._cond = threading.Condition()
        self._pending: tuple[dict, int] | None = None
        self._busy = False
        self._stop = False
        self._thread: threading.Thread | None = None
        self._tick = 0
        self.counters = AsyncCounters()
        self._past = TimelineCounters()  # the timeline's counts of the episodes before this one (it resets per episode)
        self.last_job: TickInfo | None = None
        self.last_error: BaseException | None = None
        self._death: BaseException | None = None  # what ended the worker thread (not `close()`)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> AsyncEdgePolicy:
        if self._thread is not None:
            raise RuntimeError("AsyncEdgePolicy already started")
        self._stop = False
        self._thread = threading.Thread(target=self._work, name="edge-policy-worker", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the worker (after its current job) and release the policy's backend. Safe to call twice. A worker
        still in its job after `_JOIN_TIMEOUT_S` (a hung graph call) raises `WorkerHung` and the policy is left
        open: closing it would wait on the lock the stuck call holds (`hung` says so; the process exit ends it)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(_JOIN_TIMEOUT_S)
            if self._thread.is_alive():
                raise WorkerHung(f"planner worker did not stop within {_JOIN_TIMEOUT_S:.0f} s (backend hung): "
                                 "the policy's backend is not released")
            self._thread = None
        self.policy.close()

    @property
    def hung(self) -> bool:
        """`close()` gave up on a worker still inside a graph call: the policy must not be closed or waited on."""
        return self._stop and self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> AsyncEdgePolicy:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self, seed: int | None = None) -> None:
        """Episode start: waits for an in-flight job (at most `_JOIN_TIMEOUT_S`, else `WorkerHung` and nothing is
        reset), then drops the plan, the pending observation and the tick. `counters` keep counting."""
        deadline = time.monotonic() + _JOIN_TIMEOUT_S
        with self._cond:
            self._pending = None
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WorkerHung(f"reset: the planner worker's job did not finish within {_JOIN_TIMEOUT_S:.0f} s "
                                     "(backend hung); the episode was not reset")
                self._cond.wait(left)
            self.planner.reset(seed)
            done = self.timeline.counters
            for f in fields(done):
                setattr(self._past, f.name, getattr(self._past, f.name) + getattr(done, f.name))
            self.timeline.reset()
            self.emitter.reset()
            self._tick = 0
            self._stale_run, self._stale_last = 0, []
            self._mirror()

    # ------------------------------------------------------------ control side
    @property
    def tick(self) -> int:
        """The tick `step()` will serve next."""
        return self._tick

    def submit(self, observation: dict, tick: int | None = None) -> None:
        """Hand the observation of `tick` (default: the next tick) to the worker; raises ObservationError. Its
        arrays are copied first (`snapshot`): the worker plans from them later, on its own thread."""
        self._check_alive()
        observation = snapshot(observation)
        self._validator.validate(observation)
        with self._cond:
            if self._pending is not None:
                self.counters.dropped_observations += 1
            self._pending = (observation, self._tick if tick is None else int(tick))
            self.counters.submitted += 1
            self._cond.notify_all()

    def _check_alive(self) -> None:
        """Raise `WorkerDied` (naming its cause) when the started worker ended without `close()`."""
        t = self._thread
        if t is not None and not self._stop and (self._death is not None or not t.is_alive()):
            cause = self._death
            why = f"{type(cause).__name__}: {cause}" if cause is not None else "it ended"
            raise WorkerDied(f"the planner worker died ({why}): no new plan will come")

    def action_for_tick(self, tick: int, hold_empty: bool = False) -> np.ndarray | None:
        """The raw, safe action for `tick` from the aligned plan: the fallback when none is queued, or with
        `hold_empty` None (the caller then sends nothing, and re-anchoring counts no motion for the tick); None
        too when the guard's fallback has no target for a position dimension yet (runtime.safety)."""
        action = self.emitter.emit(tick, hold_empty)
        self._tick = tick + 1
        self._mirror()
        return action

    def delivered(self, tick: int, action: np.ndarray | None) -> None:
        """The caller's report of what the robot really got for `tick` (None: nothing) when it differs from
        `action_for_tick`'s answer — a failed send, a refused or clipped action (`ActionEmitter.delivered`)."""
        self.emitter.delivered(tick, action)

    def _mirror(self) -> None:
        """The timeline's and the emitter's counts into `counters`, as totals over every episode."""
        c, t, p = self.counters, self.timeline.counters, self._past
        c.ticks, c.empty_ticks, c.skipped_actions = p.ticks + t.ticks, p.empty_ticks + t.empty_ticks, \
            p.skipped_actions + t.skipped_actions
        c.chunks_installed, c.stale_chunks = p.chunks_installed + t.chunks_installed, p.stale_chunks + t.stale_chunks
        c.fallbacks, c.clipped = self.emitter.fallbacks, self.emitter.clipped  # the emitter never resets these

    def step(self, observation: dict) -> np.ndarray | None:
        """`submit` + `action_for_tick`: None only as `action_for_tick` says (send nothing this tick)."""
        tick = self._tick
        self.submit(observation, tick)
        return self.action_for_tick(tick)

    act = step

    @property
    def delay_ticks(self) -> int:
        """Ticks between an observation and its chunk taking over: fixed, or the largest of the last measured."""
        if self._fixed_delay is not None:
            return self._fixed_delay
        if self._delays:
            return max(self._delays)
        est = self.policy.stage_estimates_ms
        ms = est.get("images", 0.0) + est.get("prefix", 0.0) + est.get("denoise", 0.0)
        return max(1, math.ceil(ms * 1e-3 * self.tick_hz))

    # ------------------------------------------------------------ worker
    def _work(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                (observation, tick), self._pending = self._pending, None
                self._busy = True
            try:
                self._job(observation, tick)
            except Exception as exc:  # noqa: BLE001 — the worker must outlive any single job (incl. a dict
                # mutated after submit's check failing validation again)
                with self._cond:
                    self.last_error = exc
                    self.counters.worker_errors += 1
            except BaseException as exc:  # noqa: BLE001 — SystemExit & co. end the thread: `submit` names it
                with self._cond:
                    self.last_error = self._death = exc
                    self.counters.worker_errors += 1
                return
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _job(self, observation: dict, tick: int) -> None:
        executing, ran = self.timeline.executing(tick)
        t0 = time.perf_counter()
        result = self.planner.plan(observation, tick, executing, ran, self.delay_ticks)
        with self._cond:  # one consistent report for the control thread (`job_report`)
            self.last_job = result.info
            self.counters.faults += result.info.fault is not None
            self.counters.jobs += 1
        if result.chunk is None:
            return
        self.counters.resamples += result.info.resampled  # else the kept plan, refined
        installed = self.timeline.install(result.chunk)
        if result.info.resampled:  # the delay a fresh chunk takes; a refinement alone is faster
            measured = self.timeline.next_tick - tick
            job_ticks = math.ceil((time.perf_counter() - t0) * self.tick_hz)
            delay = max(measured, job_ticks)
            self._delays = [*self._delays[-4:], delay]
            with self._cond:
                self._stale_run = 0 if installed else self._stale_run + 1
                self._stale_last = [] if installed else \
                    [*self._stale_last[1 - HOPELESS_STALE:], (delay, len(result.chunk.actions))]
        elif installed:
            with self._cond:
                self._stale_run, self._stale_last = 0, []

    def starved_reason(self) -> str | None:
        """Why no row is queued when chunks did come but every one since the last installed landed stale
        (all its rows elapsed); None otherwise (none came: a slow or hung backend)."""
        with self._cond:
            run, last = self._stale_run, list(self._stale_last)
        if not run:
            return None
        d = self.policy.manifest.dims
        delay, rows = last[-1]
        return (f"{run} chunk{'s' * (run != 1)} arrived, all stale: planning takes {delay} ticks, a chunk holds "
                f"{rows} rows (n_action_steps {d.n_action_steps}, chunk_size {d.chunk_size})")

    def coverage_error(self) -> str | None:
        """A one-line reason to end the run when no chunk can cover the planning delay — the last
        HOPELESS_STALE fresh chunks all landed stale, each >= chunk_size ticks after its observation — else None."""
        with self._cond:
            last = list(self._stale_last)
        d = self.policy.manifest.dims
        if len(last) < HOPELESS_STALE or min(delay for delay, _ in last) < d.chunk_size:
            return None
        delay, hz = min(delay for delay, _ in last), self.tick_hz
        return (f"no chunk can cover the planning delay: planning takes {delay} ticks (~{delay / hz * 1e3:.0f} ms at "
                f"{hz:g} Hz) but a chunk holds {d.chunk_size} rows (n_action_steps {d.n_action_steps}, chunk_size "
                f"{d.chunk_size}), so the last {len(last)} chunks arrived with every row elapsed: lower the rate below "
                f"{hz * (d.chunk_size - 1) / delay:.3g} Hz (--fps), use a faster backend, or a model with a longer chunk")

    def job_report(self) -> tuple[int, int, int, object, BaseException | None]:
        """(jobs, job faults, worker errors, last job's TickInfo, last worker exception), read together."""
        with self._cond:
            c = self.counters
            return c.jobs, c.faults, c.worker_errors, self.last_job, self.last_error
