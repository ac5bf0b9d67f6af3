"""When to pay for a fresh action chunk: pure, unit-testable gate decision objects.

A gate is consulted with the numbers of one tick (`GateInputs`) and answers resample or keep executing
the queued plan. Two rules hold for every gate: a queue that ran out always resamples, and the gate's
own test only runs every `check_every` ticks after a plan or its last check (in between, the plan is executed).
Gates declare what they need (`needs_obs_cls`, `needs_act_cls`, `needs_state`, `needs_image`) so the policy
runs the prefix/delta graphs only when a decision depends on them (`state` and `pixel` never need them).

Spec strings (`make_gate`): always | never | interval:k | drift[:thr] | consistency[:thr] | jump[:thr] |
random:p | state:thr | pixel[:thr] | any:SPEC,SPEC[,…] (fires when one of its parts fires). drift, consistency
and jump default to the manifest's calibrated `gate.<metric>.default_threshold` (an error naming that field when
it is absent); pixel to `PIXEL_DEFAULT_THRESHOLD` (mean |Δ| in uint8 levels). A spec's threshold is refused,
naming the spec, when negative or not finite, and for the cosine gates from 2 on (no distance exceeds it).

drift compares obs-CLS now with obs-CLS at planning time; jump compares it with that of the last gate decision
or plan (with check_every 1: the previous tick), so it sees a step change in the scene but not the slow, large
drift of a plan-aligned obs-CLS during ordinary motion. `any:jump,interval:k` adds a plan-age cap against staleness in quiet stretches.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.manifest import GateCalibration
from runtime.preprocess import to_chw_float

GATE_NAMES = ("always", "never", "interval", "drift", "consistency", "jump", "random", "state", "pixel", "any")
MANIFEST_THRESHOLD_GATES = ("drift", "consistency", "jump")  # their threshold defaults to gate.<name> in the manifest
MAX_COSINE_DISTANCE = 2.0  # 1 - <a, b> of unit vectors: opposite directions
MAX_INTERVAL = 1_000_000  # interval:k beyond this is `never` spelled differently
SCHEDULE_GATES = ("always", "never", "interval")  # fire on the clock, not on what the observation shows
PIXEL_DEFAULT_THRESHOLD = 2.0  # mean |Δ| (uint8 levels) that separated target jumps on simtask (issue #20)
EMBED_MIN_NORM = 1e-12  # a mean CLS vector this short has no direction: every cosine distance would read 1.0


def embed(cls_tokens: np.ndarray) -> np.ndarray:
    """[1, N, E] CLS tokens → unit vector [E] (mean over tokens, then L2-normalised; contract rule). ValueError
    when the mean has (almost) no length: a silent backend would otherwise read as a constant distance of 1."""
    flat = np.asarray(cls_tokens, dtype=np.float64).reshape(-1, cls_tokens.shape[-1])
    v = flat.sum(axis=0) / flat.shape[0]  # the mean and the L2 norm as numpy computes them, without its Python layers
    n = math.sqrt(v.dot(v))
    if not n > EMBED_MIN_NORM:  # NaN fails too
        raise ValueError(f"degenerate CLS embedding: its mean vector has norm {n:.3g} (<= {EMBED_MIN_NORM:g})")
    return v / n


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 - <a, b> for unit vectors (0 = same direction, 2 = opposite)."""
    return float(1.0 - np.dot(a, b))


def _need(value: np.ndarray | None, name: str) -> np.ndarray:
    if value is None:
        raise ValueError(f"gate input '{name}' is required by this gate but was not computed")
    return value


