"""The report: per-configuration rows (ours / baseline), the int8 accuracy cost, the headline target, the
machine metadata and the markdown table (bench.md)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

PARITY_WARN = 1e-3  # max |chunk difference| above which the two sides cannot carry the same weights
TARGET_SPEEDUP = 2.0  # full-size full resample (ORT CPU) vs LeRobot eager predict_action_chunk


def ratio(ours: float | None, base: float | None) -> float | None:
    if ours is None or base is None or not np.isfinite(ours) or not np.isfinite(base) or base <= 0:
        return None
    return ours / base


def _peak(side: dict) -> float:
    """Lifetime peak RSS of a child: ru_maxrss is read before the VmHWM reset and at the end (after the reset
    Linux reports the new high-water mark), so the lifetime peak is the larger of the two."""
    mem = side["memory"]
    return max(mem["after_load"]["ru_maxrss_mb"], mem["end"]["ru_maxrss_mb"])


def build_rows(res: dict) -> list[dict]:
    """(metric, baseline, ours[, ours int8]) rows of one configuration; ratio = ours / baseline (< 1: ours is
    faster). The int8 columns are None when the int8 variant did not run."""
    lr, o, o8 = res["lerobot"], res["ort"], res.get("ort_int8")
    n, t = lr["num_steps"], lr["chunk_size"]
    chunk = lr["predict_action_chunk"]
    rows = [
        (f"chunk: prefix + {n} steps (median ms)", chunk["median_ms"], lambda s: s["resample_no_delta"]["median_ms"],
         "LeRobot predict_action_chunk | ours prefix + denoise"),
        ("full resample: + delta step (median ms)", chunk["median_ms"], lambda s: s["resample"]["total"]["median_ms"],
         "LeRobot predict_action_chunk | ours prefix + N steps + delta"),
        ("full resample p90 (ms)", chunk["p90_ms"], lambda s: s["resample"]["total"]["p90_ms"], ""),
        ("prefix (median ms)", lr["prefix"]["median_ms"], lambda s: s["prefix"]["median_ms"],
         "LeRobot: chunk − denoise loop (incl. image prep)"),
        ("one main-expert step (median ms)", lr["denoise_step"]["median_ms"], lambda s: s["main_step"]["median_ms"], ""),
        (f"{n}-step denoise loop (median ms)", lr["denoise_loop"]["median_ms"],
         lambda s: s["resample"]["denoise"]["median_ms"], ""),
        ("delta-expert step (median ms)", None, lambda s: s["delta"]["median_ms"], "no LeRobot counterpart"),
        ("gated tick, plan kept: prefix + drift gate (median ms)", lr["select_action_reactive"]["median_ms"],
         lambda s: s["gated_keep_drift"]["median_ms"], "vs LeRobot reactive tick (a chunk per tick)"),
        ("gated tick, plan kept: prefix + delta + consistency gate (median ms)",
         lr["select_action_reactive"]["median_ms"], lambda s: s["gated_keep_consistency"]["median_ms"],
         "= cost of a refined kept tick"),
        ("per tick, reactive (ms/tick)", lr["select_action_reactive"]["amortised_ms"],
         lambda s: s["edge_reactive"]["amortised_ms"], "select_action n_action_steps=1 | EdgePolicy gate always"),
        (f"per tick, open loop (ms/tick, amortised over {t})", lr["select_action_open_loop"]["amortised_ms"],
         lambda s: s["edge_open_loop"]["amortised_ms"], "select_action n_action_steps=chunk | EdgePolicy gate never"),
        ("peak RSS of the process (MB)", _peak(lr), _peak, "ru_maxrss; LeRobot side includes building the policy"),
        ("RSS with model loaded (MB)", lr["memory"]["after_load"].get("rss_mb"),
         lambda s: s["memory"]["after_load"].get("rss_mb"), ""),
        ("peak RSS during inference (MB)", lr["memory"]["end"].get("hwm_mb"), lambda s: s["memory"]["end"].get("hwm_mb"),
         "VmHWM reset after loading"),
        ("load time (s)", lr["build_s"], lambda s: s["session_load_s"], "build policy + copy weights | create 3 ORT sessions"),
    ]
    out = []
    for m_, b, get, note in rows:
        v = get(o)
        v8 = get(o8) if o8 is not None else None
        r, r8 = ratio(v, b), ratio(v8, b)
        out.append({"metric": m_, "baseline": b, "ours": v, "ratio": r, "speedup": (1 / r) if r else None,
                    "int8": v8, "int8_ratio": r8, "int8_speedup": (1 / r8) if r8 else None, "note": note})
    return out


def int8_accuracy(fp32: dict, int8: dict, lerobot_chunk: np.ndarray) -> dict:
    """Accuracy cost of int8 (same inputs, same noise), in normalised action units; pops the raw arrays."""
    out: dict[str, Any] = {}
    for key, name in (("chunk", "chunk"), ("chunk_resample", "resample")):
        ref = np.asarray(fp32[key] if key == "chunk" else fp32.pop(key))  # fp32 "chunk" is the parity check's
        q = np.asarray(int8.pop(key))
        diff = np.abs(q - ref)
        out[f"{name}_max_abs"], out[f"{name}_mean_abs"] = float(diff.max()), float(diff.mean())
        out[f"{name}_fp32_std"] = float(ref.std())
        if key == "chunk":
            out["chunk_vs_lerobot_max_abs"] = float(np.max(np.abs(q - lerobot_chunk)))
    e32, e8 = np.asarray(fp32.pop("obs_emb")), np.asarray(int8.pop("obs_emb"))
    out["obs_cls_cosine_distance"] = float(1.0 - np.dot(e32, e8))
    return out


def target(full: dict) -> dict:
    """The headline on the full-size configuration: full resample (fp32 and, when it ran, int8) vs LeRobot's
    eager predict_action_chunk, against TARGET_SPEEDUP."""
    row = next(r for r in full["rows"] if r["metric"].startswith("full resample:"))
    met = row["speedup"] is not None and row["speedup"] >= TARGET_SPEEDUP
    out = {"speedup_full_resample_vs_lerobot_chunk": row["speedup"], "required": TARGET_SPEEDUP, "met": met,
           "text": (f"Full-size full resample (prefix + N steps + delta) with onnxruntime CPU vs LeRobot "
                    f"eager predict_action_chunk on the same machine: {row['speedup']:.2f}× faster "
                    f"(target ≥ {TARGET_SPEEDUP:.0f}×: {'met' if met else 'NOT met'}).")}
    if row.get("int8_speedup") is not None:
        met8 = row["int8_speedup"] >= TARGET_SPEEDUP
        acc = full["int8_accuracy"]
        out.update(
            speedup_int8_full_resample_vs_lerobot_chunk=row["int8_speedup"], met_int8=met8,
            text=out["text"] + (
                f" With int8 dynamic quantization (onnxruntime CPU): {row['int8_speedup']:.2f}× "
                f"(target: {'met' if met8 else 'NOT met'}), at an accuracy cost of max |Δ chunk| "
                f"{acc['resample_max_abs']:.2e} (mean {acc['resample_mean_abs']:.2e}) normalised action units "
                f"vs fp32."))
    return out


def machine_meta(smoke: bool) -> dict:
    import importlib.metadata as md

    def ver(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "absent"

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": ver("torch"),
            "onnxruntime": ver("onnxruntime"), "lerobot": ver("lerobot"), "smoke": smoke,
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "loadavg_start": list(os.getloadavg()),
            "note": "one subprocess per side and configuration; other jobs may share the CPUs (see loadavg)"}


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def int8_markdown(res: dict) -> list[str]:
    acc, q = res["int8_accuracy"], res["ort_int8"].get("quantization") or {}
    graphs = q.get("graphs", {})
    done = ", ".join(f"{g} {v['quantized_nodes']}/{v['weight_nodes']}" for g, v in graphs.items())
    kept = sorted({s for v in graphs.values() for s in v.get("excluded_scopes", [])})
    sizes = res["artifact_bytes_int8"]
    qz = res["quantize"]
    return [(f"int8 (`{res['artifacts_int8']}`, export.int8.quantization: {q.get('mode')}, weights {q.get('weights')}, "
             f"activations {q.get('activations')}): weight MatMuls quantized {done}; kept float32: "
             f"{', '.join(kept) or 'none'} and every activation·activation MatMul (attention). "
             f"Files {sum(sizes.values()) / 1e6:.1f} MB; quantization {_fmt(qz.get('quantize_s'), 1)} s"
             + (" (reused folder)" if qz.get("reused") else "") + "."),
            (f"int8 accuracy cost (same inputs, same noise; normalised action units): prefix + {res['lerobot']['num_steps']}"
             f" steps max |int8 − fp32| = {acc['chunk_max_abs']:.2e}, mean {acc['chunk_mean_abs']:.2e} (fp32 chunk std "
             f"{acc['chunk_fp32_std']:.2f}); full resample incl. delta max {acc['resample_max_abs']:.2e}, mean "
             f"{acc['resample_mean_abs']:.2e}; max |int8 − LeRobot| = {acc['chunk_vs_lerobot_max_abs']:.2e}; obs-CLS "
             f"cosine distance int8 vs fp32 {acc['obs_cls_cosine_distance']:.2e}."), ""]


def render_markdown(report: dict) -> str:
    meta = report["meta"]
    lines = ["# make bench: SmolVLA-CLS onnxruntime chain vs LeRobot SmolVLA eager (CPU)", "",
             (f"Machine: {meta['cpu']}, {meta['cpu_count']} logical CPUs (shared with other jobs: timings are "
             f"indicative), python {meta['python']}, torch {meta['torch']}, onnxruntime {meta['onnxruntime']}, "
             f"lerobot {meta['lerobot']}. Load average (1 min) {meta['loadavg_start'][0]:.1f} at start, "
             f"{meta.get('loadavg_end', [float('nan')])[0]:.1f} at end. Date {meta['date_utc']}. Smoke: {meta['smoke']}. "
             f"Total wall {meta['total_s']:.0f} s."), "",
             ("Ratio = ours / baseline (< 1: ours is faster); speedup = baseline / ours. Random weights (seed 0), "
             "batch 1, warm-up excluded."), ""]
    for cfg, res in report["configs"].items():
        lr, o = res["lerobot"], res["ort"]
        lines += [f"## {cfg}", "",
                  (f"LeRobot eager: {lr['params'] / 1e6:.1f} M params, torch threads {lr['torch_threads']}, "
                  f"{lr['predict_action_chunk']['n']} chunk reps; ours: onnxruntime {o['onnxruntime']} CPU, "
                  f"{o['graph_optimization_level']}, intra_op_threads {o['intra_op_threads']} (0 = ORT default), "
                  f"{o['resample']['total']['n']} resample reps. Chunk {lr['chunk_size']}, {lr['num_steps']} steps."), "",
                  ("| metric | LeRobot eager | ours (ORT CPU) | ours/baseline | speedup | ours int8 (ORT CPU) "
                   "| int8/baseline | int8 speedup | note |"),
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in res["rows"]:
            lines.append(f"| {r['metric']} | {_fmt(r['baseline'])} | {_fmt(r['ours'])} | {_fmt(r['ratio'], 3)} | "
                         f"{_fmt(r['speedup'])}× | {_fmt(r.get('int8'))} | {_fmt(r.get('int8_ratio'), 3)} | "
                         f"{_fmt(r.get('int8_speedup'))}× | {r['note']} |".replace("| —× |", "| — |"))
        ex = res["export"]
        sizes = ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in res["artifact_bytes"].items())
        ok = res["parity_max_abs"] <= PARITY_WARN
        lines += ["", (f"Same weights check: max |LeRobot chunk − ours| = {res['parity_max_abs']:.2e} "
                      f"(same inputs, same noise, no delta step){'' if ok else ' — **MISMATCH: not the same model**'}."),
                  f"Artifacts `{res['artifacts']}`: {sizes}; total {sum(res['artifact_bytes'].values()) / 1e6:.1f} MB. "
                  f"Export: {_fmt(ex.get('export_s'), 1)} s"
                  + (" (reused folder; time from its manifest)" if ex.get("reused") else "")
                  + (f", peak RSS {ex['memory']['ru_maxrss_mb']:.0f} MB" if ex.get("memory") else "") + ".", ""]
        if "int8_accuracy" in res:
            lines += int8_markdown(res)
        if "gates" in res:
            g = res["gates"]
            lines += [(f"### {cfg}: EdgePolicy on simtask, {g['episodes']} perturbed episodes per gate "
                      f"(weights: {g['weights']})"), "",
                      "| gate | mean ms/tick | median | p90 | resamples/ep | prefix passes/ep | delta passes/ep | success |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|"]
            for r in g["gates"].values():
                lines.append(f"| {r['spec']} | {r['mean_ms_per_tick']:.2f} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
                             f"{r['resamples_per_episode']:.1f} | {r['prefix_passes_per_episode']:.1f} | "
                             f"{r['delta_passes_per_episode']:.1f} | {r['success_rate']:.2f} |")
            if str(g["weights"]).startswith("preset:"):
                lines += ["", ("Random weights: success rates say nothing about the policy; the row is there for the "
                              "per-tick cost each gate implies (its resample/prefix/delta mix).")]
            lines.append("")
    t = report.get("target")
    if t:
        lines += ["## Target", "", t["text"], ""]
        load = max(meta["loadavg_start"][0], meta.get("loadavg_end", [0.0])[0])
        if load > (meta["cpu_count"] or 1):
            lines += [(f"**Caveat:** the load average ({load:.1f}) exceeded the {meta['cpu_count']} CPUs during this run. "
                      "Multi-threaded eager PyTorch degrades far more than onnxruntime when its OpenMP threads are "
                      "descheduled, so this ratio overstates the speedup; see docs/08-benchmarks.md for a single-thread "
                      "(CPU-time) comparison."), ""]
    lines += ["![latency breakdown](latency_breakdown.png)", ""]
    return "\n".join(lines)
