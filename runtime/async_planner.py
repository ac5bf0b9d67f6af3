"""One planning job of asynchronous execution: gate + (resample | keep) for one observation, around
`EdgePolicy` (the synchronous chain is reused as is, not rewritten).

Before the job the policy's queued plan is synced to what the robot will still be executing once a chunk
planned now can arrive (`delay` ticks later): the gate sees the real remaining plan, and a plan that will
run out during inference forces a resample in time. A fresh chunk is returned pinned to the observation's
tick; the seam mode decides how it continues the executing plan (`runtime.seam`). Faults, deadline
deferrals and retries of a failed resample are the policy's own rules (its pending-resample flag survives
the sync). Used by the threaded `AsyncEdgePolicy` and by the simulated closed loop in `evaluation.latency`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from runtime.policy import EdgePolicy, TickInfo
from runtime.seam import InpaintingBackend, blend, check_seam_mode
from runtime.timeline import TimedChunk


@dataclass(frozen=True)
class PlanResult:
    chunk: TimedChunk | None  # None: the gate kept the executing plan (or a fault left it in place)
    info: TickInfo  # the policy's record of the job (gate, stage times, fault)


class AsyncChunkPlanner:
    """Owns the policy while running: only one thread may call `plan` (the worker)."""

    def __init__(self, policy: EdgePolicy, seam: str = "inpaint", seam_width: int = 3):
        self.policy = policy
        self.seam = check_seam_mode(seam)
        if seam_width < 1:
            raise ValueError(f"seam_width must be >= 1, got {seam_width!r}")
        self.seam_width = int(seam_width)
        if seam == "inpaint" and not isinstance(policy.backend, InpaintingBackend):
            policy.backend = InpaintingBackend(policy.backend)
        self._ids = itertools.count()

    def reset(self, seed: int | None = None) -> None:
        self.policy.reset(seed)

    def plan(self, observation: dict, tick: int, executing: np.ndarray | None, ran: int, delay: int) -> PlanResult:
        """Gate/resample for the observation of `tick`. `executing`: normalised rows of the running plan from
        `tick` on (`ran` of its rows ran before); `delay`: ticks until a chunk planned now takes over.
        Raises `ObservationError` for a bad observation when the policy is set to raise."""
        delay = max(int(delay), 0)
        left = None if executing is None else executing[delay:]
        self.policy.sync_plan(left, ran + delay)
        backend = self.policy.backend
        if isinstance(backend, InpaintingBackend):
            backend.set_prior(executing if self.seam == "inpaint" else None, delay, self.seam_width)
        try:
            self.policy.step(observation)
        finally:
            if isinstance(backend, InpaintingBackend):
                backend.set_prior(None, 0)  # an unused prior never leaks into a later job
        info = self.policy.last_info
        chunk = self.policy.last_chunk
        if not info.resampled or chunk is None:
            return PlanResult(None, info)
        chunk = chunk[: self.policy.manifest.dims.n_action_steps]  # the same horizon as the synchronous queue
        if self.seam == "blend" and executing is not None and delay >= 1:
            chunk = blend(chunk, executing, delay, self.seam_width)
        return PlanResult(TimedChunk(tick, np.array(chunk, dtype=np.float32), next(self._ids)), info)