@dataclass
class GateInputs:
    """What the policy knows at a tick; fields a gate does not declare a need for may be None."""

    queue_left: int  # actions still queued before this tick's action is taken
    ticks_since_plan: int  # actions executed from the current plan
    obs_emb: np.ndarray | None = None  # unit obs-CLS embedding of the current observation
    plan_obs_emb: np.ndarray | None = None  # unit obs-CLS embedding at planning time
    act_emb: np.ndarray | None = None  # unit act-CLS embedding of the remaining plan (delta expert, current obs)
    state: np.ndarray | None = None  # raw state now
    plan_state: np.ndarray | None = None  # raw state at planning time
    images: list[np.ndarray] | None = None  # camera images now (uint8 HWC, or float CHW in [0, 1])
    plan_images: list[np.ndarray] | None = None  # camera images at planning time
    prev_obs_emb: np.ndarray | None = None  # unit obs-CLS of the last gate decision or plan this episode (jump)
    # ticks since the gate last checked (or the plan was made); None: unknown, check on plan ages m, 2m, …
    ticks_since_check: int | None = None


@dataclass(frozen=True)
class GateDecision:
    resample: bool
    checked: bool  # the gate's own test ran this tick
    distance: float | None = None
    threshold: float | None = None
    reason: str = ""


class Gate(abc.ABC):
    """Base: applies the queue-empty and check_every rules, then the subclass's test."""

    name = "gate"
    needs_obs_cls = False
    needs_act_cls = False
    needs_state = False
    needs_image = False

    def __init__(self, check_every: int = 1):
        if not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"check_every must be an integer >= 1, got {check_every!r}")
        self.check_every = check_every

    def will_check(self, queue_left: int, ticks_since_plan: int, ticks_since_check: int | None = None) -> bool:
        """True when this tick runs the gate's own test (so its inputs must be computed): `check_every` ticks
        after the last check — counted, so a caller whose ticks come in steps (async jobs) still checks; without
        that count, on plan ages that are multiples of `check_every`."""
        if queue_left <= 0:
            return False
        if ticks_since_check is None:
            return ticks_since_plan % self.check_every == 0
        return self.check_every == 1 or ticks_since_check >= self.check_every

    def decide(self, inp: GateInputs) -> GateDecision:
        if inp.queue_left <= 0:
            return GateDecision(True, False, reason="queue_empty")
        if not self.will_check(inp.queue_left, inp.ticks_since_plan, inp.ticks_since_check):
            return self._between_checks(inp)
        return self._decide(inp)

    def _between_checks(self, inp: GateInputs) -> GateDecision:
        """A tick `check_every` skips: the inputs were not computed, so only a schedule (which needs none) may
        fire — a plan-age cap must hold whatever the check rhythm."""
        return GateDecision(False, False, reason="not_checked")

    @abc.abstractmethod
    def _decide(self, inp: GateInputs) -> GateDecision: ...

    def reset(self, seed: int | None = None) -> None:
        """Episode start; stateless gates ignore it."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec})"

    @property
    def spec(self) -> str:
        return self.name


class AlwaysGate(Gate):
    """Resample every tick (maximal compute; the reactive upper bound)."""

    name = "always"

    def _decide(self, inp: GateInputs) -> GateDecision:
        return GateDecision(True, True, reason="always")


class NeverGate(Gate):
    """Open-loop chunking: only the queue running out resamples."""

    name = "never"

    def _decide(self, inp: GateInputs) -> GateDecision:
        return GateDecision(False, True, reason="never")


class IntervalGate(Gate):
    """Fixed replan interval: resample once k actions of the plan were executed."""

    name = "interval"

    def __init__(self, k: int, check_every: int = 1):
        super().__init__(check_every)
        if not 1 <= k <= MAX_INTERVAL:
            raise ValueError(f"interval k must be in [1, {MAX_INTERVAL}] ticks, got {k}")
        self.k = k

    @property
    def spec(self) -> str:
        return f"interval:{self.k}"

    def _decide(self, inp: GateInputs) -> GateDecision:
        fire = inp.ticks_since_plan >= self.k
        return GateDecision(fire, True, float(inp.ticks_since_plan), float(self.k), "interval")

    def _between_checks(self, inp: GateInputs) -> GateDecision:
        decision = self._decide(inp)
        return decision if decision.resample else super()._between_checks(inp)


class _ThresholdGate(Gate):
    def __init__(self, threshold: float, check_every: int = 1):
        super().__init__(check_every)
        if not 0 <= threshold < math.inf:  # a programmatic observer may pass one no distance reaches (benchmarks)
            raise ValueError(f"{self.name} threshold must be a finite number >= 0, got {threshold}")
        self.threshold = float(threshold) + 0.0  # -0.0 → 0.0 (the spec never reads '-0')

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.threshold:g}"

    def _fire(self, distance: float) -> GateDecision:
        return GateDecision(distance > self.threshold, True, distance, self.threshold, self.name)


class DriftGate(_ThresholdGate):
    """Resample when the observation's obs-CLS moved away from the one the plan was made from."""

    name = "drift"
    needs_obs_cls = True

    def _decide(self, inp: GateInputs) -> GateDecision:
        return self._fire(cosine_distance(_need(inp.obs_emb, "obs_emb"), _need(inp.plan_obs_emb, "plan_obs_emb")))


