"""EdgePolicy: the per-tick inference chain that runs on the robot, driven by the artifact folder only.

Per tick: validate observation → preprocess (tokens cached per instruction, image/state buffers reused)
→ prefix graph (only when the gate, a resample or refinement needs it) → gate → either resample
(fresh noise → N Euler steps of the main expert → optional delta step) or keep executing the queued
plan (optionally refined by one delta step against the new observation's K/V) → unnormalise → safety
→ emit one raw action.

Reliability policy (what happens when something goes wrong):
- Bad observation: `ObservationError` naming the field (`on_bad_observation="raise"`, default), or
  (`"fallback"`) the queued plan continues open-loop / the fallback action is emitted, reported as a fault.
- Backend fault (exception or non-finite output of any graph): the tick still emits a safe action — the
  next queued action if a plan is queued, else the fallback action. A failed resample is retried on the
  next tick; a failed refinement leaves the queued plan unrefined. Every fault is reported in
  `TickInfo.fault` and counted.
- Action safety: see `runtime.safety` — nothing non-finite or out of `action_bounds` is ever emitted.
- Deadlines (`tick_budget_ms`): stage times are tracked as EMAs. When the gate asks for a resample while
  a plan is still queued and the estimated resample cost would push this tick past the budget, the
  resample is deferred: this tick executes the queued plan and the next tick resamples unconditionally
  (a deferred resample is never deferred twice, and a resample forced by an empty queue is never
  deferred). Ticks whose measured time exceeds the budget are counted as deadline misses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backend import Backend, PrefixState
from runtime.gate import Gate, GateDecision, GateInputs, embed, make_gate
from runtime.manifest import Manifest
from runtime.observation import ObservationError, ObservationValidator, ValidatedObservation
from runtime.preprocess import ActionUnnormalizer, StateNormalizer, resize_pad, to_chw_float
from runtime.safety import ActionGuard
from runtime.tokenizer import InstructionTokenizer

BAD_OBSERVATION_MODES = ("raise", "fallback")
_EMA_ALPHA = 0.2


@dataclass
class TickInfo:
    """What happened in the last `step()`; stage times in milliseconds (0.0 when the stage did not run)."""

    tick: int = 0
    resampled: bool = False
    gate_checked: bool = False
    gate_reason: str = ""
    gate_distance: float | None = None
    gate_threshold: float | None = None
    prefix_ran: bool = False
    refined: bool = False
    queue_left: int = 0  # actions still queued after this tick's action
    deferred: bool = False  # a due resample was postponed to the next tick for the tick budget
    deadline_missed: bool = False
    fault: str | None = None  # a chain fault (bad observation in fallback mode, backend error/non-finite output)
    fallback: bool = False  # the emitted action is the safety fallback, not the plan's
    clipped: bool = False
    safety: str | None = None  # why the safety guard altered the action (clip or fallback), else None
    preprocess_ms: float = 0.0
    prefix_ms: float = 0.0
    gate_ms: float = 0.0
    denoise_ms: float = 0.0
    delta_ms: float = 0.0
    post_ms: float = 0.0
    total_ms: float = 0.0

    STAGES = ("preprocess", "prefix", "gate", "denoise", "delta", "post", "total")


@dataclass
class Counters:
    ticks: int = 0
    resamples: int = 0  # full denoising runs
    prefix_passes: int = 0
    delta_passes: int = 0
    gate_checks: int = 0
    refines: int = 0
    faults: int = 0
    observation_errors: int = 0
    fallbacks: int = 0
    clipped: int = 0
    deadline_misses: int = 0
    deferred_resamples: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def delta_input(plan: np.ndarray, chunk_size: int) -> np.ndarray:
    """Remaining plan [R, A] → delta-expert input [1, T, A]: shifted to index 0, tail repeats the last row."""
    r = plan.shape[0]
    out = np.empty((1, chunk_size, plan.shape[1]), dtype=np.float32)
    out[0, :r] = plan
    out[0, r:] = plan[-1]
    return out


def _finite(name: str, arr: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(arr)):
        raise FloatingPointError(f"{name} is non-finite")
    return arr


class EdgePolicy:
    """Closed-loop policy over an artifact folder. `step(obs)` returns one raw action [action_dim]."""

    def __init__(
        self,
        artifacts_dir: str | Path,
        backend: str | Backend = "onnxruntime",
        gate: str | Gate = "drift",
        refine: bool = False,
        num_steps: int | None = None,
        seed: int = 0,
        tick_budget_ms: float | None = None,
        fallback: str = "hold",
        *,
        check_every: int = 1,
        device: str = "cpu",
        out_of_bounds: str = "clip",
        on_bad_observation: str = "raise",
        state_tolerance: float | None = 1.0,
        noise_fn: Callable[[tuple[int, ...], np.random.Generator], np.ndarray] | None = None,
        verify_hashes: bool = True,
        backend_options: dict[str, Any] | None = None,
    ):
        if on_bad_observation not in BAD_OBSERVATION_MODES:
            raise ValueError(f"on_bad_observation must be one of {BAD_OBSERVATION_MODES}, got {on_bad_observation!r}")
        if tick_budget_ms is not None and not tick_budget_ms > 0:
            raise ValueError(f"tick_budget_ms must be positive, got {tick_budget_ms!r}")
        self.artifacts_dir = Path(artifacts_dir)
        self.manifest = m = Manifest.load(self.artifacts_dir, verify_hashes=verify_hashes)
        d = m.dims
        self.num_steps = d.num_steps if num_steps is None else int(num_steps)
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps!r}")
        self.refine = bool(refine)
        self.tick_budget_ms = tick_budget_ms
        self.on_bad_observation = on_bad_observation
        self.tokenizer = InstructionTokenizer(m.tokenizer_path, m.tokenizer)
        self.validator = ObservationValidator(m, self.tokenizer, state_tolerance)
        self.gate = gate if isinstance(gate, Gate) else make_gate(gate, m.gate_calibration, check_every, seed)
        self.guard = ActionGuard(m.action_bounds, m.stop_action, fallback, out_of_bounds)
        self.state_norm = StateNormalizer(m.state_norm, d.max_state_dim)
        self.unnormalize = ActionUnnormalizer(m.action_norm, d.action_dim)
        self.backend = self._make_backend(backend, device, backend_options or {})
        self.noise_fn = noise_fn
        self.next_noise: np.ndarray | None = None  # test hook: consumed by the next resample
        self._rng = np.random.default_rng(seed)
        self._noise_shape = m.plan_shape
        self._images = np.zeros((1, len(m.cameras), 3, m.image.height, m.image.width), dtype=np.float32)
        self._ema: dict[str, float] = {}
        self.counters = Counters()
        self.episode_counters = Counters()
        self.last_info = TickInfo()
        self.reset()

    # ------------------------------------------------------------------ setup
    def _make_backend(self, backend: str | Backend, device: str, options: dict) -> Backend:
        if isinstance(backend, Backend):
            return backend
        if backend == "onnxruntime":
            from runtime.backend_onnxruntime import OnnxRuntimeBackend

            return OnnxRuntimeBackend(self.artifacts_dir, self.manifest, device=device, **options)
        if backend == "tensorrt":
            from runtime.backend_tensorrt import TensorRTBackend  # Jetson/GPU only; imported on demand

            # engines live next to the ONNX folder by default (artifacts/onnx → artifacts/engines)
            engines = Path(options.pop("engines", self.artifacts_dir.parent / "engines"))
            return TensorRTBackend(self.artifacts_dir, engines, manifest=self.manifest.raw, **options)
        raise ValueError(f"unknown backend {backend!r}; choose 'onnxruntime' or 'tensorrt' (or pass a Backend)")

    def reset(self, seed: int | None = None) -> None:
        """Episode start: drop the queued plan and per-episode state; `seed` re-seeds noise and gate."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.gate.reset(seed)
        self.guard.reset()
        self._plan: np.ndarray | None = None  # remaining normalised plan [R, max_action_dim]
        self._queue_left = 0
        self._ticks_since_plan = 0
        self._plan_obs_emb: np.ndarray | None = None
        self._plan_state: np.ndarray | None = None
        self._pending_resample = False
        self.last_chunk: np.ndarray | None = None
        self.episode_counters = Counters()

    def sync_plan(self, plan: np.ndarray | None, ticks_since_plan: int) -> None:
        """Async execution (runtime.async_policy): the queued plan becomes what the robot will still execute
        (normalised rows [R, max_action_dim]); a retry of a failed resample stays due."""
        rows = 0 if plan is None else int(plan.shape[0])
        self._plan = None if rows == 0 else np.asarray(plan, dtype=np.float32)
        self._queue_left = rows
        self._ticks_since_plan = int(ticks_since_plan)

    def warmup(self, observation: dict, runs: int = 3) -> None:
        """Run `runs` full resample ticks on one observation so sessions/allocators warm up, then reset.

        Counters are left untouched and the stage estimates keep only the last run's times, so the
        deadline rule starts from realistic numbers instead of first-call outliers.
        """
        saved = (Counters(**self.counters.as_dict()), self.last_info, self._rng.bit_generator.state)
        for _ in range(max(1, runs)):
            self._ema.clear()
            self.reset()
            self.step(observation)
        self.counters, self.last_info = saved[0], saved[1]
        self._rng.bit_generator.state = saved[2]  # warm-up does not consume the episode noise stream
        self.reset()

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> EdgePolicy:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- the tick
    def step(self, observation: dict) -> np.ndarray:
        t_start = time.perf_counter()
        info = TickInfo(tick=self.counters.ticks)
        self._count("ticks")
        try:
            action = self._tick(observation, info)
        except ObservationError:
            self.last_info = info
            raise
        # post: unnormalise + safety
        t0 = time.perf_counter()
        raw = None if action is None else self.unnormalize(action)
        res = self.guard.check(raw)
        info.clipped, info.fallback, info.safety = res.clipped, res.fallback, res.reason
        if res.clipped:
            self._count("clipped")
        if res.fallback:
            self._count("fallbacks")
        info.queue_left = self._queue_left
        info.post_ms = self._stage_ms("post", t0)
        info.total_ms = (time.perf_counter() - t_start) * 1e3
        if self.tick_budget_ms is not None and info.total_ms > self.tick_budget_ms:
            info.deadline_missed = True
            self._count("deadline_misses")
        self.last_info = info
        return res.action

    act = step  # simtask / LeRobot-style name

    def _tick(self, observation: Any, info: TickInfo) -> np.ndarray | None:
        """Everything up to the normalised action to emit (None → fallback)."""
        t0 = time.perf_counter()
        try:
            obs = self.validator.validate(observation)
        except ObservationError as exc:
            self._count("observation_errors")
            if self.on_bad_observation == "raise":
                raise
            self._fault(info, f"observation: {exc}")
            return self._pop()  # open-loop on the queued plan, or fallback when empty
        finally:
            info.preprocess_ms = self._stage_ms("validate", t0)

        force = self._queue_left == 0 or self._pending_resample
        checks = not force and self.gate.will_check(self._queue_left, self._ticks_since_plan)
        prefix: PrefixState | None = None
        if force or (checks and (self.gate.needs_obs_cls or self.gate.needs_act_cls)):
            prefix = self._prefix(obs, info)
            if prefix is None:  # fault: no fresh K/V this tick; a due resample is retried next tick
                self._pending_resample = force and self._queue_left > 0
                return self._pop()

        # gate (the consistency gate also computes the remaining plan's delta, reused for refinement)
        delta = None
        if force:
            decision = GateDecision(True, False, reason="queue_empty" if self._queue_left == 0 else "pending")
        elif checks:
            checked, delta = self._check_gate(obs, prefix, info)
            if checked is None:  # fault while computing the gate's inputs → keep the plan
                return self._pop()
            decision = checked
        else:
            decision = self.gate.decide(GateInputs(self._queue_left, self._ticks_since_plan))
        info.gate_checked, info.gate_reason = decision.checked, decision.reason
        info.gate_distance, info.gate_threshold = decision.distance, decision.threshold

        if decision.resample and not force and self._would_overrun(t0, prefix_done=prefix is not None):
            info.deferred = True
            self._pending_resample = True
            self._count("deferred_resamples")
        elif decision.resample:
            if prefix is None:
                prefix = self._prefix(obs, info)
            if prefix is not None and self._resample(obs, prefix, info):
                return self._pop()
            self._pending_resample = self._queue_left > 0  # retry next tick; meanwhile run the old plan
            return self._pop()

        if self.refine and self._queue_left > 0:
            if prefix is None:
                prefix = self._prefix(obs, info)
            if prefix is not None:
                self._refine(prefix, delta, info)
        return self._pop()

    # ----------------------------------------------------------------- stages
    def _prefix(self, obs: ValidatedObservation, info: TickInfo) -> PrefixState | None:
        """Image preprocessing + prefix graph (called at most once per tick); None on a backend fault."""
        t0 = time.perf_counter()
        for i, img in enumerate(obs.images):
            resize_pad(to_chw_float(img), self.manifest.image, out=self._images[0, i])
        state = self.state_norm(obs.state)
        info.preprocess_ms += self._stage_ms("images", t0)
        return self._run_prefix(obs, state, info)

    def _run_prefix(self, obs: ValidatedObservation, state: np.ndarray, info: TickInfo) -> PrefixState | None:
        t0 = time.perf_counter()
        try:
            prefix = self.backend.run_prefix(self._images, obs.lang_tokens, obs.lang_mask, state)
            _finite("obs_cls", prefix.obs_cls)
        except Exception as exc:  # noqa: BLE001 — any backend failure becomes a reported fault
            self._fault(info, f"prefix: {exc}")
            return None
        finally:
            info.prefix_ms = self._stage_ms("prefix", t0)
        info.prefix_ran = True
        self._count("prefix_passes")
        return prefix

    def _check_gate(self, obs: ValidatedObservation, prefix: PrefixState | None,
                    info: TickInfo) -> tuple[GateDecision | None, tuple[np.ndarray, np.ndarray] | None]:
        self._count("gate_checks")
        g = self.gate
        delta = None
        act_emb = None
        if g.needs_act_cls:
            if prefix is None or self._plan is None:  # cannot happen: checks imply a queued plan and a prefix
                return None, None
            delta = self._run_delta(self._plan, prefix, info)
            if delta is None:
                return None, None
            act_emb = embed(delta[1])
        t0 = time.perf_counter()
        inputs = GateInputs(
            queue_left=self._queue_left, ticks_since_plan=self._ticks_since_plan,
            obs_emb=embed(prefix.obs_cls) if prefix is not None and g.needs_obs_cls else None,
            plan_obs_emb=self._plan_obs_emb, act_emb=act_emb,
            state=obs.state if g.needs_state else None, plan_state=self._plan_state,
        )
        if g.needs_obs_cls and (inputs.obs_emb is None or inputs.plan_obs_emb is None):
            decision = GateDecision(True, True, reason="no_plan_embedding")  # cannot compare → replan
        else:
            decision = g.decide(inputs)
        info.gate_ms = self._stage_ms("gate", t0)
        return decision, delta

    def _run_delta(self, plan: np.ndarray, prefix: PrefixState, info: TickInfo) -> tuple[np.ndarray, np.ndarray] | None:
        t0 = time.perf_counter()
        try:
            d, act_cls = self.backend.run_delta_expert(delta_input(plan, self.manifest.dims.chunk_size), prefix)
            _finite("delta", d)
            _finite("act_cls", act_cls)
        except Exception as exc:  # noqa: BLE001
            self._fault(info, f"delta_expert: {exc}")
            return None
        finally:
            info.delta_ms += self._stage_ms("delta", t0)
        self._count("delta_passes")
        return d, act_cls

    def _resample(self, obs: ValidatedObservation, prefix: PrefixState, info: TickInfo) -> bool:
        """Fresh chunk into the queue; False (and the old queue kept) on a backend fault."""
        noise = self._draw_noise()  # outside the fault handler: a bad test hook must raise, not degrade
        t0 = time.perf_counter()
        try:
            x = _finite("denoised plan", self.backend.denoise(noise, self.num_steps, prefix))
        except Exception as exc:  # noqa: BLE001
            self._fault(info, f"main_expert: {exc}")
            return False
        finally:
            info.denoise_ms = self._stage_ms("denoise", t0)
        plan = x[0].astype(np.float32, copy=True)
        if self.refine:
            out = self._run_delta(plan, prefix, info)
            if out is not None:  # a failed refinement keeps the unrefined (valid) plan
                plan = plan + out[0][0]
                info.refined = True
                self._count("refines")
        self._plan = plan
        self.last_chunk = plan.copy()  # the whole fresh chunk (normalised), read by runtime.async_policy
        self._queue_left = self.manifest.dims.n_action_steps
        self._ticks_since_plan = 0
        self._plan_obs_emb = embed(prefix.obs_cls)
        self._plan_state = obs.state.copy()
        self._pending_resample = False
        info.resampled = True
        self._count("resamples")
        return True

    def _refine(self, prefix: PrefixState, delta: tuple[np.ndarray, np.ndarray] | None, info: TickInfo) -> None:
        """One delta step on the remaining plan against this tick's K/V (reuses the gate's delta if any)."""
        if self._plan is None or self._queue_left == 0:
            return
        if delta is None:
            delta = self._run_delta(self._plan, prefix, info)
            if delta is None:
                return
        self._plan = self._plan + delta[0][0, : self._plan.shape[0]]
        info.refined = True
        self._count("refines")

    def _pop(self) -> np.ndarray | None:
        """Next queued normalised action (advances the queue), or None when nothing is queued."""
        if self._plan is None or self._queue_left == 0:
            return None
        a = self._plan[0]
        self._plan = self._plan[1:]
        self._queue_left -= 1
        self._ticks_since_plan += 1
        return a

    # ---------------------------------------------------------------- helpers
    def _draw_noise(self) -> np.ndarray:
        shape = self._noise_shape
        if self.next_noise is not None:
            noise, self.next_noise = np.asarray(self.next_noise, dtype=np.float32), None
            if noise.size != int(np.prod(shape)):
                raise ValueError(f"next_noise has shape {noise.shape}, expected {shape}")
            return noise.reshape(shape)
        if self.noise_fn is not None:
            return np.asarray(self.noise_fn(shape, self._rng), dtype=np.float32).reshape(shape)
        return self._rng.standard_normal(shape, dtype=np.float32)

    def _would_overrun(self, t_tick_start: float, prefix_done: bool) -> bool:
        """Would a resample now (plus what the tick still has to do) exceed tick_budget_ms? (EMA estimate)"""
        if self.tick_budget_ms is None or "denoise" not in self._ema:
            return False
        elapsed = (time.perf_counter() - t_tick_start) * 1e3
        est = self._ema["denoise"] + self._ema.get("post", 0.0)
        if not prefix_done:
            est += self._ema.get("images", 0.0) + self._ema.get("prefix", 0.0)
        if self.refine:
            est += self._ema.get("delta", 0.0)
        return elapsed + est > self.tick_budget_ms

    def _stage_ms(self, stage: str, t0: float) -> float:
        ms = (time.perf_counter() - t0) * 1e3
        prev = self._ema.get(stage)
        self._ema[stage] = ms if prev is None else prev + _EMA_ALPHA * (ms - prev)
        return ms

    def _fault(self, info: TickInfo, message: str) -> None:
        info.fault = message if info.fault is None else f"{info.fault}; {message}"
        self._count("faults")

    def _count(self, name: str, n: int = 1) -> None:
        setattr(self.counters, name, getattr(self.counters, name) + n)
        setattr(self.episode_counters, name, getattr(self.episode_counters, name) + n)

    @property
    def stage_estimates_ms(self) -> dict[str, float]:
        """EMA of each stage's measured time (what the deadline rule uses)."""
        return dict(self._ema)
