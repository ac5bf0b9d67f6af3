"""fp16 / bf16 artifact folder for strongly typed TensorRT builds (`make mixed-precision`, used by `make engine`).

    python -m export.precision.mixed_precision --src artifacts/onnx --dst artifacts/onnx-fp16 [--precision fp16|bf16]
        [--data-max 512] [--keep-fp32 REGEX ...] [--samples 4] [--trials 3] [--seed 0] [--fallback-rounds 6]
        [--emulated] [--force]

One job: read an intact fp32 export, measure every activation's range on chained random observations
(`export.precision.tensor_ranges`), decide per node what may run in the low type and rewrite the graphs with explicit
Casts (`export.precision.precision_lowering`), then check the result against the fp32 folder on fresh inputs before
writing anything: every graph in isolation (same K/V into both), the whole chunk, and the obs-CLS embedding
the gate reads — with the same cosine gates the TensorRT engines must later meet (`export.trt.engine_accuracy`),
plus the gate-embedding bound the int8 folder meets too (`export.accuracy_gates.embedding_row`): obs-CLS and
the plan encoder's act-CLS may each move by at most a tenth of the smallest calibrated threshold of the gates
reading them, so a precision change never flips a gate decision the fp32 thresholds were calibrated for. The check runs the plan emulated in fp32 with every low tensor rounded through
fp16/bf16, as TensorRT stores it (onnxruntime's CPU provider computes fp16 nodes in fp32, and has no bf16
kernels). On a miss, the module section whose fp32 island helps most is kept fp32 and the folder lowered
and checked again (`--fallback-rounds`), the choice confirmed on held-out observations.

Graph inputs and outputs stay float32, so the manifest's I/O contract, the runtime and `runtime info` are
unchanged; the manifest gains a `mixed_precision` record (rule counts, validation table, source SHA-256).
The folder is written under a temporary name and renamed into place only when it passed. The idea of
calibrated per-node typing follows NVIDIA ModelOpt's AutoCast; no code of it is used.

Exit codes: 0 written, 1 the lowered graphs still miss an accuracy gate after the fallback (nothing written;
the table says where), 2 bad input (one line naming the option).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from export.accuracy_gates import (
    CHUNK,
    AccuracyGateError,
    Comparison,
    Draw,
    Runner,
    compare,
    embedding_row,
    euler_chunk,
    ort_runner,
    report,
    validation_draws,
    vocab_size,
    worst_rows,
)
from export.derived_artifacts import (
    DerivationInputError,
    check_destination,
    check_loads,
    check_patterns,
    check_source,
    copy_unchanged,
    finish_manifest,
    source_unchanged,
)
from export.precision.precision_lowering import (
    DEFAULT_DATA_MAX,
    LOW_TYPES,
    UNSCOPED,
    NodeDecision,
    lower_graph,
    plan_nodes,
    sections_with,
)
from export.precision.tensor_ranges import KV_NAMES, calibrate, float_tensor_types
from runtime.atomic_folder import AtomicFolderError, atomic_folder
from runtime.fingerprint import sha256_file
from runtime.manifest import GRAPH_NAMES, Manifest, ManifestError

PROG = "mixed precision"
HELD_OUT_SEED = 1001  # offset of the confirmation draws' seed
DEFAULT_FALLBACK_ROUNDS = 6  # module groups kept fp32 automatically before a missed gate is final


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed (or duplicate-named) node a unique name: decisions are keyed by node name."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


KV = dict[str, np.ndarray]


def _prefix_rows(want_run: Runner, got_run: Runner, draws: list[Draw], manifest: dict[str, Any],
                 precision: str) -> tuple[list[Comparison], list[KV], list[KV]]:
    """Prefix outputs and the gate's obs-CLS embedding; also each side's K/V for the experts."""
    rows: list[Comparison] = []
    kv_want, kv_got = [], []
    for d in draws:
        want, got = want_run(d.feeds), got_run(d.feeds)
        for name in ("obs_cls", *KV_NAMES):
            rows.append(compare("prefix", name, got[name], want[name], precision))
        emb = embedding_row(manifest, "obs_emb", got["obs_cls"], want["obs_cls"])
        rows += [emb] if emb else []
        kv_want.append({n: want[n] for n in KV_NAMES})
        kv_got.append({n: got[n] for n in KV_NAMES})
    return rows, kv_want, kv_got


def _expert_rows(graph: str, want_run: Runner, got_run: Runner, draws: list[Draw], kv_want: list[KV],
                 kv_got: list[KV], manifest: dict[str, Any], precision: str) -> list[Comparison]:
    """An expert in isolation (both sides read the reference K/V); for the main expert also the whole chunk
    (each side its own K/V and Euler loop, same noise)."""
    dims = manifest["dims"]
    action_dim = int(dims["action_dim"])
    rows: list[Comparison] = []
    for d, kw, kg in zip(draws, kv_want, kv_got):
        if graph == "main_expert":
            feeds = {"x_t": d.x, "t": d.t, **kw}
            rows.append(compare(graph, "v_t", got_run(feeds)["v_t"], want_run(feeds)["v_t"], precision))
            a = euler_chunk(int(dims["num_steps"]), kg, d.noise, got_run)
            b = euler_chunk(int(dims["num_steps"]), kw, d.noise, want_run)
            rows.append(compare(CHUNK, "actions", a[..., :action_dim], b[..., :action_dim], precision))
        elif graph == "plan_encoder":  # no K/V: a remainder of the plan, as the runtime feeds it (rows past it
            # are non-zero here: padding the lowering made visible must change the output)
            feeds = {"plan": d.plan, "plan_valid": d.plan_valid}
            got, want = got_run(feeds)["act_cls"], want_run(feeds)["act_cls"]
            rows.append(compare(graph, "act_cls", got, want, precision))
            emb = embedding_row(manifest, "act_emb", got, want)  # the consistency gate's other input
            rows += [emb] if emb else []
        else:
            feeds = {"actions": d.plan, **kw}
            want, got = want_run(feeds), got_run(feeds)
            for name in ("delta", "act_cls"):
                rows.append(compare(graph, name, got[name], want[name], precision))
    return rows


def validate(ref: dict[str, Path], low: dict[str, Path], manifest: dict[str, Any], precision: str,
             trials: int, seed: int, vocab: int) -> list[Comparison]:
    """Lowered vs fp32 graphs (file per graph) on fresh random observations: each graph in isolation, the
    whole chunk, and the gate's embedding. One graph pair is loaded at a time."""
    draws = validation_draws(manifest, trials, seed, vocab)
    rows, kv_want, kv_got = _prefix_rows(ort_runner(ref["prefix"]), ort_runner(low["prefix"]), draws, manifest, precision)
    for graph in ("main_expert", "delta_expert", "plan_encoder"):
        rows += _expert_rows(graph, ort_runner(ref[graph]), ort_runner(low[graph]), draws, kv_want, kv_got, manifest,
                             precision)
    return rows