class JumpGate(_ThresholdGate):
    """Resample when obs-CLS jumped since the observation of the previous gate decision or plan (with
    check_every 1: the previous tick) — a step change in the scene. No previous embedding yet in this episode →
    no fire (the first plan is forced anyway)."""

    name = "jump"
    needs_obs_cls = True

    def _decide(self, inp: GateInputs) -> GateDecision:
        if inp.prev_obs_emb is None:
            return GateDecision(False, True, None, self.threshold, "jump_no_previous")
        return self._fire(cosine_distance(_need(inp.obs_emb, "obs_emb"), inp.prev_obs_emb))


class ConsistencyGate(_ThresholdGate):
    """Resample when the remaining plan's act-CLS no longer matches the current obs-CLS."""

    name = "consistency"
    needs_obs_cls = True
    needs_act_cls = True

    def _decide(self, inp: GateInputs) -> GateDecision:
        return self._fire(cosine_distance(_need(inp.obs_emb, "obs_emb"), _need(inp.act_emb, "act_emb")))


class StateGate(_ThresholdGate):
    """Resample when the raw state moved more than thr (L2) since planning (LeRobot-async-like baseline)."""

    name = "state"
    needs_state = True

    def _decide(self, inp: GateInputs) -> GateDecision:
        now, then = _need(inp.state, "state"), _need(inp.plan_state, "plan_state")
        d = float(np.linalg.norm(now.astype(np.float64) - then.astype(np.float64)))
        return self._fire(d)


def mean_abs_pixel_change(images: list[np.ndarray], plan_images: list[np.ndarray]) -> float:
    """Mean |Δ| over every pixel and channel of every camera, in uint8 levels. Each image is first brought to
    the runtime's canonical float CHW in [0, 1] (`to_chw_float`, the prefix graph's own preprocessing), so a
    uint8 HWC and a float CHW frame of one scene compare equal. A camera whose resolution (or the camera count)
    changed since planning cannot be compared pixel by pixel: the distance is inf (→ resample)."""
    if not images:
        raise ValueError("pixel gate: no camera image")
    if len(images) != len(plan_images):
        return math.inf
    total, count = 0.0, 0
    for now, then in zip(images, plan_images):
        a, b = np.asarray(now), np.asarray(then)
        if a.dtype == b.dtype == np.uint8 and a.shape == b.shape:  # exact integer levels (the common case)
            diff = np.maximum(a, b)  # |a - b| = max - min, in uint8 (no overflow, two frame-size temporaries)
            diff -= np.minimum(a, b)
            total += float(diff.sum(dtype=np.int64))
        else:
            a, b = to_chw_float(a), to_chw_float(b)
            if a.shape != b.shape:
                return math.inf
            total += float(np.abs(a.astype(np.float64) - b.astype(np.float64)).sum()) * 255.0
        count += a.size
    return total / count


class PixelGate(_ThresholdGate):
    """Resample when the camera image changed by more than thr (mean |Δ|, uint8 levels) since planning: the
    baseline any user has without a CLS head. It cannot tell a moved goal from a lighting change."""

    name = "pixel"
    needs_image = True

    def _decide(self, inp: GateInputs) -> GateDecision:
        d = mean_abs_pixel_change(_need(inp.images, "images"), _need(inp.plan_images, "plan_images"))
        if math.isinf(d):
            return GateDecision(True, True, d, self.threshold, "pixel_shape_changed")
        return self._fire(d)


