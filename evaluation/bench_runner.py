"""The gate benchmark's closed loop: one `EdgePolicy` through one `simtask.bench_env` episode, with each
resample a change-detecting gate decided attributed to the change that preceded it, and per-kind summaries with
95 % CIs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from evaluation.gate_stats import wilson
from runtime.policy import EdgePolicy

FORCED_REASONS = ("queue_empty", "pending", "instruction_changed")  # resamples the gate did not decide
# gate reasons of a part that looked at the observation (runtime.gate: a threshold gate's reason is its name; an
# `any:` gate reports the part that fired, a change part before a schedule). The rest of the gate-decided
# resamples (always, interval, random, no_plan_embedding) fire on the clock, not on a change: never blamed on one.
CHANGE_REASONS = ("drift", "consistency", "jump", "pixel", "pixel_shape_changed", "state")
ATTRIBUTION_WINDOW = 5  # a gated resample up to this many ticks after a change ends is blamed on it


def attribute(tick: int, changes: Sequence[dict], window: int = ATTRIBUTION_WINDOW) -> str:
    """'relevant' / 'irrelevant' (the latest change that started at or before `tick` and ended at most
    `window` ticks before it) or 'none'. A change is first visible to the policy at tick index == its tick."""
    live = [c for c in changes if c["tick"] <= tick <= c["end"] + window]
    if not live:
        return "none"
    return "relevant" if max(live, key=lambda c: c["tick"])["relevant"] else "irrelevant"


def run_episode(policy: EdgePolicy, env: Any, seed: int, kind: str, trace: bool = False) -> dict:
    """One closed-loop episode of `kind`; per-episode numbers (and the per-tick trace when `trace`)."""
    obs = env.reset(seed, kind)
    policy.reset(seed=seed)  # same noise stream / random-gate draws for every policy on this episode
    changes = [{"tick": c.tick, "end": c.end, "type": c.type, "relevant": c.relevant} for c in env.schedule]
    ticks: list[dict] = []
    ms: list[float] = []
    resampled_at: list[int] = []
    blame = {"relevant": 0, "irrelevant": 0, "none": 0, "clock": 0}
    last_rel = max((c.end for c in env.schedule if c.relevant), default=None)
    reached: int | None = None  # first tick within the success radius from the last relevant change's end on
    done, i, held = False, 0, 0
    while not done:
        goal_distance = float(np.linalg.norm(env.agent_position - env.goal_position))
        action = policy.step(obs)  # None: nothing sent this tick (the env's agent stays where it is)
        held += action is None
        info = policy.last_info
        ms.append(info.total_ms)
        if info.resampled:
            resampled_at.append(i)
            if info.gate_reason in CHANGE_REASONS:
                blame[attribute(i, changes)] += 1
            elif info.gate_reason not in FORCED_REASONS:
                blame["clock"] += 1
        if trace:
            ticks.append({"tick": i, "resampled": info.resampled, "reason": info.gate_reason,
                          "distance": info.gate_distance, "threshold": info.gate_threshold,
                          "goal_distance": round(goal_distance, 5)})
        obs, done, step = env.step(action)
        i += 1
        if reached is None and last_rel is not None and env.t >= last_rel and step["within"]:
            reached = env.t
    c = policy.episode_counters
    relevant = [ch for ch in changes if ch["relevant"]]
    reactions = []
    for ch in relevant:  # ticks from the change to the first resample (gate-decided or forced) at or after it
        after = [t for t in resampled_at if t >= ch["tick"]]
        reactions.append(after[0] - ch["tick"] if after else None)
    rec = {"seed": int(seed), "kind": kind, "success": bool(env.success), "steps": int(env.t),
           "deadline": env.deadline, "reach_deadlines": [dict(d) for d in env.reach_deadlines],
           "failed_deadline": env.failed_deadline, "changes": changes,
           # from the last relevant change's end to the first tick within the radius (arm rule ignored)
           "recovery_ticks": reached - last_rel if reached is not None and last_rel is not None else None,
           "reaction_ticks": reactions, "resamples": c.resamples, "gated_relevant": blame["relevant"],
           "gated_irrelevant": blame["irrelevant"], "gated_other": blame["none"], "gated_clock": blame["clock"],
           "prefix_passes": c.prefix_passes, "delta_passes": c.delta_passes,
           "plan_encoder_passes": c.plan_encoder_passes, "gate_checks": c.gate_checks,
           "faults": c.faults, "held": held, "mean_tick_ms": float(np.mean(ms)) if ms else 0.0}
    if trace:
        rec["trace"] = ticks
    return rec


def mean_ci(values: Sequence[float | int | None]) -> dict | None:
    """Mean and its normal-approximation 95 % interval over the values that are not None (lo / hi None below 2)."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return None
    if v.size < 2:  # no spread from one value: null, not NaN (gate_bench.json is strict JSON)
        return {"mean": float(v.mean()), "lo": None, "hi": None, "n": int(v.size)}
    half = 1.96 * float(v.std(ddof=1)) / math.sqrt(v.size)
    return {"mean": float(v.mean()), "lo": float(v.mean()) - half, "hi": float(v.mean()) + half, "n": int(v.size)}


def summarize(episodes: Sequence[dict]) -> dict:
    """Aggregate one policy's episodes of one kind (or of all kinds)."""
    n = len(episodes)
    if n == 0:
        return {}
    k = sum(e["success"] for e in episodes)
    checks = sum(e["gate_checks"] for e in episodes)
    gated = sum(e["gated_relevant"] + e["gated_irrelevant"] + e["gated_other"] + e.get("gated_clock", 0)
                for e in episodes)
    return {
        "n_episodes": n, "success_rate": k / n, "success_ci": wilson(k, n),
        "resamples": mean_ci([e["resamples"] for e in episodes]),
        "gated_irrelevant": mean_ci([e["gated_irrelevant"] for e in episodes]),
        "gated_relevant": mean_ci([e["gated_relevant"] for e in episodes]),
        "gated_other": mean_ci([e["gated_other"] for e in episodes]),
        "gated_clock": mean_ci([e.get("gated_clock", 0) for e in episodes]),
        "reaction_ticks": mean_ci([r for e in episodes for r in e["reaction_ticks"]]),
        "no_reaction": sum(r is None for e in episodes for r in e["reaction_ticks"]),
        "recovery_ticks": mean_ci([e["recovery_ticks"] for e in episodes]),
        "prefix_passes": sum(e["prefix_passes"] for e in episodes) / n,
        "delta_passes": sum(e["delta_passes"] for e in episodes) / n,
        # the consistency gate's act-CLS of the remaining plan (plan_only wiring): compute a kept tick still pays
        "plan_encoder_passes": sum(e.get("plan_encoder_passes", 0) for e in episodes) / n,
        "ticks": sum(e["steps"] for e in episodes) / n,
        "fire_rate": gated / checks if checks else None,
        "ms_per_tick": float(np.mean([e["mean_tick_ms"] for e in episodes])),
        "faults": sum(e["faults"] for e in episodes),
    }
