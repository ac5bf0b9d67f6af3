"""Gate benchmark: which gate keeps success where reaction time decides it, and spends the fewest resamples on
changes that do not matter?

    python -m evaluation.gate_bench --artifacts artifacts/onnx --out reports/gate_bench [--episodes 40] [--quick]

Episodes (`simtask.bench_env`, seed stream `bench`): relevant changes (`jump`, `multi_jump`, `moving`), irrelevant
ones (`distractor`, `lighting`, `noise`) and a `mixed` suite (one target jump among a distractor jump, a lighting
shift and a noise burst), with deadlines sized from the scripted expert's reaction (a reach-by deadline per goal
change, a final one for success). Every policy runs the same seeds. Gates: `always`, the manifest's
`gate.default` (as `EdgePolicy(gate="default")` builds it; the headline says whether it meets the rule), `interval:k`, `random:p` at the rates the p95 drift and pixel gates fired,
and the threshold gates `state`, `pixel`, `drift`, `consistency`, `jump` (per tick) and both since-plan CLS
gates at once (`any:`), all calibrated by one rule on the same held-out episodes
(`evaluation.bench_calibration`); the change gates also with a plan-age cap (`<family>+cap:<label>/K` =
`any:<family>:<thr>,interval:K`, K in `--caps`); some gates also with delta refinement (`+refine`).
Outputs `<out>/gate_bench.json`, `<out>/gate_bench.md` and plots (`evaluation.bench_plots`).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.bench_calibration import (
    MANIFEST_LABEL,
    SWEEP_LABELS,
    THRESHOLD_FAMILIES,
    missing_labels,
    record_distances,
    summarize_family,
)
from evaluation.bench_report import (
    DEFAULT_FAMILY,
    POOLED,
    compute_bench_headline,
    markdown,
    null_non_finite,
    report_problem,
    write_bench_report,
)
from evaluation.bench_runner import run_episode, summarize
from evaluation.cli_args import MAX_SEED, int_in, non_negative_int, output_dir, positive_int, read_json_file
from runtime.gate import MANIFEST_THRESHOLD_GATES, Gate
from runtime.manifest import ManifestError
from runtime.policy import EdgePolicy
from simtask.events import EPISODE_KINDS

TRACE_KINDS = ("jump", "distractor")  # the timeline plot: one relevant and one irrelevant change
DEFAULT_REFINE = ("interval:chunk", "drift:p95", "pixel:p95", "consistency:p95")
DEFAULT_SWEEP = ("p90", "p95", "p99", "3xp99", "manifest")
BASELINE_LABEL = "p95"  # the default threshold: the random gates' matched rates and the default --refine names key on it
ANY_FAMILY = "drift+consistency"  # the `any:drift,consistency` gate
CAP_FAMILIES = ("drift", "consistency", "jump", "pixel")  # change gates also run with a plan-age cap
CAP_LABELS = ("p95", "manifest")  # the calibrated thresholds that get a capped copy
DEFAULT_CAPS = (6, 8)


@dataclass(frozen=True)
class BenchSpec:
    """One benchmarked configuration: a `runtime.gate.make_gate` spec, with or without delta refinement."""

    family: str
    spec: str
    label: str
    param: float | None = None
    refine: bool = False

    @property
    def name(self) -> str:
        return f"{self.family}:{self.label}" + ("+refine" if self.refine else "") if self.label else \
            self.spec + ("+refine" if self.refine else "")


def _bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="ep", file=sys.stderr, dynamic_ncols=True, mininterval=2.0)
    except ImportError:
        return None


def exact(x: float) -> str:
    """`x` in a spec string to the last bit (repr round-trips): the gate run is the calibrated or shipped one, not
    a 6-digit neighbour (a manifest threshold 1.066712… ran as 1.06671; 1.9999999 as 2, which make_gate refuses)."""
    return repr(float(x))


def random_spec(family: str, rate: float) -> BenchSpec:
    """The random gate matched to `family`'s measured per-check firing rate, at exactly that rate."""
    return BenchSpec("random", f"random:{exact(rate)}", f"{rate:.3g} (={family})", rate)