RANDOM_GATE_STREAM = 0x6A7E  # salts the gate's seed: EdgePolicy seeds its noise generator with the same number


class RandomGate(Gate):
    """Fires with probability p per check: the matched-budget baseline for any learned gate. Its draws come from
    their own stream of `seed`, not the policy's noise stream of the same seed (else they follow the plan's noise)."""

    name = "random"

    def __init__(self, p: float, check_every: int = 1, seed: int = 0):
        super().__init__(check_every)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"random gate p must be in [0, 1], got {p}")
        self.p = float(p)
        self._rng = np.random.default_rng([seed, RANDOM_GATE_STREAM])

    @property
    def spec(self) -> str:
        return f"random:{self.p:g}"

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng([seed, RANDOM_GATE_STREAM])

    def _decide(self, inp: GateInputs) -> GateDecision:
        return GateDecision(bool(self._rng.random() < self.p), True, None, self.p, "random")


class AnyGate(Gate):
    """Resample when any of its parts would: e.g. drift (fast on a jump) with consistency (the plan no longer
    fits). The firing part's decision is returned as is, so its reason, distance and threshold reach the
    seam rule (`seam.world_changed`) and the tick report; when none fires, the part closest to its threshold
    (largest distance / threshold) is reported."""

    name = "any"

    def __init__(self, parts: list[Gate], check_every: int = 1):
        super().__init__(check_every)
        if len(parts) < 2:
            raise ValueError(f"gate 'any' needs at least two parts, got {len(parts)}")
        for p in parts:
            if p.name in ("any", "random"):
                raise ValueError(f"gate 'any': part {p.spec!r} cannot be combined (any and random are not allowed)")
        self.parts = parts
        self.needs_obs_cls = any(p.needs_obs_cls for p in parts)
        self.needs_act_cls = any(p.needs_act_cls for p in parts)
        self.needs_state = any(p.needs_state for p in parts)
        self.needs_image = any(p.needs_image for p in parts)

    @property
    def spec(self) -> str:
        return "any:" + ",".join(p.spec for p in self.parts)

    def _decide(self, inp: GateInputs) -> GateDecision:
        decisions = [p._decide(inp) for p in self.parts]  # the queue / check_every rules are this gate's own
        # a part that saw the world change wins over a schedule (interval) firing on the same tick, whatever the
        # order of the spec: the seam rule reacts only to the former
        fired = [(p, d) for p, d in zip(self.parts, decisions) if d.resample]
        if fired:
            return next((d for p, d in fired if p.name not in SCHEDULE_GATES), fired[0][1])

        def closeness(d: GateDecision) -> float:
            return d.distance / d.threshold if d.distance is not None and d.threshold else -math.inf

        return max(decisions, key=closeness)

    def _between_checks(self, inp: GateInputs) -> GateDecision:
        for part in self.parts:  # only schedules can decide without the skipped inputs (e.g. the cap of the default)
            decision = part._between_checks(inp)
            if decision.resample:
                return decision
        return super()._between_checks(inp)


OBSERVER_THRESHOLD = 1e9  # above any distance (cosine <= 2, mean |Δ| <= 255, state is bounded): never fires


def observing_gate(name: str, check_every: int = 1) -> Gate:
    """A drift/consistency/jump/state/pixel gate that checks (its distance is reported) but never fires: for
    recording distances (benchmarks, tests). Not a spec: `make_gate` refuses thresholds that can never fire."""
    classes: dict[str, type[_ThresholdGate]] = {"drift": DriftGate, "consistency": ConsistencyGate,
                                                "jump": JumpGate, "state": StateGate, "pixel": PixelGate}
    cls = classes.get(name)
    if cls is None:
        raise ValueError(f"observing_gate: no threshold gate named {name!r}")
    return cls(OBSERVER_THRESHOLD, check_every)


