"""Model-free ceilings for obs -> chunk retrieval on the held-out pairs (`alignment.collect_heldout`).

How precisely must an observation be read for its own ground-truth chunk to be the nearest of the B
candidates? The oracle knows the agent's position exactly (it is the state) and the goal's centre up to
Gaussian perception noise of std `sigma` (unit-square units; one pixel of the 64² image is 1/64 ≈ 0.016). It
predicts the chunk by rolling the noise-free expert forward from there (a future target jump is unknowable),
as the held-out chunks were recorded: an unperturbed episode (or one after its jump) ends at the success
radius and its last row repeats past it (lerobot's padding); a perturbed episode before its jump does not end
there (`hold_until_perturb`): the expert steps to the disc's centre and holds with zero rows.
Two queries per frame: the whole predicted chunk (L2 to every candidate chunk), and its first row alone (L2
to every candidate's first row; the first row is the one part of a chunk the observation determines exactly,
the later rows also carry the expert's execution noise).

CLI: python -m smolvla_cls.retrieval_oracle [--episodes 256] [--sigmas 0,0.002,0.004,0.008,0.016] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from simtask.reach_env import clip_action
from smolvla_cls.alignment import HELDOUT_BASE_SEED, HeldOut, collect_heldout, nearest_top1

PIXEL = 1.0 / 64  # one pixel of the default 64² image, in unit-square units


def oracle_chunk(agent: np.ndarray, goal: np.ndarray, length: int, max_step: float, success_radius: float,
                 ends_at_success: bool = True) -> np.ndarray:
    """The noise-free expert's next `length` displacements from `agent` toward `goal` [length, 2]. With
    `ends_at_success`, once the agent is within `success_radius` the episode has ended and the last row
    repeats (lerobot's padding); without, the expert keeps stepping to the goal's centre (then zero rows)."""
    p = np.asarray(agent, dtype=np.float64).copy()
    g = np.asarray(goal, dtype=np.float64)
    rows: list[np.ndarray] = []
    for _ in range(length):
        if ends_at_success and rows and np.linalg.norm(g - p) < success_radius:
            rows.append(rows[-1])
            continue
        a = clip_action(g - p, max_step)  # the expert's own step (simtask.expert)
        rows.append(a)
        p = p + a
    return np.stack(rows)


def oracle_top1(heldout: HeldOut, sigma: float, max_step: float, success_radius: float, state_key: str,
                seed: int = 0) -> dict[str, float]:
    """Retrieval top-1 of the oracle whose goal estimate has perception noise `sigma` (module docstring)."""
    if not heldout.goals or len(heldout.goals) != len(heldout):
        raise ValueError("oracle_top1: the held-out set has no goal positions (collect it with collect_heldout)")
    if not sigma >= 0:
        raise ValueError(f"oracle_top1: sigma must be >= 0, got {sigma!r}")
    rng = np.random.default_rng([seed, 0x0A])
    length = heldout.chunks[0].shape[0]
    queries = np.stack([
        oracle_chunk(np.asarray(obs[state_key], dtype=np.float64), goal + rng.normal(0.0, sigma, 2), length,
                     max_step, success_radius, ends_at_success=phase != "before jump")
        for obs, goal, phase in zip(heldout.observations, heldout.goals, heldout.phase, strict=True)])
    gallery = np.stack(heldout.chunks).astype(np.float64)
    return {"sigma": float(sigma), "sigma_pixels": float(sigma / PIXEL),
            "chunk_top1": nearest_top1(queries, gallery),
            "first_action_top1": nearest_top1(queries[:, :1], gallery[:, :1])}


def main(argv: list[str] | None = None) -> int:
    from evaluation.cli_args import int_in, non_negative_int, output_file, positive_int
    from simtask import TaskConfig
    from simtask.config import STATE_KEY

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int_in(2, 10**6), default=256)
    parser.add_argument("--chunk-size", type=positive_int, default=10)
    parser.add_argument("--seed", type=non_negative_int, default=HELDOUT_BASE_SEED)
    parser.add_argument("--sigmas", default="0,0.002,0.004,0.008,0.016")
    parser.add_argument("--json", type=output_file, default=None)
    args = parser.parse_args(argv)
    try:
        sigmas = [float(v) for v in args.sigmas.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--sigmas: expected comma-separated numbers, got {args.sigmas!r}")
    if not sigmas or not all(math.isfinite(s) and s >= 0 for s in sigmas):
        parser.error(f"--sigmas: expected finite non-negative numbers, got {args.sigmas!r}")
    cfg = TaskConfig()
    heldout = collect_heldout(args.chunk_size, args.episodes, args.seed, config=cfg)
    rows = [oracle_top1(heldout, s, cfg.max_step, cfg.success_radius, STATE_KEY) for s in sigmas]
    print(f"| goal noise σ (px) | whole-chunk top-1 | first-action top-1 |  ({args.episodes} pairs, n = {args.chunk_size})")
    for r in rows:
        print(f"| {r['sigma']:.3f} ({r['sigma_pixels']:.2f}) | {r['chunk_top1']:.3f} | {r['first_action_top1']:.3f} |")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