def _margin(rows: list[Comparison]) -> float:
    """The worst row's distance above its gate (negative: a miss)."""
    return min(r.cosine - r.gate for r in rows)


def _lower_one(src_file: Path, ranges: dict[str, float], precision: str, data_max: float, keep: Sequence[str],
               emulate: bool, keep_sections: frozenset[str] = frozenset()) -> tuple[onnx.ModelProto, list[NodeDecision],
                                                                                     dict[str, int]]:
    model = onnx.load(str(src_file))  # with its external data
    name_nodes(model)
    types = float_tensor_types(model)
    decisions = plan_nodes(model, types, ranges, precision, data_max, keep, keep_sections)
    counts = lower_graph(model, decisions, types, precision, emulate=emulate)
    return model, decisions, counts


def _save(model: onnx.ModelProto, path: Path, external: bool) -> None:
    """Write a graph (weights to `<file>.data` when external). onnx *appends* to an existing data file, so a
    fallback round's rewrite would keep every earlier round's weights in it: remove it first."""
    (path.parent / (path.name + ".data")).unlink(missing_ok=True)
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


def _check_options(precision: str, data_max: float, samples: int, trials: int, keep: Sequence[str]) -> None:
    if precision not in LOW_TYPES:
        raise DerivationInputError(f"--precision {precision!r}: choose one of {', '.join(LOW_TYPES)}")
    if not (np.isfinite(data_max) and data_max > 0):
        raise DerivationInputError(f"--data-max {data_max}: expected a positive number (default {DEFAULT_DATA_MAX:g})")
    if samples < 1:
        raise DerivationInputError(f"--samples {samples}: expected at least 1 calibration observation")
    if trials < 1:
        raise DerivationInputError(f"--trials {trials}: expected at least 1 validation observation")
    check_patterns("--keep-fp32", keep)