def jump_lag_mismatch(gate: Gate, calibration: Mapping[str, GateCalibration], lag: int) -> str | None:
    """Why a `jump` part's manifest threshold does not fit how far apart its observations are, or None: it was
    calibrated on observations one tick apart, while `check_every` > 1 or an asynchronous delay (after a
    resample the worker compares observations `delay` ticks apart) make the pairs `lag` ticks apart."""
    cal = calibration.get("jump")
    if lag < 2 or cal is None or cal.default_threshold is None:
        return None
    for part in getattr(gate, "parts", None) or [gate]:
        if part.name == "jump" and getattr(part, "threshold", None) == cal.default_threshold:
            return (f"gate {part.spec} uses the manifest's lag-1 threshold, but its observations are up to {lag} "
                    f"ticks apart (check_every / async delay): ordinary motion over {lag} ticks will fire it; give "
                    f"an explicit threshold (e.g. jump:<p95 of {lag}-tick distances>)")
    return None


def make_gate(spec: str, calibration: Mapping[str, GateCalibration] | None = None, check_every: int = 1,
              seed: int = 0) -> Gate:
    """Parse a gate spec string; a missing drift/consistency/jump threshold comes from `calibration`."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"gate spec must be a non-empty string, got {spec!r}")
    name, _, arg = spec.strip().partition(":")
    name = name.lower()
    if name == "any":
        parts = [p.strip() for p in arg.split(",")]
        if len(parts) < 2 or not all(parts):
            raise ValueError(f"gate '{spec}': 'any' needs two or more comma-separated gate specs, "
                             "e.g. 'any:drift,consistency'")
        return AnyGate([make_gate(p, calibration, check_every, seed) for p in parts], check_every)

    def number(kind: type, what: str) -> Any:
        if not arg:
            raise ValueError(f"gate '{name}' needs {what}, e.g. '{name}:{'5' if kind is int else '0.1'}'")
        try:
            return kind(arg)
        except ValueError:
            raise ValueError(f"gate '{spec}': {what} must be {'an integer' if kind is int else 'a number'}, got {arg!r}") from None

    if name in ("always", "never"):
        if arg:
            raise ValueError(f"gate '{spec}': '{name}' takes no argument")
        return (AlwaysGate if name == "always" else NeverGate)(check_every)
    if name == "interval":
        return IntervalGate(number(int, "an interval k"), check_every)
    if name in MANIFEST_THRESHOLD_GATES:
        if arg:
            thr = number(float, "a threshold")
        else:
            cal = (calibration or {}).get(name)
            if cal is None or cal.default_threshold is None:
                raise ValueError(f"gate '{name}' has no threshold: the manifest's gate.{name}.default_threshold "
                                 f"is not set; pass one explicitly, e.g. '{name}:0.1'")
            thr = cal.default_threshold
        # a cosine distance is at most 2 and the gate fires on distance > threshold: from 2 on it never fires
        if not 0 <= thr < MAX_COSINE_DISTANCE:  # NaN fails too
            raise ValueError(f"gate '{spec}': a {name} threshold must be a finite cosine distance in [0, 2) (2, "
                             f"opposite directions, is the largest: from there the gate never fires), got {thr:g}")
        cls = {"drift": DriftGate, "consistency": ConsistencyGate, "jump": JumpGate}[name]
        return cls(thr, check_every)
    if name == "random":
        return RandomGate(number(float, "a firing probability p"), check_every, seed)
    if name in ("state", "pixel"):  # pixel is not in the manifest's calibration: evaluation.gate_bench calibrates it
        thr = PIXEL_DEFAULT_THRESHOLD if name == "pixel" and not arg else number(
            float, "an L2 threshold in raw state units" if name == "state" else "a mean |Δ| threshold in uint8 levels")
        if not 0 <= thr < math.inf:  # NaN fails too; a negative one would fire on every check
            raise ValueError(f"gate '{spec}': a {name} threshold must be a finite number >= 0, got {thr:g}")
        kind: type[_ThresholdGate] = StateGate if name == "state" else PixelGate
        return kind(thr, check_every)
    raise ValueError(f"unknown gate {spec!r}; choose one of: default (policy only), always, never, interval:k, drift[:thr], "
                     f"consistency[:thr], jump[:thr], random:p, state:thr, pixel[:thr], any:SPEC,SPEC")
