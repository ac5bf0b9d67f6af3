"""How far does a policy's open-loop plan carry the agent past the goal? (docs/06c "chunk labels that stop")

For each held-out frame (`smolvla_cls.alignment.collect_heldout`: one frame per fresh scripted episode), the
policy's sampled chunk is integrated from the agent's position as the task executes it (each row clipped to
the maximum step): overshoot = distance to the goal at the plan's end − the closest distance on the way. A
plan that stops at the goal scores ~0; one whose tail keeps moving scores up to its remaining rows' length.
Chunk rows past an episode's end are never supervised unless the model was trained with `--pad-hold`.

Usage: PYTHONPATH=. python scripts/plan_overshoot.py --checkpoint <pretrained_model> [--episodes 100]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def overshoot(start: np.ndarray, goal: np.ndarray, rows: np.ndarray, max_step: float) -> float:
    """Final minus closest distance to `goal` along the path of `rows` [T, 2] from `start`, rows clipped."""
    from simtask.reach_env import clip_action  # the task's own clipping (a non-finite row is refused)

    rows = np.stack([clip_action(r, max_step) for r in np.asarray(rows, dtype=np.float64)])
    dist = np.linalg.norm(np.asarray(start, dtype=np.float64) + np.cumsum(rows, axis=0) - goal, axis=1)
    return float(dist[-1] - min(dist.min(), np.linalg.norm(np.asarray(start) - goal)))


def main(argv: list[str] | None = None) -> int:
    from evaluation.cli_args import output_file, positive_int

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--episodes", type=positive_int, default=100)
    parser.add_argument("--json", type=output_file, default=None)
    args = parser.parse_args(argv)
    from simtask import TaskConfig
    from simtask.config import STATE_KEY
    from smolvla_cls.alignment import collect_heldout
    from smolvla_cls.torch_policy import TorchPolicy

    policy = TorchPolicy(args.checkpoint)
    cfg = TaskConfig()
    heldout = collect_heldout(policy.config.chunk_size, args.episodes)
    values = np.array([overshoot(obs[STATE_KEY], goal, policy.predict_chunk(obs)[:, :2], cfg.max_step)
                       for obs, goal in zip(heldout.observations, heldout.goals, strict=True)])
    result = {"checkpoint": str(args.checkpoint), "episodes": args.episodes, "mean": float(values.mean()),
              "p90": float(np.percentile(values, 90)), "share_over_0.1": float((values > 0.1).mean())}
    print(f"overshoot mean {result['mean']:.3f}, p90 {result['p90']:.3f}, share > 0.1: {result['share_over_0.1']:.2f} "
          f"({args.episodes} held-out frames; a full step is {cfg.max_step})")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
