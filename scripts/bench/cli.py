"""The parent process of `python -m scripts.bench`: flags, per configuration the export/reuse and one child per
side, then bench.json, bench.md and latency_breakdown.png."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

import scripts.bench
from evaluation.cli_args import non_negative_int, output_dir, positive_int
from scripts.bench.artifacts import artifacts_reusable, int8_reusable, make_inputs
from scripts.bench.plot import plot
from scripts.bench.report import PARITY_WARN, build_rows, int8_accuracy, machine_meta, render_markdown, target
from scripts.bench.runner import CHILDREN, run_child, write_result

CONFIGS = ("tiny", "full")


def bench_int8(cfg: str, art: Path, args, out: Path, common: list[str], log) -> dict:
    """Quantize the fp32 folder (or reuse an up-to-date int8 copy) and run the ort child on it."""
    q_art = art.with_name(art.name + "-int8")
    res: dict[str, Any] = {"artifacts_int8": str(q_art)}
    if int8_reusable(q_art, art):
        man = json.loads((q_art / "manifest.json").read_text())
        res["quantize"] = {"reused": True, "quantize_s": man["quantization"].get("seconds")}
        log(f"[bench] {cfg}: reusing {q_art}")
    else:
        log(f"[bench] {cfg}: int8 dynamic quantization to {q_art} ...")
        res["quantize"] = {"reused": False, **run_child("quantize", cfg, out / f".quantize-{cfg}.json", args,
                                                         ["--artifacts", str(q_art), "--source", str(art)])}
        log(f"[bench] {cfg}: quantization {res['quantize']['quantize_s']:.1f} s")
    man = json.loads((q_art / "manifest.json").read_text())
    res["artifact_bytes_int8"] = {k: v["bytes"] for k, v in man["files"].items()}
    log(f"[bench] {cfg}: onnxruntime int8 ...")
    res["ort_int8"] = run_child("ort", cfg, out / f".ort-int8-{cfg}.json", args,
                                ["--artifacts", str(q_art), *common[2:]])
    log(f"[bench] {cfg}: ours int8 full resample median {res['ort_int8']['resample']['total']['median_ms']:.1f} ms "
        f"({res['ort_int8']['wall_s']:.0f} s)")
    return res


def bench_config(cfg: str, args, out: Path, log) -> dict:
    art = Path(args.artifacts_root) / f"onnx-bench-{cfg}"
    res: dict[str, Any] = {"artifacts": str(art)}
    if artifacts_reusable(art, cfg, need_calibration=cfg == "tiny" and not args.smoke):
        man = json.loads((art / "manifest.json").read_text())
        res["export"] = {"reused": True, "export_s": man.get("export_seconds")}
        log(f"[bench] {cfg}: reusing {art}")
    else:
        log(f"[bench] {cfg}: exporting the preset to {art} ...")
        res["export"] = {"reused": False, **run_child("export", cfg, out / f".export-{cfg}.json", args,
                                                       ["--artifacts", str(art), "--calib-episodes",
                                                        str(0 if args.smoke else 12)])}
        log(f"[bench] {cfg}: export {res['export']['export_s']:.1f} s")
    man = json.loads((art / "manifest.json").read_text())
    res["artifact_bytes"] = {k: v["bytes"] for k, v in man["files"].items()}
    inputs = out / f"inputs-{cfg}.npz"
    make_inputs(art, inputs)
    common = ["--artifacts", str(art), "--inputs", str(inputs)]
    log(f"[bench] {cfg}: LeRobot eager ...")
    res["lerobot"] = run_child("lerobot", cfg, out / f".lerobot-{cfg}.json", args, common)
    log(f"[bench] {cfg}: LeRobot predict_action_chunk median {res['lerobot']['predict_action_chunk']['median_ms']:.1f} ms "
        f"({res['lerobot']['wall_s']:.0f} s)")
    log(f"[bench] {cfg}: onnxruntime ...")
    res["ort"] = run_child("ort", cfg, out / f".ort-{cfg}.json", args, common)
    log(f"[bench] {cfg}: ours full resample median {res['ort']['resample']['total']['median_ms']:.1f} ms "
        f"({res['ort']['wall_s']:.0f} s)")
    if not args.no_int8:
        res.update(bench_int8(cfg, art, args, out, common, log))
    if cfg == "tiny":
        log(f"[bench] {cfg}: gate policies on simtask ...")
        res["gates"] = run_child("gates", cfg, out / f".gates-{cfg}.json", args,
                                 common + ["--episodes", str(args.episodes if not args.smoke else 2)])
    if "ort_int8" in res:
        res["int8_accuracy"] = int8_accuracy(res["ort"], res["ort_int8"], np.asarray(res["lerobot"]["chunk"]))
    a, b = np.asarray(res["lerobot"].pop("chunk")), np.asarray(res["ort"].pop("chunk"))
    res["parity_max_abs"] = float(np.max(np.abs(a - b)))
    for key in ("chunk_resample", "obs_emb"):
        res["ort"].pop(key, None)
    if res["parity_max_abs"] > PARITY_WARN:
        log(f"[bench] WARNING {cfg}: LeRobot and ours disagree by {res['parity_max_abs']:.3g} on the same inputs/noise "
            f"(stale artifacts? delete {art} and rerun)")
    res["rows"] = build_rows(res)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.bench", description=scripts.bench.__doc__.split("\n")[0])
    p.add_argument("--out", type=output_dir, default=Path("reports/bench"))
    p.add_argument("--configs", default="tiny,full", help="comma list of presets: tiny, full")
    p.add_argument("--reps", type=positive_int, default=None,
                   help="repetitions of chunk-sized work (default tiny 30, full 5; single expert steps get 4× (≥20))")
    p.add_argument("--smoke", action="store_true", help="CI: tiny only, 2 reps, no full export (< 60 s)")
    p.add_argument("--threads", type=non_negative_int, default=0, help="onnxruntime intra_op_num_threads (0 = ORT default)")
    p.add_argument("--episodes", type=positive_int, default=10, help="simtask episodes per gate (tiny)")
    p.add_argument("--artifacts-root", default="artifacts", help="where artifacts/onnx-bench-<cfg> live")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 dynamically quantized variant")
    # internal: one measurement side in its own process
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--config", default="tiny", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--artifacts", help=argparse.SUPPRESS)
    p.add_argument("--inputs", help=argparse.SUPPRESS)
    p.add_argument("--source", help=argparse.SUPPRESS)
    p.add_argument("--calib-episodes", type=int, default=12, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        write_result(args.result, CHILDREN[args.child](args))
        return 0

    started = time.perf_counter()
    configs = ["tiny"] if args.smoke else [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in CONFIGS]
    if bad or not configs:
        p.error(f"--configs={args.configs!r}: expected a comma list from {list(CONFIGS)}" + (f", unknown {bad}" if bad else ""))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"{msg}  [{time.perf_counter() - started:.0f} s]", flush=True)

    report: dict[str, Any] = {"meta": machine_meta(args.smoke), "configs": {}}
    for cfg in configs:
        report["configs"][cfg] = bench_config(cfg, args, out, log)
    report["meta"]["total_s"] = time.perf_counter() - started
    report["meta"]["loadavg_end"] = list(os.getloadavg())
    if "full" in report["configs"]:
        report["target"] = target(report["configs"]["full"])
    (out / "bench.json").write_text(json.dumps(report, indent=1, default=float))
    plot(report, out / "latency_breakdown.png")
    (out / "bench.md").write_text(render_markdown(report))
    for f in out.glob(".*.json"):
        f.unlink()
    print(render_markdown(report))
    print(f"[bench] wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'latency_breakdown.png'} "
          f"in {time.perf_counter() - started:.0f} s")
    return 0
