"""The simulated closed loop with an inference latency of L ticks, on virtual time (deterministic, no threads).

It drives the same pieces as the threaded `runtime.async_policy.AsyncEdgePolicy` — `AsyncChunkPlanner` (gate +
resample around `EdgePolicy`), `ActionTimeline` and `ActionEmitter` — but a chunk planned from the observation
of tick k is installed at tick k + L instead of when a thread finishes. Execution modes:
- `sync`: synchronous-blocking; the robot stops (the guard's stop action) for the L ticks of every resample,
  then executes the chunk from its first row;
- `async`: the old plan keeps running during inference, the new chunk starts from its first row on arrival
  (no alignment: actions planned for tick k run at k + L);
- `aligned`: as `async`, but the L rows that elapsed are skipped;
- `aligned+blend`, `aligned+inpaint`: aligned, with seam handling (`runtime.seam`);
- `aligned+reanchor` (`+blend`): aligned, and the displacement the skipped rows assumed but the robot did not make is
  added to the following rows (`ActionEmitter(reanchor=True)`, displacement actions only; not with waypoints);
- `+slew` (`aligned+reanchor+slew`, `aligned+slew`): each tick's action (with waypoints: position target) moves at
  most `slew` × the plans' mean row-to-row step from the last one (`runtime.timeline.slew_step`); with re-anchoring
  what it holds back is carried.
`waypoints=True` is the latency-sensitive variant: the simulated robot is position-controlled (like an SO-100
arm) — a chunk becomes absolute waypoints (planning-time position + the cumulated, clipped displacements) and
each tick moves toward its row's waypoint, so a late row drives the robot back to where it was planned to be.
Cost model: a resample occupies the worker for L ticks (at least one); a job where the gate keeps the plan
costs one tick (its prefix pass is small next to the resample). At L = 0 every mode is the synchronous runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.async_planner import AsyncChunkPlanner, PlanResult
from runtime.policy import EdgePolicy
from runtime.timeline import ActionEmitter, ActionTimeline, slew_step

MODES = ("sync", "async", "aligned", "aligned+blend", "aligned+inpaint", "aligned+reanchor", "aligned+reanchor+blend",
         "aligned+reanchor+slew", "aligned+slew")
PAUSE, EMPTY = -2, -1  # chunk ids recorded for a paused tick (sync mode) and a tick with nothing queued


@dataclass(frozen=True)
class Mode:
    name: str
    align: bool
    seam: str
    pause: bool
    reanchor: bool = False
    slew: bool = False


def parse_mode(name: str) -> Mode:
    if name not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {name!r}")
    parts = name.split("+")
    seam = next((p for p in parts if p in ("blend", "inpaint")), "none")
    return Mode(name, align=parts[0] == "aligned", seam=seam, pause=name == "sync", reanchor="reanchor" in parts,
                slew="slew" in parts)


class LatencyLoop:
    """One policy under one execution mode and latency; `episode()` returns a per-episode record."""

    def __init__(self, policy: EdgePolicy, mode: str, latency: int, seam_width: int = 3, waypoints: bool = False,
                 *, react_width: int = 1, margin: int = 0, slew: float = 2.0):
        if latency < 0:
            raise ValueError(f"latency must be >= 0 ticks, got {latency!r}")
        self.mode = parse_mode(mode)
        self.latency = int(latency)
        self.planner = AsyncChunkPlanner(policy, seam=self.mode.seam, seam_width=seam_width, react_width=react_width,
                                         margin=margin)
        self.timeline = ActionTimeline(align=self.mode.align)
        if self.mode.reanchor and waypoints:
            raise ValueError("mode aligned+reanchor is for displacement actions; the waypoint variant is absolute")
        self.emitter = ActionEmitter(policy, self.timeline, reanchor=self.mode.reanchor,
                                     slew=None if waypoints or not self.mode.slew else slew)
        self.slew = slew  # the waypoint variant limits its position targets itself (the emitter's rows are not sent)
        self.stop = policy.guard.stop_action
        self.waypoints = bool(waypoints)
        self.state_key = policy.manifest.state_key
        self._paths: dict[int, np.ndarray] = {}

    def episode(self, env: Any, seed: int, perturb: bool) -> dict:
        obs = env.reset(seed=seed, perturb=perturb)
        self.planner.reset(seed)  # the same noise stream for every mode and latency on this episode
        self.timeline.reset()
        self.emitter.reset()
        self._paths.clear()
        self._target: np.ndarray | None = None  # waypoint variant: the position target sent last
        self._wp_steps = [0.0, 0]  # waypoint variant, slew: sum and count of the plans' waypoint-to-waypoint steps
        inflight: tuple[int, PlanResult] | None = None
        free_at = tick = resamples = refills = faults = held = 0
        actions: list[np.ndarray] = []
        chunk_ids: list[int] = []
        done = False
        while not done:
            if inflight is not None and inflight[0] <= tick:
                self.timeline.install(inflight[1].chunk)
                inflight = None
            if inflight is None and tick >= free_at:
                executing, ran = self.timeline.executing(tick)
                res = self.planner.plan(obs, tick, executing, ran, 0 if self.mode.pause else self.latency)
                faults += res.info.fault is not None
                free_at = tick + 1
                if res.chunk is not None and not res.info.resampled:
                    # the running plan refined (a continuation, spliced into it): the latency modelled here is a
                    # resample's; with waypoints the refined rows keep the running chunk's path
                    self.timeline.install(res.chunk)
                elif res.chunk is not None:
                    resamples += 1
                    # the plan ran out (or the first plan); a retried gate resample ("pending") is a gate decision
                    refills += res.info.gate_reason == "queue_empty"
                    if self.waypoints:
                        path = self._path(obs, res.chunk.actions, env.config.max_step)
                        self._paths[res.chunk.chunk_id] = path
                        self._wp_steps[0] += float(np.linalg.norm(np.diff(path, axis=0), axis=1).sum())
                        self._wp_steps[1] += len(path) - 1
                    free_at = tick + max(self.latency, 1)
                    if self.mode.pause:
                        obs, done, tick = self._pause(env, tick, actions, chunk_ids)
                        self.timeline.install(res.chunk)
                        if done:
                            break
                    elif self.latency == 0:
                        self.timeline.install(res.chunk)
                    else:
                        inflight = (tick + self.latency, res)
            action = self.emitter.emit(tick)  # None: no safe target (position dims, nothing passed yet)
            if self.waypoints:
                action = self._toward_waypoint(env)
            held += action is None
            actions.append(np.zeros_like(self.stop) if action is None else action)  # what the agent did: stay
            chunk_ids.append(self.emitter.last.chunk_id)
            obs, done, _ = env.step(action)  # None: nothing sent, the agent stays
            tick += 1
        return self._record(env, seed, perturb, resamples, faults, actions, chunk_ids, refills, held)

    def _path(self, obs: dict, rows: np.ndarray, max_step: float) -> np.ndarray:
        """Chunk → absolute waypoints: the planning-time position plus the cumulated displacements, each
        clipped as the environment clips it."""
        d = self.emitter.unnormalize(rows).astype(np.float64)
        norm = np.linalg.norm(d, axis=1, keepdims=True)
        d = d * np.minimum(1.0, max_step / np.maximum(norm, 1e-12))
        return np.asarray(obs[self.state_key], dtype=np.float64) + np.cumsum(d, axis=0)

    def _toward_waypoint(self, env: Any) -> np.ndarray:
        """Position control: move toward this tick's waypoint (hold still when nothing is queued), in bounds."""
        last = self.emitter.last
        if last is None or last.chunk_id < 0:
            return np.zeros_like(self.stop)
        target = self._paths[last.chunk_id][last.index]
        if self.mode.slew and self._target is not None and self._wp_steps[1]:
            target = slew_step(self._target, target, self.slew * self._wp_steps[0] / self._wp_steps[1])
        self._target = target
        step = target - env.agent_position
        return np.clip(step, self.emitter.guard.low, self.emitter.guard.high).astype(np.float32)

    def _pause(self, env: Any, tick: int, actions: list, chunk_ids: list) -> tuple[dict, bool, int]:
        """Synchronous blocking: the robot stands still while the model thinks; the timeline's ticks pass."""
        obs, done = None, False
        for _ in range(self.latency):
            self.timeline.take(tick)
            actions.append(self.stop.copy())
            chunk_ids.append(PAUSE)
            obs, done, _ = env.step(self.stop)
            tick += 1
            if done:
                break
        return obs, done, tick

    def _record(self, env: Any, seed: int, perturb: bool, resamples: int, faults: int,
                actions: list[np.ndarray], chunk_ids: list[int], refills: int = 0, held: int = 0) -> dict:
        seam, within = seam_steps(np.asarray(actions), np.asarray(chunk_ids))
        ptick = env.perturb_tick
        ok = bool(env.success)
        return {"seed": int(seed), "perturbed": perturb, "success": ok, "steps": int(env.t), "perturb_tick": ptick,
                "recovery_ticks": (int(env.t) - ptick) if ok and ptick is not None else None,
                "resamples": resamples, "refills": refills, "faults": faults, "held": held,
                "empty_ticks": int(np.sum(np.asarray(chunk_ids) == EMPTY)),
                "paused_ticks": int(np.sum(np.asarray(chunk_ids) == PAUSE)),
                "seam_steps": seam.tolist(), "within_steps": within.tolist()}


