"""The price of reactivity on the perturbed simulated task, with the trained default model.

    python -m scripts.bench_reactivity [--checkpoint DIR] [--artifacts DIR] [--episodes 50] [--out reports/bench]

Same weights on both sides, on the same 50 perturbed episodes (the target jumps mid-episode):
- LeRobot: `SmolVLAPolicy.select_action` (lerobot's own class, loaded with the trained weights; the CLS
  tokens are read-outs, so its actions are the trained policy's) through the checkpoint's saved pre/post
  processors, reactive (`n_action_steps=1`: a new chunk every tick) and open loop (`n_action_steps` = chunk,
  LeRobot's default);
- ours: `runtime.EdgePolicy` on onnxruntime CPU with gates `always`, `interval:<chunk>` and the calibrated
  `drift` gate from the manifest (every tick, and checked every 2 ticks).
Per row: success, wall milliseconds per tick around the policy call (pre/post-processing included on both
sides), full resamples per episode, and the ratio to each LeRobot mode. Writes `<out>/reactivity.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_CHECKPOINT = Path("outputs/train/default/checkpoints/last/pretrained_model")
DEFAULT_ARTIFACTS = Path("artifacts/onnx")


class _Timed:
    """simtask policy adapter that times every `act` and counts chunks (resamples)."""

    def __init__(self, act, reset, resampled) -> None:
        self._act, self._reset, self._resampled = act, reset, resampled
        self.ms: list[float] = []
        self.resamples = 0

    def reset(self) -> None:
        self._reset()

    def act(self, obs: dict) -> np.ndarray:
        t = time.perf_counter()
        a = self._act(obs)
        self.ms.append(1000.0 * (time.perf_counter() - t))
        self.resamples += int(self._resampled())
        return a


def _row(name: str, side: str, report: Any, timed: _Timed, episodes: int, note: str = "") -> dict:
    ms = np.asarray(timed.ms)
    return {"name": name, "side": side, "success_rate": report.success_rate, "ticks": int(ms.size),
            "ticks_per_episode": ms.size / episodes, "mean_ms_per_tick": float(ms.mean()),
            "median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "resamples_per_episode": timed.resamples / episodes,
            "mean_recovery_ticks": report.mean_recovery_ticks, "note": note}


def lerobot_rows(checkpoint: Path, episodes: int, threads: int) -> list[dict]:
    import torch

    from scripts.bench import plain_smolvla_from
    from simtask import TaskConfig, evaluate_policy
    from smolvla_cls.torch_policy import TorchPolicy

    torch.set_num_threads(threads)
    rows = []
    for label, steps in (("reactive", 1), ("open loop", None)):
        tp = TorchPolicy(checkpoint, n_action_steps=steps, noise_seed=0)
        tp.policy = plain_smolvla_from(tp.policy)  # lerobot's own SmolVLAPolicy, same weights and config

        def resampled(tp=tp) -> bool:
            # select_action refills the queue with n_action_steps actions and pops one; reset() replaces the
            # queue object, so look it up on every call
            return len(tp.policy._queues["action"]) == tp.policy.config.n_action_steps - 1

        timed = _Timed(tp.act, tp.reset, resampled)
        tp.act(_warm_obs())  # warm-up (not timed)
        rep = evaluate_policy(timed, n_episodes=episodes, seed=0, perturb=True, config=TaskConfig())
        n = tp.config.n_action_steps
        rows.append(_row(f"LeRobot {label} (n_action_steps={n})", "lerobot", rep, timed, episodes,
                         "SmolVLAPolicy.select_action, eager"))
    return rows


def ours_rows(artifacts: Path, episodes: int, threads: int) -> list[dict]:
    from runtime.backend_onnxruntime import OnnxRuntimeBackend
    from runtime.manifest import Manifest
    from runtime.policy import EdgePolicy
    from scripts.bench import SimtaskAdapter
    from simtask import IMAGE_KEY, TaskConfig, evaluate_policy

    m = Manifest.load(artifacts, verify_hashes=True)
    backend = OnnxRuntimeBackend(artifacts, m, intra_op_threads=threads)
    cam = m.camera_keys[0]
    chunk = m.dims.n_action_steps
    rows = []
    for gate, every in (("always", 1), (f"interval:{chunk}", 1), ("drift", 1), ("drift", 2)):
        pol = EdgePolicy(artifacts, backend=backend, gate=gate, check_every=every, seed=0, verify_hashes=False)
        sim = SimtaskAdapter(pol, cam)  # simtask's camera key -> the artifact's
        timed = _Timed(sim.act, sim.reset, lambda pol=pol: pol.last_info.resampled)
        warm = _warm_obs()
        pol.warmup(warm if cam in warm else {**warm, cam: warm[IMAGE_KEY]}, runs=3)
        rep = evaluate_policy(timed, n_episodes=episodes, seed=0, perturb=True, config=TaskConfig())
        name = f"ours {pol.gate.spec}" + (f", checked every {every} ticks" if every > 1 else "")
        rows.append(_row(name, "ours", rep, timed, episodes, "EdgePolicy, onnxruntime CPU"))
    backend.close()
    return rows


def _warm_obs() -> dict:
    from simtask import ReachEnv, TaskConfig

    return ReachEnv(TaskConfig()).reset(seed=2**31 - 1)


def markdown(report: dict) -> str:
    rows = report["rows"]
    base = {r["name"].split(" (")[0]: r for r in rows if r["side"] == "lerobot"}
    reactive, open_loop = base.get("LeRobot reactive"), base.get("LeRobot open loop")
    lines = ["# The price of reactivity (perturbed simtask, trained default model)", "",
             (f"{report['episodes']} perturbed episodes per row, same seeds and weights; {report['machine']}; "
              f"torch / onnxruntime threads {report['threads']}; {report['date']}."), "",
             ("| policy | success | ms / tick (mean) | median | p90 | full resamples / ep | jump → success (ticks) "
              "| LeRobot reactive / this (per tick) | this − LeRobot open loop (ms / tick) |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        speed = f"{reactive['mean_ms_per_tick'] / r['mean_ms_per_tick']:.1f}×" if reactive else "–"
        extra = f"{r['mean_ms_per_tick'] - open_loop['mean_ms_per_tick']:+.2f}" if open_loop else "–"
        rec = "–" if r["mean_recovery_ticks"] is None else f"{r['mean_recovery_ticks']:.1f}"
        lines.append(f"| {r['name']} | {r['success_rate']:.2f} | {r['mean_ms_per_tick']:.2f} | {r['median_ms']:.2f} | "
                     f"{r['p90_ms']:.2f} | {r['resamples_per_episode']:.1f} | {rec} | {speed} | {extra} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.bench_reactivity", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="trained pretrained_model folder")
    p.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS, help="its exported artifact folder")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    p.add_argument("--out", type=Path, default=Path("reports/bench"))
    args = p.parse_args(argv)
    for flag, path, what in (("--checkpoint", args.checkpoint, "config.json"),
                             ("--artifacts", args.artifacts, "manifest.json")):
        if not (path / what).is_file():
            print(f"bench_reactivity: {flag} {path} has no {what} (run `make train export` first)", file=sys.stderr)
            return 2
    if args.episodes < 1:
        print("bench_reactivity: --episodes must be >= 1", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    rows = lerobot_rows(args.checkpoint, args.episodes, args.threads) + ours_rows(args.artifacts, args.episodes,
                                                                                   args.threads)
    report = {"episodes": args.episodes, "threads": args.threads, "checkpoint": str(args.checkpoint),
              "artifacts": str(args.artifacts), "machine": f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} logical CPUs", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "rows": rows, "wall_s": time.perf_counter() - t0}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reactivity.json").write_text(json.dumps(report, indent=1))
    (args.out / "reactivity.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {args.out / 'reactivity.md'} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