def capped_specs(calibration: dict, caps: Sequence[int]) -> list[BenchSpec]:
    """Each change family at its p95 (and manifest) threshold combined with `interval:K`: the change part
    reacts to what it sees, the cap bounds how stale a plan gets in a quiet stretch. Its p95 is that of the
    plan ages < K it decides on (`capped_p95`), as the export calibrates the manifest's threshold for its cap."""
    out = []
    for fam in CAP_FAMILIES:
        cal = calibration.get(fam, {})
        manifest = dict(cal.get("sweep", [])).get(MANIFEST_LABEL)
        for label in CAP_LABELS:
            for k in caps:
                thr = cal.get("capped_p95", {}).get(str(k)) if label == BASELINE_LABEL else manifest
                if thr is not None:
                    out.append(BenchSpec(f"{fam}+cap", f"any:{fam}:{exact(thr)},interval:{k}", f"{label}/{k}",
                                         float(k)))
    return out


def policy_specs(calibration: dict, chunk: int, intervals: Sequence[int], sweep: Sequence[str],
                 refine: Sequence[str], caps: Sequence[int] = DEFAULT_CAPS, default: str | None = None) -> list[BenchSpec]:
    """always, the manifest's default gate (`default` = its gate.default, run as EdgePolicy(gate="default")
    builds it), interval:k (every cap K included) and every threshold family's sweep (labels in `sweep`), the
    capped change gates, plus `+refine` copies. A cap K >= chunk never binds (the queue runs out first): left out;
    so is an interval K > chunk (interval:chunk again under another name)."""
    caps = sorted({int(k) for k in caps if k < chunk})
    intervals = [k for k in intervals if k <= chunk]
    out = [BenchSpec("always", "always", "")]
    if default is not None:
        out.append(BenchSpec(DEFAULT_FAMILY, "default", default))
    out += [BenchSpec("interval", f"interval:{k}", "chunk" if k == chunk else str(k), float(k))
            for k in sorted(set(intervals) | set(caps) | {chunk})]
    for fam in THRESHOLD_FAMILIES:
        for label, thr in calibration.get(fam, {}).get("sweep", []):
            if label in sweep:
                out.append(BenchSpec(fam, f"{fam}:{exact(thr)}", label, thr))
    # both CLS gates at once (`any:`): drift reacts to a jump within a tick, consistency to a plan that no
    # longer fits; each part at the same calibration label
    d_sweep, c_sweep = (dict(calibration.get(f, {}).get("sweep", [])) for f in ("drift", "consistency"))
    for label in [lb for lb in sweep if lb in d_sweep and lb in c_sweep]:
        out.append(BenchSpec(ANY_FAMILY, f"any:drift:{exact(d_sweep[label])},consistency:{exact(c_sweep[label])}", label))
    out += capped_specs(calibration, caps)
    by_name = {s.name: s for s in out}
    unknown = [n for n in dict.fromkeys(refine) if n not in by_name]
    if unknown:  # a typo must not silently run nothing
        raise ValueError(f"--refine: no policy named {', '.join(map(repr, unknown))} among the built ones "
                         f"({', '.join(by_name)})")
    out += [BenchSpec(s.family, s.spec, s.label, s.param, True) for n in dict.fromkeys(refine) if (s := by_name[n])]
    return out


def _expected_specs(manifest: Any, intervals: Sequence[int], sweep: Sequence[str], refine: Sequence[str],
                    caps: Sequence[int]) -> list[BenchSpec]:
    """policy_specs on a stand-in calibration with every label calibration will produce (thresholds aside): checks
    --refine names before minutes of calibration."""
    stand_in = {fam: {"sweep": [(lb, 1.0) for lb in SWEEP_LABELS if lb != MANIFEST_LABEL or (
        (cal := manifest.gate_calibration.get(fam)) is not None and cal.default_threshold is not None)],
        "capped_p95": {str(k): 1.0 for k in caps}} for fam in THRESHOLD_FAMILIES}
    return policy_specs(stand_in, manifest.dims.n_action_steps, intervals, sweep, refine, caps, manifest.default_gate)


