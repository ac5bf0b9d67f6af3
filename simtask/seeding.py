"""Per-episode seeds derived from one base seed, in separate streams so that training and
evaluation scenes never coincide even when both use base seed 0."""

from __future__ import annotations

import numpy as np

STREAMS = {"train": 1, "eval": 2, "bench": 3, "bench_calibration": 4}  # bench*: evaluation.gate_bench


def episode_seeds(base_seed: int, n: int, stream: str = "eval") -> list[int]:
    """``n`` reproducible 63-bit episode seeds for ``stream`` (one of STREAMS)."""
    if stream not in STREAMS:
        raise ValueError(f"episode_seeds: stream must be one of {sorted(STREAMS)} (got {stream!r})")
    if n < 0:
        raise ValueError(f"episode_seeds: n must be >= 0 (got {n})")
    seq = np.random.SeedSequence([int(base_seed), STREAMS[stream]])
    words = seq.generate_state(max(n, 1) * 2, dtype=np.uint32).astype(np.uint64)
    seeds = (words[0::2] << np.uint64(31)) ^ words[1::2]
    return [int(s) for s in seeds[:n]]