def _lower_folder(src: Path, manifest: Manifest, raw: dict[str, Any], tmp: Path, work: Path,
                  ranges: dict[str, dict[str, float]], precision: str, data_max: float, keep: Sequence[str],
                  kept: dict[str, frozenset[str]], emulated: bool, progress: bool,
                  graphs: Sequence[str]) -> tuple[dict[str, Any], dict[str, Path], dict[str, set[str]]]:
    """Lower `graphs` into `tmp` (their emulations into `work`: what validation runs), updating `raw`'s graph
    entries; returns, per graph, its record, the file to check, and its sections still low."""
    per_graph: dict[str, Any] = {}
    checked_files: dict[str, Path] = {}
    low_sections: dict[str, set[str]] = {}
    for g in graphs:
        spec = manifest.graphs[g]
        if progress:
            print(f"[mixed precision] lowering {g} to {precision} ...", flush=True)
        external = spec.data_file is not None
        model, decisions, counts = _lower_one(src / spec.file, ranges[g], precision, data_max, keep, emulated, kept[g])
        _save(model, tmp / spec.file, external)
        raw["graphs"][g]["data_file"] = f"{spec.file}.data" if external else None
        raw["graphs"][g]["nodes"] = len(model.graph.node)
        del model
        checked_files[g] = tmp / spec.file
        if not emulated:  # checked as emulated: onnxruntime CPU runs fp16 nodes in fp32, has no bf16 kernels
            model, _, _ = _lower_one(src / spec.file, ranges[g], precision, data_max, keep, True, kept[g])
            _save(model, work / spec.file, external)
            del model
            checked_files[g] = work / spec.file
        source = onnx.load(str(src / spec.file), load_external_data=False)
        name_nodes(source)
        low_sections[g] = sections_with(source, (d.name for d in decisions if d.precision == "low"))
        fp32_rules = Counter(d.rule for d in decisions if d.precision == "fp32")
        per_graph[g] = {**counts, "fp32_by_rule": dict(sorted(fp32_rules.items())),
                        "fp32_ops": dict(Counter(d.op_type for d in decisions if d.precision == "fp32").most_common()),
                        "max_activation": round(max(ranges[g].values(), default=0.0), 3)}
    return per_graph, checked_files, low_sections


_GRAPH_OF_ROW = {"prefix": "prefix", "main_expert": "main_expert", "delta_expert": "delta_expert",
                 "plan_encoder": "plan_encoder", CHUNK: "main_expert"}


