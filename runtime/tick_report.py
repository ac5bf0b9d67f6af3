"""What one `EdgePolicy.step()` did (TickInfo) and the running totals (Counters) the policy reports."""

from __future__ import annotations

from dataclasses import dataclass, fields


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
    plan_encoder_passes: int = 0  # act-CLS of the remaining plan (consistency gate, plan_only wiring)
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