def seam_steps(actions: np.ndarray, chunk_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|Δaction| (L2, raw units) between consecutive executed plan actions: (at a chunk boundary, within one
    chunk). Ticks that executed no plan row (paused, empty queue) start no pair."""
    if len(actions) < 2:
        return np.zeros(0), np.zeros(0)
    step = np.linalg.norm(np.diff(actions, axis=0), axis=1)
    prev, cur = chunk_ids[:-1], chunk_ids[1:]
    planned = (prev >= 0) & (cur >= 0)
    return step[planned & (prev != cur)], step[planned & (prev == cur)]


def summarize(episodes: Sequence[dict]) -> dict:
    """Aggregate one (gate, mode, latency) cell."""
    n = len(episodes)
    rec = [e["recovery_ticks"] for e in episodes if e["recovery_ticks"] is not None]
    seam = np.concatenate([np.asarray(e["seam_steps"], dtype=np.float64) for e in episodes] or [np.zeros(0)])
    within = np.concatenate([np.asarray(e["within_steps"], dtype=np.float64) for e in episodes] or [np.zeros(0)])

    def stat(a: np.ndarray, fn: Callable[[np.ndarray], Any]) -> float | None:
        return float(fn(a)) if a.size else None

    return {
        "n_episodes": n,
        "success_rate": sum(e["success"] for e in episodes) / max(n, 1),
        "recovery_ticks": float(np.mean(rec)) if rec else None,
        "resamples_per_episode": sum(e["resamples"] for e in episodes) / max(n, 1),
        "refills_per_episode": sum(e.get("refills", 0) for e in episodes) / max(n, 1),  # resamples because the plan ran out
        "empty_ticks_per_episode": sum(e["empty_ticks"] for e in episodes) / max(n, 1),
        # ticks with nothing sent (a position robot's emitter with no safe target yet)
        "held_ticks_per_episode": sum(e.get("held", 0) for e in episodes) / max(n, 1),
        "paused_ticks_per_episode": sum(e["paused_ticks"] for e in episodes) / max(n, 1),
        "faults": sum(e["faults"] for e in episodes),
        "seam_jump_mean": stat(seam, np.mean), "seam_jump_p95": stat(seam, lambda a: np.percentile(a, 95)),
        "within_step_mean": stat(within, np.mean), "within_step_p95": stat(within, lambda a: np.percentile(a, 95)),
        "n_seams": int(seam.size),
    }