def run_gate_bench(artifacts: str | Path, out: str | Path, episodes: int = 40, calibration_episodes: int = 8,
                   seed: int = 0, kinds: Sequence[str] = EPISODE_KINDS, slack: int = 5, quick: bool = False,
                   threads: int = 1, intervals: Sequence[int] = (3, 5), sweep: Sequence[str] = DEFAULT_SWEEP,
                   refine: Sequence[str] = DEFAULT_REFINE, plots: bool = True, progress: bool = True,
                   caps: Sequence[int] = DEFAULT_CAPS) -> dict:
    """Calibrate, run every policy over every kind, write the report; returns it."""
    from simtask import episode_seeds
    from simtask.bench_env import BenchEnv

    t_start = time.perf_counter()
    out = Path(out)
    kinds = tuple(dict.fromkeys(kinds))  # a repeated kind would run (and pair) the same episodes twice
    if quick:
        episodes, calibration_episodes, intervals, sweep = min(episodes, 2), min(calibration_episodes, 1), (), ()
        refine = ("pixel:p95",)
    # p95 always runs: without it the matched-rate random gates (and the default --refine names) silently vanish
    sweep = tuple(dict.fromkeys([BASELINE_LABEL, *sweep]))
    env = BenchEnv(slack=slack)
    seeds = episode_seeds(seed, episodes * len(kinds), "bench")
    by_kind = {k: seeds[i * episodes:(i + 1) * episodes] for i, k in enumerate(kinds)}
    cal_seeds = episode_seeds(seed, calibration_episodes * len(kinds), "bench_calibration")
    cal_eps = [(s, kinds[i // calibration_episodes]) for i, s in enumerate(cal_seeds)]

    try:
        first = EdgePolicy(artifacts, gate="always", backend_options={"intra_op_threads": threads}, seed=seed)
    except (ManifestError, OSError) as exc:  # the folder is not an artifact folder: say which flag named it
        raise ValueError(f"--artifacts {artifacts}: {exc}") from None
    manifest, backend = first.manifest, first.backend
    caps = sorted({int(k) for k in caps if k < manifest.dims.n_action_steps})  # K >= chunk never binds: not run
    intervals = sorted({int(k) for k in intervals if k <= manifest.dims.n_action_steps})  # likewise K > chunk
    if quick:
        caps = caps[:1]
    try:
        _expected_specs(manifest, intervals, sweep, refine, caps)  # bad --refine names: refused before any work
    except ValueError:
        backend.close()
        raise
    out.mkdir(parents=True, exist_ok=True)
    first.warmup(env.reset(2**31 - 1, kinds[0]), runs=3)

    def make_policy(spec: str | Gate, with_refine: bool = False) -> EdgePolicy:
        return EdgePolicy(artifacts, backend=backend, gate=spec, refine=with_refine, seed=seed, verify_hashes=False)

    bar = _bar(len(THRESHOLD_FAMILIES) * len(cal_eps), progress)
    if bar is not None:
        bar.set_description("calibration")
    calibration = {}
    for fam in THRESHOLD_FAMILIES:
        cal = manifest.gate_calibration.get(fam)
        calibration[fam] = summarize_family(record_distances(make_policy, env, fam, cal_eps, bar),
                                            cal.default_threshold if cal is not None else None, family=fam,
                                            caps=caps)
    if bar is not None:
        bar.close()
    missing = missing_labels(calibration, [*sweep, *(CAP_LABELS if caps else ())], MANIFEST_THRESHOLD_GATES)
    missing += [f"{fam}+cap:{BASELINE_LABEL}/{k}" for fam in CAP_FAMILIES for k in caps
                if str(k) not in calibration[fam]["capped_p95"]]
    if missing:
        print(f"warning: no calibrated threshold for {', '.join(missing)}: those policies are not run", file=sys.stderr)

    # a --refine name checked up front may name a threshold calibration then dropped (a cosine p99 x 3 >= 2): warned
    built = {s.name for s in policy_specs(calibration, manifest.dims.n_action_steps, intervals, sweep, (), caps,
                                          manifest.default_gate)}
    unbuilt = [n for n in dict.fromkeys(refine) if n not in built]
    if unbuilt:
        print(f"warning: --refine {', '.join(unbuilt)}: not built after calibration, not run", file=sys.stderr)
    specs = policy_specs(calibration, manifest.dims.n_action_steps, intervals, sweep,
                         [n for n in refine if n in built], caps, manifest.default_gate)
    n_ep = episodes * len(kinds)
    bar = _bar((len(specs) + 2) * n_ep, progress)
    results: list[dict] = []

    def run(spec: BenchSpec) -> dict:
        if bar is not None:
            bar.set_description(spec.name[:24])
        policy = make_policy(spec.spec, spec.refine)
        t0 = time.perf_counter()
        eps: dict[str, list[dict]] = {}
        traces: dict[str, dict] = {}
        for kind in kinds:
            eps[kind] = []
            for j, s in enumerate(by_kind[kind]):
                rec = run_episode(policy, env, s, kind, trace=(j == 0 and kind in TRACE_KINDS))
                if "trace" in rec:
                    traces[kind] = {"seed": s, "changes": rec["changes"], "success": rec["success"],
                                    "ticks": rec.pop("trace")}
                eps[kind].append(rec)
                if bar is not None:
                    bar.update(1)
        r = {"name": spec.name, "family": spec.family, "spec": spec.spec, "label": spec.label, "param": spec.param,
             "refine": spec.refine, "gate": policy.gate.spec, "wall_s": time.perf_counter() - t0,
             "per_kind": {k: summarize(v) for k, v in eps.items()},
             "all": summarize([e for v in eps.values() for e in v]), "traces": traces, "episodes": eps}
        results.append(r)
        return r

    for spec in specs:
        run(spec)
    for fam in ("drift", "pixel"):  # random gates at the rates the calibrated p95 gates fired (matched budget)
        ref = next((r for r in results if r["family"] == fam and r["label"] == BASELINE_LABEL and not r["refine"]),
                   None)
        rate = ref["all"]["fire_rate"] if ref else None
        if rate:
            run(random_spec(fam, rate))
    if bar is not None:
        bar.close()
    backend.close()
    report: dict[str, Any] = {
        "config": {"artifacts": str(artifacts), "episodes_per_kind": episodes, "kinds": list(kinds),
                   "calibration_episodes_per_kind": calibration_episodes, "seed": seed, "slack": slack,
                   "caps": list(caps),  # the caps actually run (K < n_action_steps)
                   "sweep": list(sweep),  # the labels run (p95 always)
                   "intervals": intervals,  # the interval:K asked for and run (K <= n_action_steps; chunk and caps too)
                   "settle": env.settle, "quick": quick, "threads": threads, "host": platform.node() or "?",
                   "chunk_size": manifest.dims.chunk_size, "n_action_steps": manifest.dims.n_action_steps,
                   "num_steps": manifest.dims.num_steps, "seeds": by_kind, "task": env.config.to_dict()},
        "calibration": calibration, "policies": results, "headline": compute_bench_headline(results),
        "headline_pooled": compute_bench_headline(results, POOLED), "plots": {}}
    report["elapsed_s"] = time.perf_counter() - t_start
    write_bench_report(out, report)  # numbers first: a plotting problem must not lose a long run
    if plots:
        render_plots(report, out)
        write_bench_report(out, report)
    return report


def render_plots(report: dict, out: Path) -> None:
    from evaluation import bench_plots

    for key, fn in (("success_vs_resamples", bench_plots.success_vs_resamples),
                    ("timeline", bench_plots.timeline)):
        try:
            report["plots"][key] = fn(report, out / f"gate_bench_{key}.png")
        except Exception as exc:  # noqa: BLE001 — plots are a convenience; the numbers are already written
            report["plots"][key] = None
            print(f"warning: {key} plot failed: {type(exc).__name__}: {exc}", file=sys.stderr)


def rerender(path: Path, plots: bool = True) -> int:
    """Headline, markdown (and plots) again from `path`; a file that is not a gate_bench.json report is refused
    in one line naming --rerender (exit status 2) before anything is written."""
    def refuse(why: str) -> SystemExit:
        print(f"error: --rerender {path}: {why}", file=sys.stderr)
        return SystemExit(2)

    try:
        report = read_json_file(path, "--rerender")
    except SystemExit as exc:  # its own one-line message; the exit status of the other CLI errors
        print(exc.code, file=sys.stderr)
        raise SystemExit(2) from None
    problem = report_problem(report)
    if problem:
        raise refuse(f"not a gate_bench.json report ({problem})")
    try:
        report = null_non_finite(report)  # reports written before the strict writer may hold NaN
        report.setdefault("plots", {})
        report["headline"] = compute_bench_headline(report["policies"])
        report["headline_pooled"] = compute_bench_headline(report["policies"], POOLED)
        markdown(report)  # every key the tables read, before anything is written
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise refuse(f"not a gate_bench.json report ({type(exc).__name__}: {exc})") from None
    if plots:
        render_plots(report, path.parent)
    write_bench_report(path.parent, report)
    print((path.parent / "gate_bench.md").read_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluation.gate_bench", description=__doc__.split("\n")[0])
    p.add_argument("--artifacts", default="artifacts/onnx")
    p.add_argument("--out", type=output_dir, default=Path("reports/gate_bench"), help="report folder")
    p.add_argument("--episodes", type=positive_int, default=40, help="episodes per kind and policy")
    p.add_argument("--calibration-episodes", type=positive_int, default=8, help="held-out episodes per kind for calibration")
    p.add_argument("--kinds", nargs="+", default=list(EPISODE_KINDS), choices=list(EPISODE_KINDS),
                   help="episode kinds (a repeated one runs once)")
    p.add_argument("--slack", type=non_negative_int, default=5, help="ticks added to the scripted expert's time for the deadline")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=0, help="base seed of the episode streams")
    p.add_argument("--threads", type=non_negative_int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--intervals", type=positive_int, nargs="*", default=[3, 5],
                   help="interval:k gates (the chunk and every --caps K always added; a k past the chunk is "
                        "interval:chunk again: not run)")
    p.add_argument("--caps", type=positive_int, nargs="*", default=list(DEFAULT_CAPS),
                   help="plan-age caps K: drift/consistency/jump/pixel at p95 (and manifest) also run as "
                        "any:<gate>,interval:K")
    p.add_argument("--sweep", nargs="+", default=list(DEFAULT_SWEEP), choices=list(SWEEP_LABELS),
                   help="calibrated thresholds to run per family (p95, the default, always runs: the random "
                        "baselines and the default --refine names key on it)")
    p.add_argument("--refine", nargs="*", default=list(DEFAULT_REFINE),
                   help="names of built policies also run with refinement (e.g. drift:p95, interval:chunk)")
    p.add_argument("--quick", action="store_true", help="CI mode: 2 episodes per kind, a few policies")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--rerender", metavar="GATE_BENCH_JSON", default=None,
                   help="only recompute headline/markdown/plots from an existing gate_bench.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rerender:
        return rerender(Path(args.rerender), plots=not args.no_plots)
    args.caps = sorted(set(args.caps))  # a repeated K would run (and name) the same policy twice
    args.kinds = list(dict.fromkeys(args.kinds))  # likewise a repeated kind (order kept)
    try:
        report = run_gate_bench(args.artifacts, args.out, args.episodes, args.calibration_episodes, args.seed,
                                args.kinds, args.slack, args.quick, args.threads, args.intervals, args.sweep,
                                args.refine, not args.no_plots, not args.no_progress, args.caps)
    except (ValueError, RuntimeError, ImportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((Path(args.out) / "gate_bench.md").read_text())
    print(f"wrote {Path(args.out) / 'gate_bench.json'} ({report['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
