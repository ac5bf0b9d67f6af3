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
- Backend outputs are checked at this boundary (`runtime.backend_outputs`: array, shape, dtype, finite) and a
  hung graph call can be cut off (`backend_options={"run_timeout_ms": ...}` for onnxruntime): both → fault.
- A changed instruction forces a resample on the tick it arrives (the old plan served the old instruction).
- Threads: `step()`, `reset()`, `warmup()` and `close()` serialise on one lock, so concurrent callers never
  mix observations; each call sees the policy state the previous call left (one robot, one control loop).
- Identity: `expected_digest` and/or `trusted_keys` pin which export is accepted (`runtime.artifact_identity`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from runtime import policy_arguments as args
from runtime.backend import Backend, PrefixState
from runtime.backend_factory import make_backend
from runtime.backend_outputs import checked, checked_delta, checked_embedding, checked_prefix
from runtime.gate import Gate, GateDecision, GateInputs, jump_lag_mismatch
from runtime.manifest import Manifest
from runtime.noise import draw_noise
from runtime.observation import ObservationError, ObservationValidator, ValidatedObservation
from runtime.plan_inputs import delta_input, plan_encoder_input
from runtime.preprocess import ActionUnnormalizer, ImagePreprocessor, StateNormalizer
from runtime.robot_interface import RobotInterface
from runtime.safety import ActionGuard
from runtime.stage_times import resample_cost_ms, update_ema
from runtime.tick_report import Counters, TickInfo
from runtime.tokenizer import InstructionTokenizer

BAD_OBSERVATION_MODES = ("raise", "fallback")
__all__ = ["BAD_OBSERVATION_MODES", "EdgePolicy", "TickInfo", "delta_input", "plan_encoder_input"]  # re-exports


class EdgePolicy:
    """Closed-loop policy over an artifact folder. `step(obs)` returns one raw action [action_dim]."""

    def __init__(
        self, artifacts_dir: str | Path, backend: str | Backend = "onnxruntime", gate: str | Gate = "default",
        refine: bool = False, num_steps: int | None = None, seed: int = 0, tick_budget_ms: float | None = None,
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
        expected_digest: str | None = None,
        trusted_keys: Iterable[Any] | None = None,
    ):
        on_bad_observation = args.choice("on_bad_observation", on_bad_observation, BAD_OBSERVATION_MODES)
        tick_budget_ms = args.optional("tick_budget_ms", tick_budget_ms, args.number, 0.0, args.MAX_TICK_BUDGET_MS,
                                       low_open=True)
        num_steps = args.num_steps(num_steps)
        seed = args.integer("seed", seed, 0, 2**63 - 1)
        check_every = args.integer("check_every", check_every, 1, args.MAX_CHECK_EVERY)
        state_tolerance = args.optional("state_tolerance", state_tolerance, args.number, 0.0, args.MAX_STATE_TOLERANCE)
        args.optional("noise_fn", noise_fn, args.function)
        options = args.backend_options(backend_options)
        self.artifacts_dir = args.artifacts_path(artifacts_dir)
        self._trusted_keys = args.trusted_keys(trusted_keys)
        self.manifest = m = Manifest.load(self.artifacts_dir, verify_hashes=args.boolean("verify_hashes", verify_hashes),
                                          expected_digest=args.expected_digest(expected_digest),
                                          trusted_keys=self._trusted_keys)
        d = m.dims
        self.num_steps = d.num_steps if num_steps is None else num_steps
        self.refine = args.boolean("refine", refine)
        self.tick_budget_ms = tick_budget_ms
        self.on_bad_observation = on_bad_observation
        # always hash-checked, also with verify_hashes=False (which spares the large graphs a shared backend has
        # already verified): the tokenizer is small, and each policy (a serve session) reads it from disk again
        self.tokenizer = InstructionTokenizer(m.tokenizer_path, m.tokenizer,
                                              expected_sha256=m.files[m.tokenizer.file]["sha256"])
        self.validator = ObservationValidator(m, self.tokenizer, state_tolerance)
        if isinstance(gate, str) and gate.strip().lower() == "default":
            gate = m.default_gate  # the export's recommendation (manifest gate.default; drift if absent)
        self.gate = args.build_gate(gate, m.gate_calibration, check_every, seed)
        args.check_gate_threshold(self.gate)
        args.warn_gate_lag(jump_lag_mismatch(self.gate, m.gate_calibration, self.gate.check_every))
        self.guard = ActionGuard(m.action_bounds, m.stop_action, args.choice("fallback", fallback, ("hold", "stop")),
                                 args.choice("out_of_bounds", out_of_bounds, ("clip", "fallback")),
                                 RobotInterface.from_manifest(m).moving_dims)
        self.state_norm = StateNormalizer(m.state_norm, d.max_state_dim)
        self.unnormalize = ActionUnnormalizer(m.action_norm, d.action_dim)
        self._lock = threading.RLock()
        self._obs_cls_shape = (1, d.num_cls_prefix, d.cls_dim)
        self._act_cls_shape = (1, d.num_cls_suffix, d.cls_dim)
        self.backend = make_backend(backend, m, args.choice("device", device, ("cpu", "cuda")), options,
                                    verify_hashes, self._trusted_keys)
        args.check_plan_encoder(self.gate, m.act_cls_wiring, self.backend)
        self.noise_fn = noise_fn
        self.next_noise: np.ndarray | None = None  # test hook: consumed by the next resample
        self.before_resample: Callable[[GateDecision], None] | None = None  # sees why, before the denoise
        self._rng = np.random.default_rng(seed)
        self._noise_shape = m.plan_shape
        self._images = np.zeros((1, len(m.cameras), 3, m.image.height, m.image.width), dtype=np.float32)
        self._preprocess_image = ImagePreprocessor(m.image)  # work buffers kept per camera size
        self._ema: dict[str, float] = {}
        self.counters = Counters()
        self.episode_counters = Counters()
        self.last_info = TickInfo()
        self.reset()

    # ------------------------------------------------------------------ setup
    def reset(self, seed: int | None = None) -> None:
        """Episode start: drop the queued plan and per-episode state; `seed` re-seeds noise and gate."""
        with self._lock:
            self._reset(args.optional("seed", seed, args.integer, 0, 2**63 - 1))

    def _reset(self, seed: int | None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self.gate.reset(seed)
        self.guard.reset()
        self._plan: np.ndarray | None = None  # remaining normalised plan [R, max_action_dim]
        self._queue_left = 0
        self._ticks_since_plan = self._ticks_since_check = 0
        self._gate_plan: np.ndarray | None = None  # async: the rows from the observation's tick on (sync_plan)
        self._plan_obs_emb: np.ndarray | None = None
        # obs-CLS of the latest prefix pass; the jump gate's reference = that of the last gate decision or plan (a pass
        # the gate did not decide on — refine-only, a faulted check — must not move it, or its jump would be lost)
        self._last_obs_emb: np.ndarray | None = None
        self._prev_obs_emb: np.ndarray | None = None
        self._plan_state: np.ndarray | None = None
        self._plan_images: list[np.ndarray] | None = None
        self._plan_task: str | None = None
        self._pending_resample = False
        self.last_chunk: np.ndarray | None = None
        self.episode_counters = Counters()

    def sync_plan(self, plan: np.ndarray | None, ticks_since_plan: int, gate_plan: np.ndarray | None = None,
                  ticks_since_check: int | None = None) -> None:
        """Async execution (runtime.async_planner): the queued plan becomes what the robot will still execute
        (normalised rows [R, max_action_dim]); `gate_plan`: the rows from the next observation's tick on, which the
        consistency gate encodes for this tick (as calibrated; None: the queue); a due retry stays due."""
        rows = 0 if plan is None else int(plan.shape[0])
        self._plan = None if rows == 0 else np.asarray(plan, dtype=np.float32)
        self._queue_left = rows
        self._gate_plan = None if gate_plan is None or rows == 0 else np.asarray(gate_plan, dtype=np.float32)
        self._ticks_since_plan = int(ticks_since_plan)
        self._ticks_since_check = self._ticks_since_plan if ticks_since_check is None else int(ticks_since_check)

    def warmup(self, observation: dict, runs: int = 3) -> None:
        """Run `runs` full resample ticks on one observation so sessions/allocators warm up, then reset.

        Counters are left untouched and the stage estimates keep only the last run's times, so the
        deadline rule starts from realistic numbers instead of first-call outliers.
        """
        runs = args.integer("runs", runs, 1, 1000)
        with self._lock:
            self._warmup(observation, runs)

    def _warmup(self, observation: dict, runs: int) -> None:
        saved = (Counters(**self.counters.as_dict()), self.last_info, self._rng.bit_generator.state)
        for _ in range(runs):
            self._ema.clear()
            self.reset()
            self.step(observation)
        self.counters, self.last_info = saved[0], saved[1]
        self._rng.bit_generator.state = saved[2]  # warm-up does not consume the episode noise stream
        self.reset()

    def close(self) -> None:
        with self._lock:
            self.backend.close()

    # --------------------------------------------- plans executed elsewhere (runtime.serve)
    def advance(self, n: int) -> int:
        """Drop up to `n` queued actions a remote robot already executed; returns how many were dropped."""
        k = max(0, min(int(n), self._queue_left))
        for _ in range(k):
            self._pop()
        return k

    def keep_queued(self, n: int) -> None:
        """Keep only the first `n` queued actions (a remote robot took fewer than the plan holds)."""
        self._queue_left = max(0, min(int(n), self._queue_left))

    def queued_actions(self, normalised: bool = False) -> np.ndarray:
        """The queued plan: raw [R, action_dim] (to send ahead; not yet through the guard), or normalised
        [R, max_action_dim] (a copy of the rows the policy holds)."""
        d = self.manifest.dims
        if self._plan is None or self._queue_left == 0:
            return np.zeros((0, d.max_action_dim if normalised else d.action_dim), dtype=np.float32)
        rows = self._plan[: self._queue_left]
        return rows.copy() if normalised else self.unnormalize(rows)

    def __enter__(self) -> EdgePolicy:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- the tick
    def step(self, observation: dict) -> np.ndarray | None:
        """One tick: one safe raw action [action_dim] (None only from a guard given position `stop_dims` with no
        target yet: send nothing, runtime.safety). Thread-safe: concurrent calls run one after another."""
        with self._lock:
            return self._step(observation)

    def _step(self, observation: dict) -> np.ndarray | None:
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

        new_task = self._plan_task is not None and obs.task != self._plan_task
        force = self._queue_left == 0 or self._pending_resample or new_task
        checks = not force and self.gate.will_check(self._queue_left, self._ticks_since_plan, self._ticks_since_check)
        prefix: PrefixState | None = None
        if force or (checks and (self.gate.needs_obs_cls or self.gate.needs_act_cls)):
            prefix = self._prefix(obs, info)
            if prefix is None:  # fault: no fresh K/V this tick; a due resample or check is retried next tick
                self._pending_resample = force and self._queue_left > 0
                return self._pop()

        # gate (the consistency gate also computes the remaining plan's delta, reused for refinement)
        delta = None
        if force:
            reason = "queue_empty" if self._queue_left == 0 else ("instruction_changed" if new_task else "pending")
            decision = GateDecision(True, False, reason=reason)
        elif checks:
            checked, delta = self._check_gate(obs, prefix, info)
            if checked is None:  # fault while computing the gate's inputs → keep the plan; retried next tick
                return self._pop()
            self._ticks_since_check = 0  # checked: the next check is check_every ticks on
            decision = checked
        else:
            decision = self.gate.decide(GateInputs(self._queue_left, self._ticks_since_plan,
                                                   ticks_since_check=self._ticks_since_check))
        info.gate_checked, info.gate_reason = decision.checked, decision.reason
        info.gate_distance, info.gate_threshold = decision.distance, decision.threshold

        if decision.resample and not force and self._would_overrun(t0, prefix_done=prefix is not None):
            info.deferred = True
            self._pending_resample = True
            self._count("deferred_resamples")
        elif decision.resample:
            if self.before_resample is not None:  # runtime.async_planner: seam handling depends on why
                self.before_resample(decision)
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
            self._preprocess_image(img, self._images[0, i])
        state = self.state_norm(obs.state)
        info.preprocess_ms += self._stage_ms("images", t0)
        return self._run_prefix(obs, state, info)

    def _run_prefix(self, obs: ValidatedObservation, state: np.ndarray, info: TickInfo) -> PrefixState | None:
        t0 = time.perf_counter()
        try:
            prefix, obs_emb = checked_prefix(self.backend.run_prefix(self._images, obs.lang_tokens, obs.lang_mask,
                                                                     state), self._obs_cls_shape)
        except Exception as exc:  # noqa: BLE001 — any backend failure becomes a reported fault
            self._fault(info, f"prefix: {exc}")
            return None
        finally:
            info.prefix_ms = self._stage_ms("prefix", t0)
        info.prefix_ran = True
        self._count("prefix_passes")
        self._last_obs_emb = obs_emb  # this tick's: a resample plans from it
        return prefix

    def _check_gate(self, obs: ValidatedObservation, prefix: PrefixState | None,
                    info: TickInfo) -> tuple[GateDecision | None, tuple[np.ndarray, np.ndarray] | None]:
        self._count("gate_checks")
        g = self.gate
        delta = None
        act_emb = None
        rows = self._gate_plan  # async: the plan from this observation's tick on (None: the queue)
        if g.needs_act_cls and self.manifest.act_cls_wiring == "plan_only":
            if self._plan is None:  # cannot happen: checks imply a queued plan
                return None, None
            act_emb = self._run_plan_encoder(self._plan[: self._queue_left] if rows is None else rows, info)
            if act_emb is None:
                return None, None
        elif g.needs_act_cls:  # seed wiring: the delta expert's act-CLS over the current K/V
            if prefix is None or self._plan is None:  # cannot happen: checks imply a queued plan and a prefix
                return None, None
            delta = self._run_delta(self._plan if rows is None else rows, prefix, info)
            if delta is None:
                return None, None
            act_emb = delta[1]
            delta = delta if rows is None else None  # of other rows than the queue: refinement computes its own
        t0 = time.perf_counter()
        inputs = GateInputs(
            self._queue_left, self._ticks_since_plan, ticks_since_check=self._ticks_since_check, act_emb=act_emb,
            obs_emb=self._last_obs_emb if prefix is not None and g.needs_obs_cls else None,
            plan_obs_emb=self._plan_obs_emb, prev_obs_emb=self._prev_obs_emb if g.needs_obs_cls else None,
            state=obs.state if g.needs_state else None, plan_state=self._plan_state,
            images=obs.images if g.needs_image else None, plan_images=self._plan_images,
        )
        if g.needs_obs_cls and (inputs.obs_emb is None or inputs.plan_obs_emb is None):
            decision = GateDecision(True, True, reason="no_plan_embedding")  # cannot compare → replan
        else:
            try:  # a gate that cannot compare its inputs is a reported fault: the queued plan is kept
                decision = g.decide(inputs)
            except Exception as exc:  # noqa: BLE001
                self._fault(info, f"gate {g.spec}: {exc}")
                return None, None
            finally:
                info.gate_ms = self._stage_ms("gate", t0)
        if inputs.obs_emb is not None:
            self._prev_obs_emb = inputs.obs_emb  # decided on: the next check compares against this observation
        return decision, delta

    def _run_delta(self, plan: np.ndarray, prefix: PrefixState, info: TickInfo) -> tuple[np.ndarray, np.ndarray] | None:
        return self._small_graph(info, "delta_expert", "delta", "delta_passes", lambda: checked_delta(  # (delta, act_emb)
            self.backend.run_delta_expert(delta_input(plan, self.manifest.dims.chunk_size), prefix),
            self._noise_shape, self._act_cls_shape))

    def _run_plan_encoder(self, remaining: np.ndarray, info: TickInfo) -> np.ndarray | None:
        """Unit act-CLS embedding of the rows the robot will still execute, from the plan alone (plan_only wiring)."""
        def run() -> np.ndarray:
            plan, valid = plan_encoder_input(remaining, self.manifest.dims.chunk_size)
            return checked_embedding("act_cls", self.backend.run_plan_encoder(plan, valid), self._act_cls_shape)[1]

        return self._small_graph(info, "plan_encoder", "plan_encoder", "plan_encoder_passes", run)

    def _small_graph(self, info: TickInfo, graph: str, stage: str, counter: str, run: Callable[[], Any]) -> Any:
        """One delta-expert / plan-encoder call, timed into `info.delta_ms`; None (and a fault) on failure."""
        t0 = time.perf_counter()
        try:
            out = run()
        except Exception as exc:  # noqa: BLE001 — any backend failure becomes a reported fault
            self._fault(info, f"{graph}: {exc}")
            return None
        finally:
            info.delta_ms += self._stage_ms(stage, t0)
        self._count(counter)
        return out

    def _resample(self, obs: ValidatedObservation, prefix: PrefixState, info: TickInfo) -> bool:
        """Fresh chunk into the queue; False (and the old queue kept) on a backend fault."""
        noise = self._draw_noise()  # outside the fault handler: a bad test hook must raise, not degrade
        t0 = time.perf_counter()
        try:
            x = checked("denoised plan", self.backend.denoise(noise, self.num_steps, prefix), self._noise_shape)
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
        self._ticks_since_plan = self._ticks_since_check = 0
        self._gate_plan = None  # a fresh plan: the gate encodes the queue until the next sync_plan
        self._plan_obs_emb = self._last_obs_emb  # set by this tick's prefix pass (the one given here)
        self._prev_obs_emb = self._plan_obs_emb
        self._plan_state = obs.state.copy()
        if self.gate.needs_image:  # copies: a caller may reuse its image buffers
            self._plan_images = [np.array(img, copy=True) for img in obs.images]
        self._plan_task = obs.task
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
        self._ticks_since_check += 1
        self._gate_plan = None  # it described this tick's observation only
        return a

    # ---------------------------------------------------------------- helpers
    def _draw_noise(self) -> np.ndarray:
        given, self.next_noise = self.next_noise, None
        return draw_noise(self._noise_shape, self._rng, given, self.noise_fn)

    def _would_overrun(self, t_tick_start: float, prefix_done: bool) -> bool:
        """Would a resample now (plus what the tick still has to do) exceed tick_budget_ms? (EMA estimate)"""
        est = resample_cost_ms(self._ema, prefix_done, self.refine)
        if self.tick_budget_ms is None or est is None:
            return False
        return (time.perf_counter() - t_tick_start) * 1e3 + est > self.tick_budget_ms

    def _stage_ms(self, stage: str, t0: float) -> float:
        ms = (time.perf_counter() - t0) * 1e3
        update_ema(self._ema, stage, ms)
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
