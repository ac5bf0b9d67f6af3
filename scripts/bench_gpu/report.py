"""bench_gpu.md: one row per variant (chunk, stages, setup, peak memory, speedup vs LeRobot fp32 eager),
failures, the roofline floor and the same-weights check."""

from __future__ import annotations

import json
import math
from typing import Any


def render_markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [f"# GPU bench: LeRobot SmolVLA vs SmolVLA-CLS graph chain ({meta['preset']})", "",
             (f"Device {meta['device_name']} ({meta['device']}), torch {meta['torch']}, python {meta['python']}, "
              f"lerobot {meta['lerobot']}. Batch 1, {meta['num_steps']} steps, chunk {meta['chunk_size']}, "
              f"{meta['reps']} reps (warm-up {meta['warmup']} excluded). Timings: CUDA events (device time)."), "",
             "| variant | chunk median ms | p90 | prefix | one step | N-step loop | delta | setup/compile s | peak GPU MB | vs LeRobot fp32 eager |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = report["variants"].get("lerobot-fp32", {}).get("chunk", {}).get("median_ms")

    def f(v: Any, nd: int = 2) -> str:
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))

    for name, r in report["variants"].items():
        if name == "ceilings" or "chunk" not in r:
            continue
        c = r["chunk"]["median_ms"]
        step = r.get("denoise_step", r.get("main_step", r.get("main_step_eager", {}))).get("median_ms")
        loop = r.get("denoise_loop", r.get("denoise", {})).get("median_ms")
        setup = r.get("compile_s", r.get("setup_s"))
        ratio = f"{base / c:.2f}× faster" if base and c and not math.isnan(c) else "—"
        lines.append(f"| {name} | {f(c)} | {f(r['chunk']['p90_ms'])} | {f(r.get('prefix', {}).get('median_ms'))} | "
                     f"{f(step)} | {f(loop)} | {f(r.get('delta', {}).get('median_ms'))} | {f(setup, 1)} | "
                     f"{f(r.get('peak_gpu_mb'), 0)} | {ratio} |")
    errs = {k: v["error"] for k, v in report["variants"].items() if "error" in v}
    for name, r in report["variants"].items():
        if r.get("capture_errors"):
            errs[f"{name} (CUDA-graph capture, stage left eager)"] = json.dumps(r["capture_errors"])[:400]
    if errs:
        lines += ["", "Failures:", ""] + [f"- `{k}`: {v}" for k, v in errs.items()]
    ceil = report["variants"].get("ceilings")
    if ceil and "error" not in ceil:
        fl = report.get("floor", {})
        lines += ["", (f"Ceilings: device copy {ceil['copy_gbps']:.0f} GB/s (read+write), bf16 matmul "
                       f"{ceil['matmul_tflops']:.0f} TFLOP/s. One chunk: {report['traffic']['chunk_bytes'] / 1e9:.2f} GB "
                       f"of bf16 weights + K/V, {report['flops'] / 1e12:.3f} TFLOP → floor "
                       f"{fl.get('floor_ms', float('nan')):.2f} ms ({fl.get('bound')}-bound; serial bound "
                       f"{fl.get('serial_ms', float('nan')):.2f} ms).")]
    if "parity_max_abs" in report:
        lines += ["", (f"LeRobot fp32 vs chain fp32 (same weights, inputs, noise): max |Δ chunk| = "
                       f"{report['parity_max_abs']:.2e}.")]
    return "\n".join(lines) + "\n"
