"""Closed-loop evaluation of a trained `smolvla_cls` checkpoint (PyTorch) on the simtask reach task.

    python -m smolvla_cls.closed_loop_eval --checkpoint DIR --episodes 50 [--perturb] [--seed 0]
        [--swap-instruction] [--language-control] [--untrained-baseline] [--n-action-steps N] [--json OUT]

Reports the success rate on fixed evaluation seeds (simtask's 'eval' seed stream). Controls:
- `--language-control`: the same scenes again with a swapped instruction; success is still measured on
  the originally intended disc, so a policy that follows language falls to about chance there.
- `--untrained-baseline`: a policy of the same config with random weights (expected < 10 %).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def evaluate_checkpoint(checkpoint: str | Path, episodes: int = 50, seed: int = 0, perturb: bool = False,
                        swap_instruction: bool = False, untrained: bool = False, n_action_steps: int | None = None,
                        noise_seed: int = 0, policy=None, progress: bool = True, label: str = "") -> dict[str, Any]:
    """One evaluation run -> summary dict (success_rate, counts, timings, per-episode outcomes)."""
    from simtask import TaskConfig, evaluate_policy
    from smolvla_cls.torch_policy import TorchPolicy

    if policy is None:
        policy = TorchPolicy(checkpoint, n_action_steps=n_action_steps, noise_seed=noise_seed, untrained=untrained)
    done = [0, 0]
    tag = label or ("untrained" if untrained else "trained") + (" perturbed" if perturb else "") + (
        " swapped" if swap_instruction else "")

    def on_episode(res) -> None:
        done[0] += 1
        done[1] += int(res.success)
        if progress and (done[0] % 10 == 0 or done[0] == episodes):
            print(f"[eval] {tag}: {done[0]}/{episodes} episodes, {done[1]} successes", flush=True)

    started = time.time()
    report = evaluate_policy(policy, n_episodes=episodes, seed=seed, perturb=perturb,
                             swap_instruction=swap_instruction, config=TaskConfig(), on_episode=on_episode)
    d = report.as_dict()
    d.pop("config", None)
    d["episodes"] = [{k: e[k] for k in ("seed", "success", "steps", "final_distance")} for e in d["episodes"]]
    d.update(label=tag, untrained=untrained, n_action_steps=policy.config.n_action_steps,
             chunk_size=policy.config.chunk_size, seconds=time.time() - started,
             successes=sum(e["success"] for e in d["episodes"]))
    return d


def chance_level(n_targets: int | None = None) -> float:
    """Success of a policy that picks one of the discs at random (the swapped-instruction floor of a
    policy that ignores the word is its own score; one that follows it scores ~0 on the intended disc)."""
    from simtask import TaskConfig

    return 1.0 / (n_targets or TaskConfig().n_targets)


def main(argv: list[str] | None = None) -> int:
    from evaluation.cli_args import non_negative_int, output_file, positive_int

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="lerobot pretrained_model folder")
    parser.add_argument("--episodes", type=positive_int, default=50)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--perturb", action="store_true", help="target jumps once per episode")
    parser.add_argument("--swap-instruction", action="store_true", help="only the swapped-instruction run")
    parser.add_argument("--language-control", action="store_true",
                        help="also run the same scenes with a swapped instruction")
    parser.add_argument("--untrained-baseline", action="store_true",
                        help="also run a randomly initialised policy of the same config")
    parser.add_argument("--n-action-steps", type=positive_int, default=None,
                        help="replan every N steps (default: config)")
    parser.add_argument("--noise-seed", type=non_negative_int, default=0)
    parser.add_argument("--json", type=output_file, default=None, help="write the summaries here")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch CPU threads (1: batch-1 inference of the tiny model gains nothing from more, "
                             "and extra threads stall badly on a loaded machine)")
    args = parser.parse_args(argv)
    if not args.checkpoint.is_dir():
        raise SystemExit(f"closed_loop_eval: checkpoint folder {args.checkpoint} does not exist")
    common = dict(episodes=args.episodes, seed=args.seed, perturb=args.perturb, n_action_steps=args.n_action_steps,
                  noise_seed=args.noise_seed)
    import torch

    from smolvla_cls.torch_policy import TorchPolicy

    torch.set_num_threads(args.threads)
    try:
        policy = TorchPolicy(args.checkpoint, n_action_steps=args.n_action_steps, noise_seed=args.noise_seed)
    except ValueError as exc:  # --n-action-steps past the checkpoint's chunk
        parser.error(str(exc).replace("TorchPolicy: n_action_steps", "--n-action-steps"))
    runs = [evaluate_checkpoint(args.checkpoint, swap_instruction=args.swap_instruction, policy=policy, **common)]
    if args.language_control and not args.swap_instruction:
        runs.append(evaluate_checkpoint(args.checkpoint, swap_instruction=True, policy=policy, **common))
    if args.untrained_baseline:
        runs.append(evaluate_checkpoint(args.checkpoint, untrained=True, **common))
    print(f"\ncheckpoint: {args.checkpoint}")
    print(f"chance (random disc): {chance_level():.2f}")
    for r in runs:
        print(f"{r['label']:<28} success {r['success_rate']:.3f} ({r['successes']}/{r['n_episodes']}), "
              f"mean ticks {r['mean_ticks_to_success']}, act {r['mean_act_ms']:.1f} ms, {r['seconds']:.0f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"checkpoint": str(args.checkpoint), "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
