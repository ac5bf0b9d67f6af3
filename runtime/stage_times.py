"""Stage times of the policy's tick as EMAs, and the deadline rule's estimate of what a resample still costs."""

from __future__ import annotations

EMA_ALPHA = 0.2


def update_ema(ema: dict[str, float], stage: str, ms: float) -> None:
    """Fold one measured `ms` of `stage` into `ema` (the first measurement is taken as is)."""
    prev = ema.get(stage)
    ema[stage] = ms if prev is None else prev + EMA_ALPHA * (ms - prev)


def resample_cost_ms(ema: dict[str, float], prefix_done: bool, refine: bool) -> float | None:
    """Estimated ms a resample adds to the tick (denoise + post, the prefix when it has not run yet, the delta
    step when refining); None before any denoise was measured (nothing to go on: never defer then)."""
    if "denoise" not in ema:
        return None
    est = ema["denoise"] + ema.get("post", 0.0)
    if not prefix_done:
        est += ema.get("images", 0.0) + ema.get("prefix", 0.0)
    if refine:
        est += ema.get("delta", 0.0)
    return est
