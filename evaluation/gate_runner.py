"""Runs gate policies through closed-loop simtask episodes on paired seeds and aggregates per-episode records
into one policy's numbers (success, resamples, perturbation-to-resample latency, wall time)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from evaluation.gate_policies import PolicySpec
from evaluation.gate_stats import mean_or_none
from runtime.policy import EdgePolicy

FORCED_REASONS = ("queue_empty", "pending")  # resamples the gate did not decide


def run_episode(policy: EdgePolicy, env: Any, seed: int, perturb: bool, timeline: bool = False) -> dict:
    """One closed-loop episode; per-episode numbers (and the per-tick trace when `timeline`)."""
    obs = env.reset(seed=seed, perturb=perturb)
    policy.reset(seed=seed)  # same noise stream / random-gate draws for every policy on this episode
    ticks: list[dict] = []
    ms: list[float] = []
    resample_ticks: list[int] = []
    gated = forced = bad = held = 0
    done = False
    i = 0
    while not done:
        goal_distance = float(np.linalg.norm(env.agent_position - env.goal_position)) if timeline else 0.0
        action = policy.step(obs)  # None: nothing sent this tick (the env's agent stays where it is)
        info = policy.last_info
        if action is None:
            held += 1
        elif not (action.shape == (policy.manifest.dims.action_dim,) and np.all(np.isfinite(action))):
            bad += 1
        ms.append(info.total_ms)
        if info.resampled:
            resample_ticks.append(i)
            if info.gate_reason in FORCED_REASONS:
                forced += 1
            else:
                gated += 1
        obs, done, _ = env.step(action)
        if timeline:
            ticks.append({"tick": i, "resampled": info.resampled, "held": action is None, "reason": info.gate_reason,
                          "checked": info.gate_checked, "distance": info.gate_distance,
                          "threshold": info.gate_threshold, "prefix": info.prefix_ran,
                          "total_ms": round(info.total_ms, 3),
                          "goal_distance": round(goal_distance, 5)})  # as observed this tick
        i += 1
    c = policy.episode_counters
    ptick = env.perturb_tick
    # the observation returned by env step `ptick` is the first to show the jump; the policy consumes it at
    # tick index `ptick` (0-based), so latency 0 = resampled on the very first perturbed observation
    latency = None
    if ptick is not None:
        after = [t for t in resample_ticks if t >= ptick]
        latency = (after[0] - ptick) if after else None
    ok = bool(env.success)
    rec = {
        "seed": int(seed), "perturbed": perturb, "success": ok, "steps": int(env.t), "perturb_tick": ptick,
        "recovery_ticks": (int(env.t) - ptick) if ok and ptick is not None else None,
        "resamples": c.resamples, "gated_resamples": gated, "forced_resamples": forced,
        "prefix_passes": c.prefix_passes, "delta_passes": c.delta_passes,
        "plan_encoder_passes": c.plan_encoder_passes, "gate_checks": c.gate_checks,
        "faults": c.faults, "fallbacks": c.fallbacks, "clipped": c.clipped, "bad_actions": bad, "held": held,
        "resample_latency": latency, "mean_tick_ms": float(np.mean(ms)) if ms else 0.0,
        "_tick_ms": ms,
    }
    if timeline:
        rec["_timeline"] = ticks
    return rec


def pick_timeline_episode(env: Any, seeds: Sequence[int], chunk: int) -> int:
    """First perturbed episode whose jump falls mid-chunk (not where an open-loop plan runs out anyway), so the
    timeline shows whether the gate itself reacts; 0 when none does."""
    for j, s in enumerate(seeds):
        env.reset(seed=s, perturb=True)
        t = env.perturb_tick
        if t is not None and min(3, chunk // 2) <= t % chunk <= chunk - min(3, chunk // 2):
            return j
    return 0


def summarize(episodes: Sequence[dict]) -> dict:
    """Aggregate per-episode records of one policy on one episode set."""
    if not episodes:
        return {}
    n = len(episodes)
    ticks = sum(e["steps"] for e in episodes)
    checks = sum(e["gate_checks"] for e in episodes)
    gated = sum(e["gated_resamples"] for e in episodes)
    all_ms = np.concatenate([np.asarray(e["_tick_ms"], dtype=np.float64) for e in episodes])
    lat = [e["resample_latency"] for e in episodes if e["perturb_tick"] is not None]
    return {
        "n_episodes": n,
        "success_rate": sum(e["success"] for e in episodes) / n,
        "ticks_per_episode": ticks / n,
        "resamples_per_episode": sum(e["resamples"] for e in episodes) / n,
        "gated_resamples_per_episode": gated / n,
        "prefix_passes_per_episode": sum(e["prefix_passes"] for e in episodes) / n,
        "delta_passes_per_episode": sum(e["delta_passes"] for e in episodes) / n,
        "plan_encoder_passes_per_episode": sum(e.get("plan_encoder_passes", 0) for e in episodes) / n,
        "gate_checks_per_episode": checks / n,
        "resamples_per_tick": sum(e["resamples"] for e in episodes) / max(ticks, 1),
        "fire_rate": (gated / checks) if checks else None,  # gate-decided resamples per gate check
        "perturb_to_resample_ticks": mean_or_none(lat),
        "perturb_to_resample_p90": float(np.percentile([x for x in lat if x is not None], 90))
        if any(x is not None for x in lat) else None,
        "no_resample_after_perturb": sum(x is None for x in lat),
        "recovery_ticks": mean_or_none([e["recovery_ticks"] for e in episodes]),
        "ms_per_tick": float(all_ms.mean()) if all_ms.size else 0.0,
        "ms_per_tick_p50": float(np.percentile(all_ms, 50)) if all_ms.size else 0.0,
        "ms_per_tick_p90": float(np.percentile(all_ms, 90)) if all_ms.size else 0.0,
        "faults": sum(e["faults"] for e in episodes),
        "bad_actions": sum(e["bad_actions"] for e in episodes),
        "held": sum(e.get("held", 0) for e in episodes),  # ticks the policy sent nothing (no safe target)
    }


def evaluate_spec(spec: PolicySpec, make_policy: Callable[[PolicySpec], EdgePolicy], env: Any,
                  pert_seeds: Sequence[int], unpert_seeds: Sequence[int], timeline_episode: int,
                  bar: Any = None) -> dict:
    """One policy over the perturbed and unperturbed seeds: its summaries, episode records and timeline."""
    policy = make_policy(spec)
    t0 = time.perf_counter()
    pert, unpert = [], []
    timeline = None
    for j, s in enumerate(pert_seeds):
        rec = run_episode(policy, env, s, True, timeline=(j == timeline_episode))
        if "_timeline" in rec:
            timeline = {"seed": rec["seed"], "perturb_tick": rec["perturb_tick"], "success": rec["success"],
                        "ticks": rec.pop("_timeline")}
        pert.append(rec)
        if bar is not None:
            bar.update(1)
    for s in unpert_seeds:
        unpert.append(run_episode(policy, env, s, False))
        if bar is not None:
            bar.update(1)
    out = {"name": spec.name, "family": spec.family, "spec": spec.spec, "gate": policy.gate.spec,
           "check_every": spec.check_every, "label": spec.label, "param": spec.param,
           "perturbed": summarize(pert), "unperturbed": summarize(unpert),
           "wall_s": time.perf_counter() - t0, "timeline": timeline}
    for e in pert + unpert:
        e.pop("_tick_ms", None)
    out["perturbed_episodes"] = pert
    out["unperturbed_episodes"] = unpert
    return out