def lower_artifacts(src: Path, dst: Path, *, precision: str = "fp16", data_max: float = DEFAULT_DATA_MAX,
                    keep: Sequence[str] = (), samples: int = 4, trials: int = 3, seed: int = 0,
                    fallback_rounds: int = DEFAULT_FALLBACK_ROUNDS, emulated: bool = False,
                    progress: bool = True) -> dict[str, Any]:
    """Lower the fp32 artifact folder `src` into `dst` (written atomically, only if it passes); returns the manifest.

    When a gate is missed, up to `fallback_rounds` times the module section of each failing graph whose fp32
    island helps most (`_fallback_section`) is kept fp32, and everything is lowered and checked again.
    `emulated=True` writes the fp32 emulation instead of the low graphs: a folder for closed-loop checks on
    the CPU of what fp16/bf16 storage does to the task (the engine plan refuses it)."""
    started = time.time()
    src, dst = Path(src), Path(dst)
    keep = tuple(keep)
    _check_options(precision, data_max, samples, trials, keep)
    if fallback_rounds < 0:
        raise DerivationInputError(f"--fallback-rounds {fallback_rounds}: expected 0 (off) or more")
    manifest = check_source(src)
    check_destination(src, dst)
    with atomic_folder(dst) as tmp:
        work = tmp / ".work"
        work.mkdir()
        raw = json.loads(json.dumps(manifest.raw))
        ranges = calibrate(src, raw, samples, seed, progress=progress)
        vocab = vocab_size(src, raw)
        ref = {g: src / manifest.graphs[g].file for g in GRAPH_NAMES}
        auto: list[dict[str, Any]] = []
        per_graph: dict[str, Any] = {}
        checked_files: dict[str, Path] = {}
        low_sections: dict[str, set[str]] = {}
        lowered_with: dict[str, frozenset[str]] = {}  # the fp32 sections each graph was last lowered with
        for attempt in range(fallback_rounds + 1):
            kept = {g: frozenset(a["section"] for a in auto if a["graph"] == g) for g in GRAPH_NAMES}
            stale = [g for g in GRAPH_NAMES if lowered_with.get(g) != kept[g]]  # only what a fallback changed
            records, files, sections = _lower_folder(src, manifest, raw, tmp, work, ranges, precision, data_max, keep,
                                                     kept, emulated, progress, stale)
            per_graph.update(records)
            checked_files.update(files)
            low_sections.update(sections)
            lowered_with.update({g: kept[g] for g in stale})
            if progress:
                print(f"[mixed precision] checking against fp32 on {trials} fresh observation(s) ...", flush=True)
            rows = validate(ref, checked_files, raw, precision, trials, seed + 1, vocab)
            table = report(rows)
            failed = [r for r in rows if not r.passed]
            if not failed and auto:  # sections were chosen on these draws: confirm on held-out ones
                held_out = validate(ref, checked_files, raw, precision, trials, seed + HELD_OUT_SEED, vocab)
                table += "\nheld-out observations (the fp32 sections were chosen on the ones above):\n" + report(held_out)
                if any(not r.passed for r in held_out):
                    raise AccuracyGateError(f"the fallback sections pass the validation observations but not held-out "
                                            f"ones; nothing written\n{table}")
                rows += held_out
            if not failed:
                break
            failing = sorted({_GRAPH_OF_ROW[r.graph] for r in failed}, key=GRAPH_NAMES.index)
            if attempt == fallback_rounds or not any(low_sections[g] for g in failing):
                raise AccuracyGateError(f"{len(failed)} comparison(s) under the gate after {attempt} fallback "
                                        f"round(s) ({len(auto)} section(s) kept fp32); nothing written\n{table}")
            for g in failing:
                if progress:
                    print(f"[mixed precision] {g} misses a gate: trying its {len(low_sections[g])} section(s) "
                          "in fp32 ...", flush=True)
                best = _fallback_section(g, src, raw, ranges[g], precision, data_max, keep, kept[g], low_sections[g],
                                         trials, seed + 1, vocab, work)
                if best:
                    auto.append({"graph": g, "section": best[0], "margin": float(f"{best[1]:.3g}"),
                                 "round": attempt + 1})
                    if progress:
                        print(f"[mixed precision] keeping {best[0] or UNSCOPED} fp32 (worst margin then {best[1]:+.2e}); "
                              "lowering again", flush=True)
        for f in work.iterdir():
            f.unlink()
        work.rmdir()
        copy_unchanged(src, tmp, manifest)
        import onnxruntime

        raw.setdefault("versions", {})["onnxruntime_validation"] = onnxruntime.__version__
        record = {
            "precision": precision, "emulated": emulated,
            "mode": f"{precision} emulated in fp32 (CPU checks only)" if emulated else f"{precision} mixed (strongly typed)",
            "io": "float32 (unchanged contract)", "data_max": data_max, "keep_fp32": list(keep),
            "fallback_rounds": fallback_rounds, "auto_kept_fp32": auto,
            "calibration": {"samples": samples, "seed": seed, "inputs": "chained random observations"},
            "validation": {"trials": trials, "seed": seed + 1, "by": f"onnxruntime CPU, {precision} storage emulated",
                           "worst": worst_rows(rows), "table": table.splitlines()},
            "source": str(src), "source_manifest_sha256": source_unchanged(src, manifest),
            "seconds": round(time.time() - started, 2), "graphs": per_graph,
        }
        new_manifest = finish_manifest(tmp, raw, "smolvla-cls-edge export.precision.mixed_precision", "mixed_precision", record)
        if precision == "fp16" or emulated:  # the graphs must load with the manifest's I/O (no bf16 CPU kernels)
            check_loads(tmp, new_manifest)
    return raw


