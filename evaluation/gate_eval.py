"""Closed-loop gate evaluation: which gate buys the most task success per full resample?

    python -m evaluation.gate_eval --artifacts artifacts/onnx --out reports/gate [--episodes 30] [--seed 0] [--quick]

Every gate policy runs the SAME episode seeds of the simulated reach task (paired comparison: same scenes,
same target jumps, and the policy's noise stream / random gate re-seeded from the episode seed), on
perturbed episodes (the target jumps mid-episode) and on a smaller unperturbed set:

- `always` (resample every tick: the reactive upper bound, maximal compute);
- `interval:k` for k in {1, 2, 3, 5, chunk} (fixed replan interval; `chunk` = open-loop chunking);
- `drift` and `consistency` (the CLS gates) over a threshold sweep built from the manifest's gate
  calibration stats (0.5·p50, p50, p90, p95, p99, 1.5/2/3·p99, and the default threshold), each with
  check_every m in {1, 2};
- `random:p` with p matched to the firing rates the CLS gates showed (the matched-budget baseline);
- `state:thr` (raw-state L2 since planning, LeRobot-async-like), thr = {1, 2, 3, 5, 8} × the task's max step.

Per policy: success rate, full resamples / prefix passes / delta passes per episode, ticks from the
perturbation to the first resample at or after it, wall time per tick. Outputs `<out>/gate_eval.json`,
`<out>/gate_eval.md` (table + headline) and plots (`evaluation.plots`, needs matplotlib): the Pareto view
(success vs full resamples per episode) and the gate timeline of one perturbed episode.

Headline: the best calibrated CLS gate whose perturbed success is within 5 points of `always` with at
most 40 % of always's resamples, compared against `interval:k` (and `random:p`) interpolated at the
same resample budget, plus paired per-episode win/loss counts.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from evaluation.cli_args import (
    MAX_SEED,
    episode_max_steps,
    int_in,
    non_negative_int,
    output_dir,
    positive_int,
    read_json_file,
)
from evaluation.gate_headline import BUDGET_FRAC, SUCCESS_TOL, compute_headline
from evaluation.gate_policies import (
    CLS_FAMILIES,
    DEFAULT_FAMILIES,
    FAMILIES,
    PolicySpec,
    base_policies,
    matched_random,
)
from evaluation.gate_report import fmt, timeline_panels, write_report
from evaluation.gate_runner import evaluate_spec, pick_timeline_episode
from runtime.manifest import ManifestError
from runtime.policy import EdgePolicy


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="ep", file=sys.stderr, dynamic_ncols=True, mininterval=1.0)
    except ImportError:
        return None


def _say(bar: Any, msg: str) -> None:
    if bar is not None:
        bar.write(msg)
    else:
        print(msg, flush=True)


def run_gate_eval(artifacts: str | Path, out: str | Path, episodes: int = 30, unperturbed: int | None = None,
                  seed: int = 0, quick: bool = False, backend: str = "onnxruntime", device: str = "cpu",
                  threads: int = 1, refine: bool = False, check_everys: Sequence[int] = (1, 2),
                  families: Iterable[str] = DEFAULT_FAMILIES, timeline_episode: int = -1, plots: bool = True,
                  progress: bool = True, max_random: int = 6, max_steps: int | None = None) -> dict:
    """Run the whole sweep and write gate_eval.json / gate_eval.md / plots under `out`; returns the report."""
    from simtask import ReachEnv, TaskConfig, episode_seeds  # numpy-only task package

    t_start = time.perf_counter()
    out = Path(out)
    if quick:
        episodes = min(episodes, 2)
        unperturbed = 1 if unperturbed is None else min(unperturbed, 1)
    n_unpert = max(1, episodes // 3) if unperturbed is None else unperturbed
    # max_steps: a deadline variant (e.g. 40: a jump at tick 30 leaves 10 ticks) where reaction time decides
    # success instead of only recovery time; TaskConfig validates it against the perturbation window.
    task = TaskConfig() if max_steps is None else TaskConfig(max_steps=max_steps)
    env = ReachEnv(task)
    pert_seeds = episode_seeds(seed, episodes, stream="eval")
    unpert_seeds = episode_seeds(seed + 1, n_unpert, stream="eval") if n_unpert else []

    options: dict[str, Any] = {}
    if backend == "onnxruntime":
        options["intra_op_threads"] = threads
    try:
        first = EdgePolicy(artifacts, backend=backend, gate="always", device=device, backend_options=options, seed=seed)
    except (ManifestError, OSError) as exc:  # the folder is not an artifact folder: say which flag named it
        raise ValueError(f"--artifacts {artifacts}: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)  # only once the artifacts load: a refused run leaves no empty folder
    manifest, shared_backend = first.manifest, first.backend
    if timeline_episode < 0:
        timeline_episode = pick_timeline_episode(env, pert_seeds, chunk=manifest.dims.n_action_steps)
    timeline_episode = min(max(timeline_episode, 0), episodes - 1)
    first.warmup(env.reset(seed=2**31 - 1), runs=3)

    def make_policy(spec: PolicySpec) -> EdgePolicy:
        return EdgePolicy(artifacts, backend=shared_backend, gate=spec.spec, check_every=spec.check_every,
                          refine=refine, seed=seed, verify_hashes=False)

    specs = base_policies(manifest, task.max_step, quick, check_everys, families)
    n_random = 0 if "random" not in set(families) else (1 if quick else max_random)
    eps_per = episodes + n_unpert
    bar = _progress((len(specs) + n_random) * eps_per, progress)
    results: list[dict] = []

    def run_all(batch: Sequence[PolicySpec]) -> None:
        for spec in batch:
            if bar is not None:
                bar.set_description(spec.name[:28])
            r = evaluate_spec(spec, make_policy, env, pert_seeds, unpert_seeds, timeline_episode, bar)
            results.append(r)
            p, u = r["perturbed"], r["unperturbed"]
            _say(bar, f"{spec.name:<28} succ {p['success_rate']:.3f} (U {u.get('success_rate', float('nan')):.3f})  "
                      f"resamples/ep {p['resamples_per_episode']:6.2f}  "
                      f"prefix/ep {p['prefix_passes_per_episode']:6.1f}  "
                      f"pert→rs {fmt(p['perturb_to_resample_ticks'])}  {p['ms_per_tick']:.2f} ms/tick  "
                      f"({r['wall_s']:.0f} s)")

    run_all(specs)
    if n_random:
        rnd = matched_random(results, max_random, quick)
        if bar is not None:
            bar.total = (len(specs) + len(rnd)) * eps_per
            bar.refresh()
        run_all(rnd)
    if bar is not None:
        bar.close()
    shared_backend.close()

    order = {f: i for i, f in enumerate(FAMILIES)}
    results.sort(key=lambda r: (order.get(r["family"], 99), r["check_every"], r["param"] or 0.0))
    raw_gate = manifest.raw.get("gate", {}) if isinstance(manifest.raw.get("gate"), dict) else {}
    calibration = {fam: {k: raw_gate[fam].get(k) for k in ("stats", "changed_stats", "default_threshold", "auroc")
                         if k in raw_gate[fam]}
                   for fam in CLS_FAMILIES if isinstance(raw_gate.get(fam), dict)}
    d = manifest.dims
    report: dict[str, Any] = {
        "config": {"artifacts": str(artifacts), "backend": backend, "device": device, "threads": threads,
                   "refine": refine, "quick": quick, "seed": seed, "n_perturbed": episodes,
                   "n_unperturbed": n_unpert, "perturbed_seeds": pert_seeds, "unperturbed_seeds": unpert_seeds,
                   "timeline_episode": timeline_episode,
                   "chunk_size": d.chunk_size, "n_action_steps": d.n_action_steps, "num_steps": d.num_steps,
                   "task": task.to_dict(), "host": platform.node() or "?", "producer": manifest.raw.get("producer"),
                   "success_tolerance": SUCCESS_TOL, "budget_fraction": BUDGET_FRAC},
        "calibration": calibration,
        "policies": results,
        "headline": compute_headline(results),
        "plots": {},
    }
    report["elapsed_s"] = time.perf_counter() - t_start
    write_report(out, report)  # results first: a plotting problem must not lose a long run
    if plots:
        from evaluation import plots as plotmod

        for key, fn in (
                ("pareto", lambda: plotmod.pareto_plot(results, out / "gate_pareto.png", report["headline"])),
                ("timeline", lambda: plotmod.timeline_plot(timeline_panels(report), out / "gate_timeline.png"))):
            try:
                report["plots"][key] = fn()
            except Exception as exc:  # noqa: BLE001 — plots are a convenience; the numbers are already written
                report["plots"][key] = None
                print(f"warning: {key} plot failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        report["elapsed_s"] = time.perf_counter() - t_start
        write_report(out, report)
    return report


def rerender(json_path: str | Path, plots: bool = True) -> dict:
    """Recompute the headline, markdown and plots from an existing gate_eval.json (no episodes are run).
    A missing, non-JSON or foreign file is a SystemExit naming --rerender (one line, not a traceback)."""
    path = Path(json_path)
    report = read_json_file(path, "--rerender")
    try:
        report["headline"] = compute_headline(report["policies"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SystemExit(f"error: --rerender {path}: not a gate_eval.json report ({type(exc).__name__}: {exc})") from None
    out = path.parent
    if plots:
        from evaluation import plots as plotmod

        report["plots"] = {
            "pareto": plotmod.pareto_plot(report["policies"], out / "gate_pareto.png", report["headline"]),
            "timeline": plotmod.timeline_plot(timeline_panels(report), out / "gate_timeline.png")}
    write_report(out, report)
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluation.gate_eval", description=__doc__.split("\n")[0])
    p.add_argument("--artifacts", default="artifacts/onnx")
    p.add_argument("--out", type=output_dir, default=Path("reports/gate"), help="report folder")
    p.add_argument("--episodes", type=positive_int, default=30, help="perturbed episodes per policy")
    p.add_argument("--unperturbed", type=non_negative_int, default=None,
                   help="unperturbed episodes per policy (default episodes//3)")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=0, help="base seed of the episode streams")
    p.add_argument("--quick", action="store_true", help="CI mode: a few policies, 2 perturbed + 1 unperturbed episode")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=non_negative_int, default=1, help="onnxruntime intra-op threads (0 = library default)")
    p.add_argument("--refine", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--check-every", type=positive_int, nargs="+", default=[1, 2], help="m values for the CLS gates")
    p.add_argument("--families", nargs="+", default=list(DEFAULT_FAMILIES), choices=list(FAMILIES))
    p.add_argument("--max-random", type=non_negative_int, default=6, help="number of matched-rate random gates")
    p.add_argument("--timeline-episode", type=int, default=-1,
                   help="perturbed episode index drawn in the timeline plot (-1: first with a mid-chunk jump)")
    p.add_argument("--max-steps", type=episode_max_steps, default=None,
                   help="episode limit in ticks (default: the task's 60); e.g. 40 makes reaction time decide success")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--rerender", metavar="GATE_EVAL_JSON", default=None,
                   help="only recompute headline/markdown/plots from an existing gate_eval.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rerender:
        rerender(args.rerender, not args.no_plots)
        print((Path(args.rerender).parent / "gate_eval.md").read_text())
        return 0
    try:
        report = run_gate_eval(args.artifacts, args.out, args.episodes, args.unperturbed, args.seed, args.quick,
                               args.backend, args.device, args.threads, args.refine, tuple(args.check_every),
                               args.families, args.timeline_episode, not args.no_plots, not args.no_progress,
                               args.max_random, args.max_steps)
    except (ValueError, RuntimeError, ImportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((Path(args.out) / "gate_eval.md").read_text())
    print(f"wrote {Path(args.out) / 'gate_eval.json'} ({report['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
