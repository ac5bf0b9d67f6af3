"""Closed-loop episodes of an artifact folder on the simulated reach task, with the per-stage latency table.

A development tool (never installed on a robot): it drives `runtime.policy.EdgePolicy` through `simtask`.

    python -m evaluation run --artifacts artifacts/onnx --backend onnxruntime --gate drift --episodes 20 --perturb --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from evaluation.cli_args import int_in, positive_float, positive_int
from runtime.cli_flags import as_flags
from runtime.manifest import ManifestError
from runtime.policy import EdgePolicy, TickInfo
from runtime.policy_arguments import add_identity_arguments
from simtask import ReachEnv, TaskConfig, evaluate_policy


class _RecordingPolicy:
    """simtask adapter: `act = step`, and keeps every tick's TickInfo for the latency table."""

    def __init__(self, policy: EdgePolicy):
        self.policy = policy
        self.infos: list[TickInfo] = []

    def reset(self) -> None:
        self.policy.reset()

    def act(self, obs: dict) -> np.ndarray | None:
        action = self.policy.step(obs)  # None: nothing sent (the simulated agent stays where it is)
        self.infos.append(self.policy.last_info)
        return action


def latency_table(infos: list[TickInfo]) -> dict[str, dict[str, float]]:
    """Per stage: how many ticks ran it, and median/p90 ms over those ticks."""
    out = {}
    for stage in TickInfo.STAGES:
        ms = np.array([getattr(i, f"{stage}_ms") for i in infos], dtype=np.float64)
        ran = ms[ms > 0] if stage != "total" else ms
        out[stage] = {"n": int(ran.size),
                      "median_ms": float(np.median(ran)) if ran.size else 0.0,
                      "p90_ms": float(np.percentile(ran, 90)) if ran.size else 0.0}
    return out


