"""One planning job of asynchronous execution: gate + (resample | keep) for one observation, around
`EdgePolicy` (the synchronous chain is reused as is, not rewritten).

Before the job the policy's queued plan is synced to what the robot will still be executing once a chunk
planned now can arrive (`delay` ticks later), while the consistency gate encodes the plan from the observation's
tick on (the pairing its threshold was calibrated on); a plan that will
run out during inference forces a resample in time — `margin` rows early: the next chunk is requested once
the plan has at most delay + margin rows left, so it lands with `margin` rows of the old plan still to run
(room for the seam to fade, slack for a delay estimate that was too short); two such refills in a row mean
every job refills (the plan is too short for the delay): a warning says the gate is never consulted. A fresh
chunk is returned pinned to the observation's tick, with n_action_steps rows — or, when those cannot last until
the next chunk lands, the rows of the model's chunk that bridge the delay (`rows_to_run`; the gate and the queue
still see the first n_action_steps rows only); the seam mode decides how it continues the executing plan
(`runtime.seam`) — narrowed to the rows that execute during inference plus `react_width` soft rows when the resample reacts to
a change (`reactive`, learned from the policy's gate decision just before the denoise via
`EdgePolicy.before_resample`). With refinement on, a kept plan that the policy refined is returned too, as a
continuation (`TimedChunk.continues`, `info.resampled` False) the timeline splices into the executing chunk, so
the refined rows execute. Faults, deadline deferrals and retries of a failed resample are the policy's own
rules (its pending-resample flag survives the sync). Used by the threaded `AsyncEdgePolicy` and by the
simulated closed loop in `evaluation.latency`.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np

from runtime.gate import GateDecision, jump_lag_mismatch
from runtime.policy import EdgePolicy, TickInfo
from runtime.seam import InpaintingBackend, blend, check_seam_mode, world_changed
from runtime.timeline import TimedChunk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanResult:
    chunk: TimedChunk | None  # None: the gate kept the executing plan unchanged (or a fault left it in place);
    # a chunk with info.resampled False: the kept plan, refined
    info: TickInfo  # the policy's record of the job (gate, stage times, fault)


def check_margin(margin: object, n_action_steps: int) -> None:
    """0 <= margin < n_action_steps: a larger margin would resample on every job and never consult the gate."""
    if isinstance(margin, bool) or not isinstance(margin, (int, np.integer)) or not 0 <= margin < n_action_steps:
        raise ValueError(f"margin must be an integer in [0, n_action_steps={n_action_steps}) rows, got {margin!r} "
                         "(margin >= n_action_steps would resample on every job and never consult the gate)")


def rows_to_run(n_action_steps: int, chunk_size: int, delay: int, margin: int) -> int:
    """Rows of a fresh chunk to execute: n_action_steps, or — when planning takes so long that they cannot last
    until the next chunk lands (2·delay + margin > n: this chunk lands `delay` ticks late and its successor takes
    as long again) — up to 2·delay + margin of the chunk_size rows the model produced, so the robot runs on rows
    it planned instead of standing still (LeRobot's async client runs its whole chunk). Never more than that."""
    return max(n_action_steps, min(chunk_size, 2 * max(delay, 0) + margin))


def horizon_mismatch(policy: EdgePolicy, delay: int, margin: int) -> str | None:
    """Why the gate's manifest threshold is too high for this delay, or None.

    A drift/consistency threshold from the manifest was calibrated on observation pairs < H ticks apart
    (`gate.<metric>.horizon`, absent = n_action_steps). With a delay of d ticks and a refill margin m, the
    gate compares against a plan only for n − d − m ticks; unchanged distances grow with the pair's distance,
    so a threshold calibrated over a longer horizon misses changes (re-export with `--gate-horizon`)."""
    n = policy.manifest.dims.n_action_steps
    runs = n - delay - margin
    for gate in getattr(policy.gate, "parts", None) or [policy.gate]:  # an `any:` gate: each calibrated part
        cal = policy.manifest.gate_calibration.get(gate.name)
        if cal is None or cal.default_threshold is None or getattr(gate, "threshold", None) != cal.default_threshold:
            continue  # not a calibrated gate, or an explicit threshold: the caller chose it
        calibrated = cal.horizon or n
        if runs >= 2 and calibrated > runs:
            return (f"gate {gate.spec} was calibrated on observation pairs < {calibrated} ticks apart, but with delay "
                    f"{delay} and margin {margin} a plan is compared for {runs} ticks: its threshold is too high for "
                    f"this delay (re-export with --gate-horizon {runs})")
    return None


class AsyncChunkPlanner:
    """Owns the policy while running: only one thread may call `plan` (the worker)."""

    def __init__(self, policy: EdgePolicy, seam: str = "inpaint", seam_width: int = 3, reactive: bool = True,
                 react_width: int = 1, margin: int = 0):
        self.policy = policy
        self.reactive = bool(reactive)  # False: full seam even when the gate fired because the world changed
        if seam_width < 1:
            raise ValueError(f"seam_width must be >= 1, got {seam_width!r}")
        if not 0 <= react_width <= seam_width:
            raise ValueError(f"react_width must be in [0, seam_width={seam_width}], got {react_width!r}")
        check_margin(margin, policy.manifest.dims.n_action_steps)
        self._warned_margin = False
        self._refills = 0  # jobs in a row that had to refill the plan (`_note_refill`)
        self._warned_horizon = False
        self._warned_rows = False
        self.react_width = int(react_width)  # soft rows after the delay on a chunk that reacts to a change
        self.margin = int(margin)
        self._due_change = False  # a change-triggered resample was deferred or failed: its retry still reacts
        self._job: tuple[np.ndarray | None, int] = (None, 0)
        self._last_check: int | None = None  # tick of the last job whose gate checked or that resampled
        self.last_reacted = False  # the last job's chunk was planned as a reaction (narrow seam)
        self.seam = check_seam_mode(seam)
        self.seam_width = int(seam_width)
        if seam == "inpaint" and not isinstance(policy.backend, InpaintingBackend):
            policy.backend = InpaintingBackend(policy.backend)
        self._ids = itertools.count()

    def reset(self, seed: int | None = None) -> None:
        self.policy.reset(seed)
        self._due_change = self.last_reacted = False
        self._last_check = None
        self._refills = 0

    def _before_resample(self, decision: GateDecision) -> None:
        """Called by the policy after its gate decided to resample, before the denoise."""
        react = world_changed(decision.reason, decision.distance, decision.threshold) or \
            (decision.reason == "pending" and self._due_change)
        self.last_reacted = react = react and self.reactive
        executing, delay = self._job
        backend = self.policy.backend
        if react and self.seam == "inpaint" and isinstance(backend, InpaintingBackend):
            backend.set_prior(executing, delay, self.react_width)  # the in-flight rows + a short fade

    def plan(self, observation: dict, tick: int, executing: np.ndarray | None, ran: int, delay: int) -> PlanResult:
        """Gate/resample for the observation of `tick`. `executing`: normalised rows of the running plan from
        `tick` on (`ran` of its rows ran before); `delay`: ticks until a chunk planned now takes over.
        Raises `ObservationError` for a bad observation when the policy is set to raise."""
        delay = max(int(delay), 0)
        if delay >= 1 and not self._warned_horizon:
            why = horizon_mismatch(self.policy, delay, self.margin) or jump_lag_mismatch(
                self.policy.gate, self.policy.manifest.gate_calibration, max(delay, self.policy.gate.check_every))
            if why is not None:
                self._warned_horizon = True
                log.warning("%s", why)
        n = self.policy.manifest.dims.n_action_steps
        # the plan proper: the executing chunk's rows before n_action_steps (rows after them only bridge a long
        # delay, `rows_to_run`): the gate and the policy's queue see what they were calibrated on, never more
        plan = None if executing is None or ran >= n else executing[: n - ran]
        left = None if plan is None else plan[delay:]
        if left is not None and len(left) <= self.margin:
            left = None  # the plan runs out within `margin` ticks of a chunk planned now landing: refill now
        # queue = rows after the delay; the consistency gate encodes the rows from the observation's tick (as
        # calibrated); plan age ran + delay (interval:k lands its chunk at age k); check_every counts real ticks
        since_check = ran if self._last_check is None else max(tick - self._last_check, 0)
        self.policy.sync_plan(left, ran + delay, gate_plan=plan if delay else None, ticks_since_check=since_check)
        backend = self.policy.backend
        if isinstance(backend, InpaintingBackend):
            backend.set_prior(executing if self.seam == "inpaint" else None, delay, self.seam_width)
        self._job, self.last_reacted = (executing, delay), False
        self.policy.before_resample = self._before_resample
        try:
            self.policy.step(observation)
        finally:
            self.policy.before_resample = None
            self._job = (None, 0)
            if isinstance(backend, InpaintingBackend):
                backend.set_prior(None, 0)  # an unused prior never leaks into a later job
        info = self.policy.last_info
        chunk = self.policy.last_chunk
        self._note_refill(left is None and info.resampled, delay)
        if info.gate_checked or info.resampled:
            self._last_check = tick
        if not info.resampled or chunk is None:
            if world_changed(info.gate_reason, info.gate_distance, info.gate_threshold) or self.last_reacted:
                self._due_change = True  # deferred or failed: the retry ("pending") still reacts
            if info.refined and left is not None and plan is not None:
                return PlanResult(self._refined(tick, plan, delay), info)
            return PlanResult(None, info)
        self._due_change = False
        # the synchronous queue's n_action_steps rows, or more when they cannot bridge the delay (`rows_to_run`)
        chunk = chunk[: self._rows_to_run(delay)]
        if self.seam == "blend" and executing is not None and delay >= 1:
            chunk = blend(chunk, executing, delay, self.react_width if self.last_reacted else self.seam_width)
        return PlanResult(TimedChunk(tick, np.array(chunk, dtype=np.float32), next(self._ids)), info)

    def _rows_to_run(self, delay: int) -> int:
        """`rows_to_run` for this policy; warns once when even the whole chunk cannot last until the next lands."""
        d = self.policy.manifest.dims
        rows = rows_to_run(d.n_action_steps, d.chunk_size, delay, self.margin)
        if rows > d.n_action_steps and not self._warned_rows:
            self._warned_rows = True
            log.warning("planning takes %d ticks: n_action_steps %d rows cannot last until the next chunk lands, so up "
                        "to %d rows of each chunk run (chunk_size %d)%s", delay, d.n_action_steps, rows, d.chunk_size,
                        "" if rows >= 2 * delay + self.margin else ": still too few, the robot pauses between chunks "
                        "(lower the rate, use a faster backend or a model with a longer chunk)")
        return rows

    def _note_refill(self, forced: bool, delay: int) -> None:
        """Count jobs in a row that had to refill the plan (it had <= delay + margin rows left, or none), so the
        gate was not consulted; warn once when two did — then every job does: the plan is too short for this
        delay and margin. Judged on the jobs themselves: whether the next one must refill depends on how many rows
        ran before it (at least one, more when a slow job delays it), not on delay + margin alone."""
        self._refills = self._refills + 1 if forced else 0
        if self._refills >= 2 and not self._warned_margin:
            self._warned_margin = True
            log.warning("delay %d + margin %d leave no room in a plan of n_action_steps %d: every job resamples, the "
                        "gate %s is never consulted (lower --margin or speed up inference)", delay, self.margin,
                        self.policy.manifest.dims.n_action_steps, self.policy.gate.spec)

    def _refined(self, tick: int, executing: np.ndarray, delay: int) -> TimedChunk | None:
        """The kept plan, refined by the policy against this observation, as a continuation of the rows
        `executing` gave for `tick`: the rows that run while the job is in flight (the first `delay`, and the
        one the policy's tick consumed) stay as they are, the rest are the refined queue — so nothing is
        replayed, no tick is left empty, and no seam is needed (`ActionTimeline.install` splices it)."""
        refined = self.policy.queued_actions(normalised=True)
        if not len(refined):
            return None  # the tick consumed the last row: nothing refined is left to run
        rows = np.concatenate([executing[: delay + 1], refined]).astype(np.float32)
        return TimedChunk(tick, rows, next(self._ids), continues=True)
