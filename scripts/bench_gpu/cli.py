"""`python -m scripts.bench_gpu`: flags, the variants in order (fp32, the same-weights check, compile, bf16),
bench_gpu.json and bench_gpu.md."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import scripts.bench_gpu
from evaluation.cli_args import non_negative_int, output_dir, positive_int
from scripts.bench_gpu.chain import GraphChain, bench_chain
from scripts.bench_gpu.environment import run_meta, wheel_requirements
from scripts.bench_gpu.lerobot_side import bench_lerobot, lerobot_batch
from scripts.bench_gpu.models import build_models, cast_bf16, make_inputs
from scripts.bench_gpu.report import render_markdown
from scripts.bench_gpu.roofline import chunk_floor, count_flops, measure_ceilings, weight_traffic
from scripts.bench_gpu.trt_engines import bench_tensorrt

ALL_VARIANTS = ("ceilings", "lerobot-fp32", "lerobot-bf16", "chain-fp32", "chain-bf16", "graphs-fp32", "graphs-bf16",
                "compile-fp32", "compile-bf16", "tensorrt")


CPU_VARIANTS = ("lerobot-fp32", "lerobot-bf16", "chain-fp32", "chain-bf16")  # what a --device cpu dry run can do


def torch_device(text: str) -> str:
    """cpu, cuda or cuda:N — refused by argparse instead of a torch RuntimeError after the models are built."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def main(argv: list[str] | None = None) -> int:
    doc = scripts.bench_gpu.__doc__ or ""
    p = argparse.ArgumentParser(prog="python -m scripts.bench_gpu", description=doc.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(doc.split("\n")[9:]))
    p.add_argument("--out", type=output_dir, default=Path("reports/bench_gpu"))
    p.add_argument("--preset", default="full", choices=["tiny", "full"])
    p.add_argument("--device", type=torch_device, default="cuda",
                   help="cuda (default), cuda:N or cpu (dry run: eager variants only)")
    p.add_argument("--reps", type=positive_int, default=20)
    p.add_argument("--warmup", type=non_negative_int, default=3)
    p.add_argument("--variants", default=",".join(ALL_VARIANTS), help=f"comma list from {', '.join(ALL_VARIANTS)}")
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/onnx-bench-full"),
                   help="ONNX folder the TensorRT engines were built from")
    p.add_argument("--engines", type=Path, default=Path("artifacts/engines-bench"), help="folder of <graph>.plan")
    p.add_argument("--print-wheel-requirements", action="store_true",
                   help="print the pinned non-torch distributions this script imports (for `pip download`) and exit")
    args = p.parse_args(argv)
    if args.print_wheel_requirements:
        print("\n".join(wheel_requirements()))
        return 0

    import torch

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(ALL_VARIANTS))
    if unknown:
        p.error(f"--variants: unknown {unknown}")
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here (use --device cpu for a dry run)", file=sys.stderr)
        return 3
    if not cuda:
        variants = [v for v in variants if v in CPU_VARIANTS]
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model, plain = build_models(args.preset, args.device)
    cfg = plain.config
    inp = make_inputs(cfg, args.device)
    report: dict[str, Any] = {"meta": run_meta(args, plain), "variants": {}}
    report["traffic"] = weight_traffic(model.model, cfg.num_steps, bytes_per_param=2)
    chain0 = GraphChain(model.model, inp, cfg.num_steps)
    report["flops"] = count_flops(chain0.chunk)
    del chain0

    def record(name: str, fn: Callable[[], dict]) -> None:
        print(f"[bench_gpu] {name} ...", flush=True)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            report["variants"][name] = fn()
        except Exception as exc:  # noqa: BLE001 — one failing variant must not lose the others
            report["variants"][name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        (args.out / "bench_gpu.json").write_text(json.dumps(report, indent=1, default=float))

    # what each variant runs, by the name before its dtype (the dtype is whatever the models carry by then)
    jobs: dict[str, Callable[[], dict]] = {
        "ceilings": lambda: measure_ceilings(args.device),
        "lerobot": lambda: bench_lerobot(plain, inp, args.device, args.reps, args.warmup),
        "compile": lambda: bench_lerobot(plain, inp, args.device, args.reps, args.warmup, compiled=True),
        "chain": lambda: bench_chain(model.model, inp, cfg.num_steps, args.device, args.reps, args.warmup, False),
        "graphs": lambda: bench_chain(model.model, inp, cfg.num_steps, args.device, args.reps, args.warmup, True),
        "tensorrt": lambda: bench_tensorrt(args.artifacts, args.engines, args.reps, args.warmup)}
    fp32 = [v for v in variants if v.endswith("fp32") or v in ("ceilings", "tensorrt")]
    bf16 = [v for v in variants if v.endswith("bf16")]
    for v in fp32:
        if v != "compile-fp32":  # compile runs after the same-weights check
            record(v, jobs[v.split("-")[0]])
    # same-weights check (before anything is cast or compiled): LeRobot fp32 chunk vs the chain's fp32 chunk
    chain_fp32 = next((report["variants"][n] for n in ("graphs-fp32", "chain-fp32")
                       if "chunk_actions" in report["variants"].get(n, {})), None)
    if chain_fp32 is not None:
        import numpy as np

        with torch.inference_mode():
            ref = plain.predict_action_chunk(lerobot_batch(plain, inp), noise=inp["noise"].clone())[0].float().cpu().numpy()
        report["parity_max_abs"] = float(np.max(np.abs(ref - np.asarray(chain_fp32["chunk_actions"]))))
    # compile last among fp32 (it replaces sample_actions on the instance)
    if "compile-fp32" in variants:
        record("compile-fp32", jobs["compile"])
        vars(plain.model).pop("sample_actions", None)
    if bf16:
        cast_bf16(model.model)
        cast_bf16(plain.model)
        for v in bf16:
            record(v, jobs[v.split("-")[0]])
    ceil = report["variants"].get("ceilings")
    if ceil and "error" not in ceil:
        report["floor"] = chunk_floor(report["traffic"]["chunk_bytes"], report["flops"], ceil["copy_gbps"],
                                      ceil["matmul_tflops"])
    for r in report["variants"].values():
        r.pop("chunk_actions", None)
    report["meta"]["total_s"] = time.perf_counter() - started
    (args.out / "bench_gpu.json").write_text(json.dumps(report, indent=1, default=float))
    md_text = render_markdown(report)
    (args.out / "bench_gpu.md").write_text(md_text)
    print(md_text)
    return 0
