"""Timing for every variant: CUDA events on a GPU, perf_counter on the CPU, and the median/p90 summary."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def summarize(ms: list[float]) -> dict[str, float]:
    import numpy as np

    a = np.asarray(ms, dtype=np.float64)
    if a.size == 0:
        return {"n": 0, "median_ms": float("nan"), "p90_ms": float("nan"), "min_ms": float("nan")}
    return {"n": int(a.size), "median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
            "min_ms": float(a.min())}


class Timer:
    """CUDA events on a GPU (device time of the enqueued work, after a sync), perf_counter on the CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def run(self, fn: Callable[[], Any], reps: int, warmup: int) -> list[float]:
        for _ in range(warmup):
            fn()
        self.sync()
        out = []
        if self.cuda:
            import torch

            for _ in range(reps):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                out.append(a.elapsed_time(b))
        else:
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1e3)
        return out
