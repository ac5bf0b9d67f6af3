"""Latency table: success, recovery and seam jumps of each execution mode under an inference latency of L ticks.

    python -m evaluation.latency --artifacts artifacts/onnx --out reports/latency [--episodes 30] \
        [--latencies 0,1,3,5,10] [--gates always,drift] [--modes sync,async,aligned,aligned+blend,aligned+inpaint]

Every cell (gate × mode × L) runs the same perturbed episode seeds with the same noise stream
(`evaluation.latency_loop`). L = 0 is run once per gate (every mode is the synchronous runtime there).
Writes `<out>/latency.json` and `<out>/latency.md`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from evaluation.cli_args import episode_max_steps, non_negative_int, output_dir, positive_int
from evaluation.latency_loop import MODES, LatencyLoop, summarize

DEFAULT_MODES = ",".join(MODES)
from evaluation.latency_plot import latency_plot
from runtime.manifest import ManifestError
from runtime.policy import EdgePolicy


def _ints(text: str) -> list[int]:
    """--latencies: one or more comma-separated tick counts >= 0."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise ValueError(f"--latencies: expected comma-separated ints >= 0, got {text!r}")
    return values


def _names(text: str, known: tuple[str, ...] | None, flag: str) -> list[str]:
    """Comma-separated names; `;`-separated when the text has one (gate specs such as `any:drift,interval:6`)."""
    names = [v.strip() for v in text.split(";" if ";" in text else ",") if v.strip()]
    bad = [n for n in names if known is not None and n not in known]
    if bad or not names:
        raise ValueError(f"{flag}: unknown {bad} (choose from {known})")
    return names


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "–" if v is None else format(v, spec)


