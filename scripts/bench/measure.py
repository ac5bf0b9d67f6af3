"""Timing and memory primitives the measurement children share: repetition counts, medians/p90, RSS."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np

DEFAULT_REPS = {"tiny": 30, "full": 5}


def summarize(ms: list[float] | np.ndarray) -> dict[str, float]:
    a = np.asarray(ms, dtype=np.float64)
    if a.size == 0:
        return {"n": 0, "median_ms": float("nan"), "p90_ms": float("nan"), "mean_ms": float("nan"), "min_ms": float("nan")}
    return {"n": int(a.size), "median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
            "mean_ms": float(a.mean()), "min_ms": float(a.min())}


def rss_mb() -> dict[str, float]:
    """Current and high-water RSS of this process (MB) from /proc, and ru_maxrss (lifetime peak)."""
    out = {"ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                key = "rss_mb" if line.startswith("VmRSS") else "hwm_mb"
                out[key] = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return out


def reset_peak_rss() -> bool:
    """Reset VmHWM so the inference-phase peak can be read later (Linux >= 4.0; best effort)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def timed(fn, reps: int, warmup: int = 0) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def reps_for(cfg: str, reps: int | None, smoke: bool) -> tuple[int, int, int]:
    """(reps for chunk-sized work, reps for single expert steps, warm-up runs)."""
    big = 2 if smoke else (reps or DEFAULT_REPS.get(cfg, 5))
    small = big if smoke else max(4 * big, 20)
    warm = 1 if (smoke or cfg == "full") else 3
    return big, small, warm