def best_section(candidates: Iterable[str], margin_with: Callable[[str], float]) -> tuple[str, float] | None:
    """The candidate whose fp32 island gives the largest worst-row margin (cosine − gate), and that margin."""
    scored = [(margin_with(section), section) for section in sorted(candidates)]
    if not scored:
        return None
    margin, section = max(scored)
    return section, margin


def _fallback_section(graph: str, src: Path, manifest: dict[str, Any], ranges: dict[str, float], precision: str,
                      data_max: float, keep: Sequence[str], kept: frozenset[str], candidates: set[str], trials: int,
                      seed: int, vocab: int, work: Path) -> tuple[str, float] | None:
    """The section of `graph` whose fp32 island gives the best worst-row margin on the validation's observations
    (the ones that missed: misses depend on the observation). Held-out draws confirm the choice afterwards.

    Sections (`precision_lowering.node_section`) are the vision embeddings, the vision encoder (all its
    layers), the connector, the text model, the expert, each head, and the exporter's module-less nodes
    (attention core, RoPE). Each one still low is tried fp32, alone, and scored by this graph's own gate rows.
    Errors in these networks build up over many layers, so per-layer attribution points at the wrong place
    (a text layer, when the drift comes from the whole vision tower); trying sections measures the effect on
    exactly the rows that failed."""
    spec = manifest["graphs"][graph]
    draws = validation_draws(manifest, trials, seed, vocab)
    want_run = ort_runner(src / spec["file"])
    kv_want: list[KV] = []
    if graph != "prefix":
        prefix = ort_runner(src / manifest["graphs"]["prefix"]["file"])
        kv_want = [{n: out[n] for n in KV_NAMES} for out in (prefix(d.feeds) for d in draws)]
    external = bool(spec.get("data_file"))

    def margin_with(section: str) -> float:
        model = _lower_one(src / spec["file"], ranges, precision, data_max, keep, True, kept | {section})[0]
        path = work / f"candidate-{spec['file']}"
        _save(model, path, external)
        del model
        got_run = ort_runner(path)
        if graph == "prefix":
            rows = _prefix_rows(want_run, got_run, draws, manifest, precision)[0]
        else:
            rows = _expert_rows(graph, want_run, got_run, draws, kv_want, kv_want, manifest, precision)
        return _margin(rows)

    return best_section(candidates, margin_with)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.precision.mixed_precision",
                                description="fp16/bf16 artifact folder for strongly typed TensorRT builds.")
    p.add_argument("--src", type=Path, default=Path("artifacts/onnx"), help="fp32 artifact folder (make export)")
    p.add_argument("--dst", type=Path, default=None, help="new folder (default: <src>-<precision>)")
    p.add_argument("--precision", default="fp16", help=f"one of {', '.join(LOW_TYPES)} (default fp16)")
    p.add_argument("--data-max", type=float, default=DEFAULT_DATA_MAX,
                   help=f"activations above this stay fp32 (default {DEFAULT_DATA_MAX:g})")
    p.add_argument("--keep-fp32", action="append", default=[], metavar="REGEX",
                   help="node name or torch module scope to keep fp32; repeatable")
    p.add_argument("--samples", type=int, default=4, help="calibration observations (default 4)")
    p.add_argument("--trials", type=int, default=3, help="validation observations (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fallback-rounds", type=int, default=DEFAULT_FALLBACK_ROUNDS,
                   help=f"when a gate is missed, keep the module section that helps most fp32 and retry, this many times "
                        f"(default {DEFAULT_FALLBACK_ROUNDS}; 0: fail at once)")
    p.add_argument("--force", action="store_true", help="redo even when --dst is up to date with --src")
    p.add_argument("--emulated", action="store_true",
                   help="write the fp32 emulation (closed-loop checks on the CPU; not for engines)")
    args = p.parse_args(argv)
    suffix = f"{args.precision}-emulated" if args.emulated else args.precision
    dst = args.dst or args.src.with_name(f"{args.src.name}-{suffix}")
    if not args.force and up_to_date(args.src, dst, args.precision, args.data_max, args.keep_fp32, args.emulated,
                                     args.fallback_rounds):
        print(f"[mixed precision] {dst} is up to date with {args.src} (same source manifest and options; --force redoes it)")
        return 0
    try:
        manifest = lower_artifacts(args.src, dst, precision=args.precision, data_max=args.data_max,
                                   keep=args.keep_fp32, samples=args.samples, trials=args.trials, seed=args.seed,
                                   fallback_rounds=args.fallback_rounds, emulated=args.emulated)
    except (DerivationInputError, AtomicFolderError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except AccuracyGateError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    rec = manifest["mixed_precision"]
    share = ", ".join(f"{g} {v['low_nodes']}/{v['low_nodes'] + v['fp32_nodes']}" for g, v in rec["graphs"].items())
    size = sum(v["bytes"] for v in manifest["files"].values()) / 1e6
    print(f"[mixed precision] wrote {dst} in {rec['seconds']:.1f} s ({precision_line(rec)}; low/float nodes {share}; "
          f"{size:.1f} MB)")
    print("\n".join(rec["validation"]["table"]))
    return 0


def up_to_date(src: Path, dst: Path, precision: str, data_max: float, keep: Sequence[str], emulated: bool,
               fallback_rounds: int = DEFAULT_FALLBACK_ROUNDS) -> bool:
    """True when `dst` is an intact lowering of the current `src` with the same options (make skips the work)."""
    try:
        rec = Manifest.load(dst, verify_hashes=True).raw.get("mixed_precision") or {}
        source_sha = sha256_file(src / "manifest.json")
    except (ManifestError, OSError):
        return False
    return (rec.get("source_manifest_sha256") == source_sha and rec.get("precision") == precision
            and rec.get("data_max") == data_max and rec.get("keep_fp32") == list(keep)
            and bool(rec.get("emulated")) == emulated and rec.get("fallback_rounds") == fallback_rounds)


def precision_line(record: dict[str, Any]) -> str:
    """One line for humans: what was lowered and how it was checked."""
    return (f"{record['mode']}, fp32 I/O, data_max {record['data_max']:g}, "
            f"checked {record['validation']['by']}")


if __name__ == "__main__":
    raise SystemExit(main())