def markdown(cells: list[dict], episodes: int, config: dict) -> str:
    lines = [f"# Latency table ({episodes} perturbed episodes per cell, task {config})", "",
             ("| gate | mode | L | success | recovery ticks | resamples / ep | empty ticks / ep | "
              "seam jump (mean / p95) | within-chunk step (mean / p95) | seam / within |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        s = c["summary"]
        ratio = (s["seam_jump_mean"] / s["within_step_mean"]) if s["seam_jump_mean"] is not None and \
            s["within_step_mean"] else None
        lines.append(
            f"| {c['gate']} | {c['mode']} | {c['latency']} | {s['success_rate']:.2f} | {_fmt(s['recovery_ticks'], '.1f')} | "
            f"{s['resamples_per_episode']:.1f} | {s['empty_ticks_per_episode']:.1f} | "
            f"{_fmt(s['seam_jump_mean'], '.4f')} / {_fmt(s['seam_jump_p95'], '.4f')} | "
            f"{_fmt(s['within_step_mean'], '.4f')} / {_fmt(s['within_step_p95'], '.4f')} | {_fmt(ratio)} |")
    return "\n".join(lines) + "\n"


def targets(cells: list[dict], latency: int = 5, mode: str = "aligned+inpaint") -> list[str]:
    """The issue's acceptance numbers at `latency`, measured from the cells (met / not met, with the values)."""
    cell = {(c["gate"], c["mode"], c["latency"]): c["summary"] for c in cells}
    out = []
    for gate in dict.fromkeys(c["gate"] for c in cells):
        base, best, unaligned = (cell.get((gate, "any (L=0)", 0)), cell.get((gate, mode, latency)),
                                 cell.get((gate, "async", latency)))
        if not (base and best):
            continue
        s0, s1 = base["success_rate"], best["success_rate"]
        out.append(f"- {gate}: {mode} at L={latency} success {s1:.2f} vs L=0 {s0:.2f} "
                   f"({'met' if s1 >= s0 - 0.05 else 'not met'}: within 5 points)")
        if unaligned:
            su = unaligned["success_rate"]
            out.append(f"- {gate}: vs async without alignment {su:.2f} "
                       f"({'met' if s1 >= su + 0.10 else 'not met'}: >= 10 points better)")
        if best["seam_jump_mean"] is not None and best["within_step_mean"]:
            r = best["seam_jump_mean"] / best["within_step_mean"]
            out.append(f"- {gate}: seam jump / within-chunk step {r:.2f} ({'met' if r <= 2 else 'not met'}: <= 2)")
    drift, always = cell.get(("drift", mode, latency)), cell.get(("always", mode, latency))
    if drift and always and always["resamples_per_episode"]:
        frac = drift["resamples_per_episode"] / always["resamples_per_episode"]
        ok = frac <= 0.40 and drift["success_rate"] >= always["success_rate"] - 0.05
        out.append(f"- drift at L={latency}: {frac:.0%} of always's resamples, success {drift['success_rate']:.2f} vs "
                   f"{always['success_rate']:.2f} ({'met' if ok else 'not met'}: <= 40 % within 5 points)")
    return out


def run(args: argparse.Namespace) -> dict:
    from simtask import ReachEnv, TaskConfig, episode_seeds  # numpy-only task package

    config = TaskConfig(max_steps=args.max_steps)
    env = ReachEnv(config)
    seeds = episode_seeds(args.seed, args.episodes, stream="eval")
    latencies, gates, modes = _ints(args.latencies), _names(args.gates, None, "--gates"), _names(args.modes, MODES, "--modes")
    if args.waypoints:  # re-anchoring is for displacement actions; the waypoint robot is absolute
        if args.modes != DEFAULT_MODES and any("reanchor" in m for m in modes):
            raise SystemExit("latency: --waypoints: the aligned+reanchor modes are for displacement actions only")
        modes = [m for m in modes if "reanchor" not in m]
    plan = [(g, m, L) for g in gates for L in latencies for m in (modes[:1] if L == 0 else modes)]
    bar = _bar(len(plan) * len(seeds))
    cells = []
    for gate, mode, latency in plan:
        policy = EdgePolicy(args.artifacts, gate=gate, seed=args.seed, num_steps=args.num_steps,
                            backend_options={"intra_op_threads": args.threads})
        loop = LatencyLoop(policy, mode if latency else "aligned", latency, seam_width=args.seam_width,
                           waypoints=args.waypoints, react_width=args.react_width, margin=args.margin,
                           slew=args.slew)
        eps = []
        for s in seeds:
            eps.append(loop.episode(env, s, perturb=True))
            if bar is not None:
                bar.update(1)
        policy.close()
        cells.append({"gate": gate, "mode": mode if latency else "any (L=0)", "latency": latency,
                      "summary": summarize(eps), "episodes": eps})
    if bar is not None:
        bar.close()
    return {"artifacts": str(args.artifacts), "episodes": args.episodes, "seed": args.seed,
            "task": {"max_steps": args.max_steps, "waypoints": args.waypoints}, "seam_width": args.seam_width,
            "react_width": args.react_width, "margin": args.margin, "slew": args.slew, "cells": cells}


def _bar(total: int):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="ep", file=sys.stderr, dynamic_ncols=True, mininterval=2.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluation.latency", description=__doc__.split("\n")[0])
    p.add_argument("--artifacts", default="artifacts/onnx")
    p.add_argument("--out", type=output_dir, default=Path("reports/latency"), help="report folder")
    p.add_argument("--episodes", type=positive_int, default=30, help="perturbed episodes per cell")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latencies", default="0,1,3,5,10")
    p.add_argument("--gates", default="always,drift",
                   help="comma-separated gate specs; separate with ';' when a spec has commas ('always;any:drift,interval:6')")
    p.add_argument("--modes", default=DEFAULT_MODES)
    p.add_argument("--max-steps", type=episode_max_steps, default=60, help="episode tick limit (the task's deadline)")
    p.add_argument("--num-steps", type=positive_int, default=None, help="Euler steps (default: the manifest's)")
    p.add_argument("--waypoints", action="store_true",
                   help="position-controlled robot: chunks become absolute waypoints (the latency-sensitive variant)")
    p.add_argument("--threads", type=non_negative_int, default=0, help="onnxruntime intra-op threads (0: its default)")
    p.add_argument("--seam-width", type=positive_int, default=3, help="rows after the delay over which blend/inpaint fade out")
    p.add_argument("--react-width", type=non_negative_int, default=1,
                   help="soft seam rows after the delay on a chunk that reacts to a change (0: none)")
    p.add_argument("--slew", type=float, default=2.0,
                   help="mode aligned+reanchor+slew: per-tick action change limit, as a multiple of the plans' mean "
                        "row-to-row step")
    p.add_argument("--margin", type=non_negative_int, default=0,
                   help="refill when the plan has <= L + margin rows left (rows of overlap for the seam)")
    args = p.parse_args(argv)
    if args.react_width > args.seam_width:
        p.error(f"--react-width {args.react_width}: expected at most --seam-width ({args.seam_width})")
    if not (math.isfinite(args.slew) and args.slew > 0):
        print(f"error: --slew must be a finite number > 0, got {args.slew!r}", file=sys.stderr)
        return 2
    try:
        report = run(args)
    except (ManifestError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency.json").write_text(json.dumps(report, indent=1))
    md = markdown(report["cells"], args.episodes, report["task"])
    modes = dict.fromkeys(c["mode"] for c in report["cells"])
    for mode in [m for m in ("aligned+inpaint", "aligned+reanchor", "aligned+reanchor+slew", "aligned+blend") if m in modes]:
        md += f"\n## Targets, `{mode}`\n" + "\n".join(targets(report["cells"], mode=mode)) + "\n"
    (out / "latency.md").write_text(md)
    for gate in dict.fromkeys(c["gate"] for c in report["cells"]):
        latency_plot(report["cells"], gate, out / f"latency_{gate.replace(':', '_')}.png", title=str(report["task"]))
    print(md)
    print(f"wrote {out / 'latency.json'} and {out / 'latency.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
