"""Chunks for a robot that executes actions itself (LeRobot's robot client, or `runtime robot`'s worker):
one EdgePolicy tick per observation, its plan lined up with the robot's action timesteps.

Timesteps: an observation is stamped with the last action the robot executed (t). The action the policy
emits for it is numbered t + 1 (the next one the robot runs), the queued rest t + 2, …; the robot drops
any that elapsed meanwhile. Before gating, the policy's queue is advanced past the actions the robot
executed since the last chunk, so the gate compares against what is left of the plan the robot runs.
The gate keeps the plan → an empty chunk (the robot keeps its queue); a resample or a refined plan →
the whole remaining plan up to its first bad row (never a fallback: no stop pose or stale hold is sent ahead;
a bad first row sends nothing and the next observation plans afresh); `must_go` (the robot's queue ran dry)
forces a resample. The robot drops the rows that elapsed while the server planned, so when planning takes so
long that n_action_steps rows cannot last until the next chunk lands, a fresh chunk carries more of the model's
chunk_size rows (`rows_to_run`, as the async robot path; never more than the client's actions_per_chunk), the
planning delay counted in ticks of `fps`; the gate and the policy's queue still see n_action_steps rows only.
An observation whose
timestep is not newer than the last one planned from without a fault (a duplicate, or a stale one
overtaken on the wire) is skipped — no inference, an empty chunk — as lerobot's own policy server skips predicted timesteps:
advancing by a negative count would shift the plan against the robot's timeline. A timestep beyond the last
action sent to this client is refused naming `timestep` (the robot cannot have run an action it never received;
one such observation would otherwise make every later one stale until must_go).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.async_planner import rows_to_run
from runtime.observation import ObservationError
from runtime.policy import EdgePolicy
from runtime.robot_interface import RobotInterface
from runtime.safety import ActionGuard

STALE = "stale"  # Chunk.gate_reason of a skipped observation (timestep not newer than the last planned)
MARGIN = 1  # rows of slack in `rows_to_run`: the observation's transfer and wait are not in the measured delay
DELAY_WINDOW = 5  # fresh plans whose planning time sets the delay estimate (the largest of them)

log = logging.getLogger(__name__)


@dataclass
class Chunk:
    actions: np.ndarray  # [n, action_dim] raw, inside action_bounds; n == 0 → keep the plan
    first_timestep: int
    resampled: bool
    forced: bool
    gate_reason: str
    latency_ms: float


class ChunkPlanner:
    def __init__(self, policy: EdgePolicy, interface: RobotInterface, state_names: tuple[str, ...] | None = None,
                 max_actions: int | None = None, fps: float | None = None):
        self.policy = policy
        self.interface = interface
        self.state_names = state_names
        self.max_actions = max_actions
        self.fps = float(fps or interface.fps or 30.0)  # the robot's rate: planning time -> rows that elapse
        self._plan_s: deque[float] = deque(maxlen=DELAY_WINDOW)  # planning time of the last fresh plans
        self._warned_rows = False
        m = policy.manifest
        # clips the queued rows sent ahead (a non-finite one ends the chunk); separate from the policy's guard
        self._ahead_guard = ActionGuard(m.action_bounds, m.stop_action, "stop", "clip")
        self._next_timestep: int | None = None  # timestep of the policy queue's head
        self.last_timestep: int | None = None  # the newest observation planned from
        self.sent_through: int | None = None  # the newest action timestep sent to the robot

    def realign(self) -> None:
        """Forget which timestep the queue's head stands for (a client that reconnected): the next observation
        resamples; observations older than the newest planned from are still skipped."""
        self._next_timestep = None

    def plan(self, robot_obs: Mapping[str, Any], timestep: int, must_go: bool) -> Chunk:
        t0 = time.perf_counter()
        p = self.policy
        obs = self.interface.observation(robot_obs, state_names=self.state_names)
        nxt = timestep + 1  # the next action the robot will execute
        if self.sent_through is not None and timestep > self.sent_through:
            raise ObservationError("timestep", f"{timestep} is beyond the last action sent to this client "
                                               f"(#{self.sent_through}): a robot's timestep is the last action it ran")
        if not must_go and self.last_timestep is not None and timestep <= self.last_timestep:
            return Chunk(np.zeros((0, p.manifest.dims.action_dim), dtype=np.float32), nxt, False, False, STALE,
                         (time.perf_counter() - t0) * 1e3)
        try:
            if must_go or self._next_timestep is None:
                p.advance(p.manifest.dims.chunk_size)  # queue dry on the robot → empty here too → resample
            else:
                p.advance(nxt - self._next_timestep)
            self._next_timestep = nxt  # already advanced: a failing step must not advance it a second time
            action = p.step(obs)
        except BaseException:
            self._next_timestep = None  # what the robot holds is unknown now: the next observation resamples
            raise
        info = p.last_info
        new_plan = info.resampled or info.refined
        # a bad first row of a new plan: its fallback (a stop pose, or a hold of an older chunk's row) is no target
        # for the robot — nothing is sent (it keeps its queue), as after a fault
        bad_first = new_plan and info.fallback
        if info.fault or bad_first:
            # a faulted tick may have left the robot with nothing (a must_go answered empty): the next
            # observation, even with the same timestep, is planned afresh — never skipped as stale
            self._next_timestep = None
        else:
            self._next_timestep = nxt + 1
            self.last_timestep = timestep if self.last_timestep is None else max(timestep, self.last_timestep)
        rows = np.zeros((0, p.manifest.dims.action_dim), dtype=np.float32)
        if bad_first:
            p.keep_queued(0)
        elif new_plan:
            queued = p.queued_actions()
            ahead = self._good_rows(queued)  # up to the first bad row: the robot's queue runs dry there instead
            if info.resampled and len(ahead) == len(queued):  # and the rows that bridge a long planning delay
                ahead.extend(self._bridge_rows(time.perf_counter() - t0))
            rows = np.stack([action, *ahead])[: self.max_actions]
            p.keep_queued(len(rows) - 1)  # the gate then judges the plan the robot really holds
            self.sent_through = max(nxt + len(rows) - 1, self.sent_through or 0)
        return Chunk(rows, nxt, info.resampled, bool(must_go), info.gate_reason, (time.perf_counter() - t0) * 1e3)

    def _bridge_rows(self, plan_s: float) -> list[np.ndarray]:
        """The fresh chunk's rows after n_action_steps that `rows_to_run` keeps for the planning delay (the largest
        of the last DELAY_WINDOW fresh plans, this one included, in ticks of `fps`), up to the first bad row."""
        p, d = self.policy, self.policy.manifest.dims
        self._plan_s.append(plan_s)
        delay = math.ceil(max(self._plan_s) * self.fps)
        total = rows_to_run(d.n_action_steps, d.chunk_size, delay, MARGIN)
        if p.last_chunk is None or total <= d.n_action_steps:
            return []
        if not self._warned_rows:
            self._warned_rows = True
            log.warning("planning takes %d ticks at %g fps: n_action_steps %d rows cannot last until the next chunk "
                        "lands, so up to %d rows of each chunk are sent (chunk_size %d, actions_per_chunk %s)", delay,
                        self.fps, d.n_action_steps, total, d.chunk_size, self.max_actions)
        return self._good_rows(p.unnormalize(p.last_chunk[d.n_action_steps:total]))

    def _good_rows(self, raw: np.ndarray) -> list[np.ndarray]:
        """Raw rows to send ahead, clipped into the bounds, up to the first non-finite one."""
        rows = []
        for a in raw:
            res = self._ahead_guard.check(a)
            if res.fallback:
                break
            rows.append(res.action)
        return rows
