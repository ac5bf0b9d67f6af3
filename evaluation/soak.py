"""Soak test: simtask episodes back to back through one EdgePolicy for N ticks.

    python -m evaluation.soak --artifacts artifacts/onnx --ticks 100000 [--gate drift] [--max-minutes 20]

Records resident memory (VmRSS from /proc/self/status) at the start, every `--rss-every` ticks and at the
end, exceptions raised by `step()`, chain faults/fallbacks reported by the policy, and every emitted action
that is non-finite, has the wrong shape, or lies outside the manifest's `action_bounds` (these must be 0), the
ticks on which it sent nothing (`held`: None, no safe target yet; the agent stays), plus ticks/s and
tick-time percentiles. Writes `reports/soak.json` and prints a summary; exit status 1 when any error or bad
action occurred. Episodes alternate perturbed / unperturbed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.cli_args import non_negative_int, output_file, positive_float, positive_int
from runtime.policy import EdgePolicy


def _proc_status_kb(field: str) -> int | None:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM, ...); None where /proc is unavailable."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_kb() -> int | None:
    return _proc_status_kb("VmRSS")


def soak(artifacts: str | Path, ticks: int = 100_000, gate: str = "default", check_every: int = 1,
         refine: bool = False, seed: int = 0, backend: str = "onnxruntime", device: str = "cpu", threads: int = 1,
         rss_every: int = 10_000, max_seconds: float | None = None, progress: bool = True,
         max_error_examples: int = 10) -> dict[str, Any]:
    """Run the soak and return its summary dict (see the module docstring)."""
    from simtask import ReachEnv, TaskConfig  # numpy-only task package

    if ticks < 1:
        raise ValueError(f"ticks must be >= 1, got {ticks}")
    if max_seconds is not None and not max_seconds > 0:  # 0 or less: nothing would run, yet a summary would print
        raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
    rss_every = max(1, int(rss_every))
    rss_import = rss_kb()
    options: dict[str, Any] = {"intra_op_threads": threads} if backend == "onnxruntime" else {}
    policy = EdgePolicy(artifacts, backend=backend, gate=gate, check_every=check_every, refine=refine, seed=seed,
                        device=device, backend_options=options)
    m = policy.manifest
    low = m.action_bounds.low.astype(np.float32)
    high = m.action_bounds.high.astype(np.float32)
    action_dim = m.dims.action_dim
    env = ReachEnv(TaskConfig())
    ep_rng = np.random.default_rng([seed, 7])
    tick_ms = np.full(ticks, np.nan, dtype=np.float64)  # touched up front: not counted as growth later
    rss_loaded = rss_kb()

    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=ticks, unit="tick", file=sys.stderr, dynamic_ncols=True, mininterval=2.0)
        except ImportError:
            bar = None

    errors: list[str] = []
    n_errors = 0
    bad = {"non_finite": 0, "out_of_bounds": 0, "bad_shape": 0}
    bad_examples: list[dict] = []
    held = 0  # ticks the policy sent nothing (a position robot with no safe target yet): not a bad action
    episodes = finished = successes = 0
    rss_samples: list[dict] = []
    t0 = time.perf_counter()
    rss_samples.append({"tick": 0, "rss_kb": rss_kb(), "elapsed_s": 0.0})
    need_reset = True
    obs: dict | None = None
    t = 0
    truncated = False
    last_report = 0
    while t < ticks:
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            truncated = True
            break
        if need_reset:
            perturb = episodes % 2 == 1
            obs = env.reset(seed=int(ep_rng.integers(2**62)), perturb=perturb)
            policy.reset()
            episodes += 1
            need_reset = False
        ts = time.perf_counter()
        try:
            action = policy.step(obs)
        except Exception as exc:  # noqa: BLE001 — a soak counts every failure instead of stopping
            n_errors += 1
            if len(errors) < max_error_examples:
                errors.append(f"tick {t}: step: {type(exc).__name__}: {exc}")
            tick_ms[t] = (time.perf_counter() - ts) * 1e3
            t += 1
            need_reset = True
            continue
        tick_ms[t] = (time.perf_counter() - ts) * 1e3
        a = None if action is None else np.asarray(action)  # None: nothing sent (no safe target), the agent stays
        held += a is None
        why = None
        if a is None:
            pass
        elif a.shape != (action_dim,):
            why = "bad_shape"
        elif not np.all(np.isfinite(a)):
            why = "non_finite"
        elif np.any(a < low) or np.any(a > high):
            why = "out_of_bounds"
        if why is not None:
            bad[why] += 1
            if len(bad_examples) < max_error_examples:
                bad_examples.append({"tick": t, "why": why, "action": np.asarray(a, dtype=np.float64).ravel().tolist()})
        try:
            obs, done, _ = env.step(a)
        except Exception as exc:  # noqa: BLE001
            n_errors += 1
            if len(errors) < max_error_examples:
                errors.append(f"tick {t}: env.step: {type(exc).__name__}: {exc}")
            done = True
        t += 1
        if done:
            finished += 1
            successes += bool(env.success)
            need_reset = True
        if t % rss_every == 0:
            rss_samples.append({"tick": t, "rss_kb": rss_kb(), "elapsed_s": time.perf_counter() - t0})
        if bar is not None and t - last_report >= 500:
            bar.update(t - last_report)
            last_report = t
    elapsed = time.perf_counter() - t0
    if bar is not None:
        bar.update(t - last_report)
        bar.close()
    if not rss_samples or rss_samples[-1]["tick"] != t:
        rss_samples.append({"tick": t, "rss_kb": rss_kb(), "elapsed_s": elapsed})
    policy.close()

    ms = tick_ms[:t]
    ms = ms[np.isfinite(ms)]
    c = policy.counters
    rss_vals = [(s["tick"], s["rss_kb"]) for s in rss_samples if s["rss_kb"] is not None]
    slope = None
    steady = [(x, y) for x, y in rss_vals if x >= min(rss_every, t)]  # skip the start-up sample
    if len(steady) >= 3:
        xs, ys = np.array(steady, dtype=np.float64).T
        slope = float(np.polyfit(xs, ys, 1)[0] * 10_000)  # kB per 10k ticks
    rss_start = rss_samples[0]["rss_kb"]
    rss_end = rss_samples[-1]["rss_kb"]
    return {
        "artifacts": str(artifacts), "producer": m.raw.get("producer"), "backend": backend, "device": device,
        "threads": threads, "gate": policy.gate.spec, "check_every": check_every, "refine": refine, "seed": seed,
        "host": platform.node() or "?",
        "ticks_requested": ticks, "ticks": t, "truncated": truncated, "max_seconds": max_seconds,
        "episodes": episodes, "episodes_finished": finished, "successes": successes,
        "success_rate": successes / finished if finished else None,
        "elapsed_s": elapsed, "ticks_per_s": t / elapsed if elapsed > 0 else None,
        "tick_ms": {"mean": float(ms.mean()) if ms.size else None,
                    "p50": float(np.percentile(ms, 50)) if ms.size else None,
                    "p99": float(np.percentile(ms, 99)) if ms.size else None,
                    "max": float(ms.max()) if ms.size else None},
        "errors": n_errors, "error_examples": errors,
        "bad_actions": sum(bad.values()), "bad_action_kinds": bad, "held": held, "bad_action_examples": bad_examples,
        "counters": c.as_dict(),
        "rss_kb": {"after_imports": rss_import, "after_load": rss_loaded, "start": rss_start, "end": rss_end,
                   "growth": (rss_end - rss_start) if rss_start is not None and rss_end is not None else None,
                   "peak_hwm": _proc_status_kb("VmHWM"), "slope_per_10k_ticks": slope},
        "rss_samples": rss_samples,
    }


def format_summary(s: dict) -> str:
    r = s["rss_kb"]
    slope = "?" if r["slope_per_10k_ticks"] is None else f"{r['slope_per_10k_ticks']:.1f} kB/10k ticks"

    def mb(v: int | None) -> str:
        return "?" if v is None else f"{v / 1024:.1f} MB"

    lines = [
        (f"soak {s['artifacts']}  backend {s['backend']}/{s['device']}  gate {s['gate']} (m={s['check_every']})  "
        f"refine {s['refine']}"),
        (f"ticks {s['ticks']}/{s['ticks_requested']}{'  (TRUNCATED by --max-minutes)' if s['truncated'] else ''}  "
        f"episodes {s['episodes']}  successes {s['successes']}  elapsed {s['elapsed_s']:.1f} s  "
        f"{s['ticks_per_s']:.1f} ticks/s"),
        "tick ms: " + "  ".join(f"{k} {'?' if s['tick_ms'][k] is None else format(s['tick_ms'][k], '.2f')}"
                                for k in ("mean", "p50", "p99", "max")),  # None: no tick ran
        (f"errors {s['errors']}  bad actions {s['bad_actions']} {s['bad_action_kinds']}  faults {s['counters']['faults']}  "
        f"fallbacks {s['counters']['fallbacks']}  held {s.get('held', 0)}  "
        f"clipped {s['counters']['clipped']}"),
        (f"resamples {s['counters']['resamples']}  prefix passes {s['counters']['prefix_passes']}  "
        f"delta passes {s['counters']['delta_passes']}"),
        (f"RSS start {mb(r['start'])}  end {mb(r['end'])}  growth {mb(r['growth'])}  peak {mb(r['peak_hwm'])}  "
        f"slope {slope}"),
        "RSS samples: " + ", ".join(f"{x['tick']}:{mb(x['rss_kb'])}" for x in s["rss_samples"]),
    ]
    for e in s["error_examples"]:
        lines.append(f"  error: {e}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluation.soak", description=__doc__.split("\n")[0])
    p.add_argument("--artifacts", default="artifacts/onnx")
    p.add_argument("--ticks", type=positive_int, default=100_000)
    p.add_argument("--gate", default="default", help="gate spec; default = the manifest's gate.default")
    p.add_argument("--check-every", type=positive_int, default=1)
    p.add_argument("--refine", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=non_negative_int, default=1,
                   help="onnxruntime intra-op threads (0 = library default; 1 is fastest on a shared CPU)")
    p.add_argument("--rss-every", type=positive_int, default=10_000, help="sample VmRSS every this many ticks")
    p.add_argument("--max-minutes", type=positive_float, default=None, help="stop early after this long (reported as truncated)")
    p.add_argument("--out", type=output_file, default=Path("reports/soak.json"), help="JSON summary to write")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        s = soak(args.artifacts, args.ticks, args.gate, args.check_every, args.refine, args.seed, args.backend,
                 args.device, args.threads, args.rss_every,
                 None if args.max_minutes is None else 60.0 * args.max_minutes, not args.no_progress)
    except (ValueError, RuntimeError, ImportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(s, indent=1))
    print(format_summary(s))
    print(f"wrote {out}")
    return 0 if s["errors"] == 0 and s["bad_actions"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