def check_json_target(path: str) -> Path:
    """--json must name a writable file path (checked before any episode runs, not after all of them)."""
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"--json {path}: is a folder; give a file path such as {target / 'summary.json'}")
    folder = target.parent
    while not folder.exists():  # the nearest existing ancestor decides whether the parents can be created
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"--json {path}: {folder} is a file, so the folder cannot be created")
    if not os.access(folder, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise ValueError(f"--json {path}: not writable by this user")
    return target


def _run(args: argparse.Namespace) -> int:
    json_target = check_json_target(args.json) if args.json else None
    options: dict = {"engines": args.engines} if args.backend == "tensorrt" and args.engines else {}
    if args.run_timeout_ms is not None:
        options["run_timeout_ms"] = args.run_timeout_ms
    policy = EdgePolicy(args.artifacts, backend=args.backend, gate=args.gate, refine=args.refine,
                        num_steps=args.num_steps, seed=args.seed, tick_budget_ms=args.tick_budget_ms,
                        fallback=args.fallback, check_every=args.check_every, device=args.device,
                        backend_options=options, expected_digest=args.expect_digest, trusted_keys=args.trusted_key)
    if args.warmup > 0:
        policy.warmup(ReachEnv(TaskConfig()).reset(seed=2**31 - 1), runs=args.warmup)
    rec = _RecordingPolicy(policy)
    per_episode: list[dict] = []
    report = evaluate_policy(rec, n_episodes=args.episodes, seed=args.seed, perturb=args.perturb,
                             swap_instruction=args.swap_instruction, config=TaskConfig(),
                             on_episode=lambda res: per_episode.append(policy.episode_counters.as_dict()))
    policy.close()
    lat = latency_table(rec.infos)
    n = len(per_episode)
    mean = {k: float(np.mean([c[k] for c in per_episode])) for k in per_episode[0]} if n else {}
    summary = {
        "artifacts": str(args.artifacts), "backend": args.backend, "device": args.device, "gate": policy.gate.spec,
        "check_every": args.check_every, "refine": args.refine, "num_steps": policy.num_steps,
        "episodes": args.episodes, "perturb": args.perturb, "swap_instruction": args.swap_instruction, "seed": args.seed,
        "success_rate": report.success_rate, "mean_recovery_ticks": report.mean_recovery_ticks,
        "per_episode_mean": mean, "totals": policy.counters.as_dict(), "latency_ms": lat,
    }
    print(f"artifacts {args.artifacts}  backend {args.backend}/{args.device}  gate {policy.gate.spec}  "
          f"refine {args.refine}  steps {policy.num_steps}")
    print(f"episodes {args.episodes}  perturb {args.perturb}  swap_instruction {args.swap_instruction}  seed {args.seed}")
    print(f"success rate          {report.success_rate:.3f}")
    if report.mean_recovery_ticks is not None:
        print(f"mean recovery ticks   {report.mean_recovery_ticks:.1f}")
    print(f"per episode: ticks {mean.get('ticks', 0):.1f}  full resamples {mean.get('resamples', 0):.2f}  "
          f"prefix passes {mean.get('prefix_passes', 0):.1f}  delta passes {mean.get('delta_passes', 0):.1f}  "
          f"plan-encoder passes {mean.get('plan_encoder_passes', 0):.1f}")
    t = policy.counters
    print(f"totals: faults {t.faults}  fallbacks {t.fallbacks}  clipped {t.clipped}  "
          f"deadline misses {t.deadline_misses}  deferred {t.deferred_resamples}")
    print(f"{'stage':<11}{'ticks':>7}{'median ms':>11}{'p90 ms':>9}")
    for stage, row in lat.items():
        print(f"{stage:<11}{row['n']:>7}{row['median_ms']:>11.3f}{row['p90_ms']:>9.3f}")
    if json_target is not None:
        json_target.parent.mkdir(parents=True, exist_ok=True)
        json_target.write_text(json.dumps(summary, indent=2))
        print(f"wrote {json_target}")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `run` flags (shared with the historical `python -m runtime run`)."""
    p.add_argument("--artifacts", default="artifacts/onnx", help="artifact folder (manifest.json, graphs, tokenizer)")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="onnxruntime execution provider")
    p.add_argument("--engines", default=None,
                     help="TensorRT engine folder (default: <artifacts>/../engines)")
    p.add_argument("--gate", default="default",
                     help="default (the manifest's gate.default) | always | never | interval:k | drift[:thr] | "
                          "consistency[:thr] | jump[:thr] | random:p | state:thr | pixel[:thr] | any:SPEC,SPEC")
    p.add_argument("--check-every", type=positive_int, default=1, help="consult the gate every m ticks")
    p.add_argument("--refine", action=argparse.BooleanOptionalAction, default=False,
                     help="one delta-expert step on the plan at resample and on kept ticks")
    p.add_argument("--num-steps", type=positive_int, default=None, help="Euler steps (default: the manifest's)")
    p.add_argument("--episodes", type=positive_int, default=20)
    p.add_argument("--perturb", action="store_true", help="target jumps mid-episode")
    p.add_argument("--swap-instruction", action="store_true", help="instruction names another disc (language probe)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tick-budget-ms", type=positive_float, default=None)
    p.add_argument("--fallback", default="hold", choices=["hold", "stop"])
    p.add_argument("--warmup", type=int_in(0, 1000), default=3,
                   help="untimed full resamples before the first episode (0: none)")
    p.add_argument("--json", default=None, help="also write the summary as JSON here")
    p.add_argument("--run-timeout-ms", type=positive_float, default=None,
                   help="onnxruntime: terminate a graph call after this long (fault + safe action, not a hang)")
    add_identity_arguments(p)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    add_arguments(sub.add_parser("run", help="closed-loop episodes on the simulated reach task"))
    args = p.parse_args(argv)
    try:
        return _run(args)
    except (ManifestError, ValueError, RuntimeError, ImportError, OSError) as exc:  # incl. BackendError, TensorRT missing
        print(f"error: {as_flags(str(exc), _FLAGS)}", file=sys.stderr)
        return 2


# EdgePolicy's argument errors name its parameters; runtime.cli_flags maps the ones every CLI shares, these are
# this command's own (its --warmup feeds the latency runs, `runs`)
_FLAGS = {"runs": "--warmup", "gate": "--gate", "artifacts_dir": "--artifacts"}


if __name__ == "__main__":
    sys.exit(main())
