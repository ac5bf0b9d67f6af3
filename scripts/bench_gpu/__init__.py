"""GPU benchmark: LeRobot SmolVLA (eager fp32/bf16, torch.compile reduce-overhead) vs our three-graph chain
(static shapes + CUDA graphs), per stage and per chunk, against measured bandwidth/matmul ceilings.

    python -m scripts.bench_gpu --out reports/bench_gpu [--preset full] [--reps 20] [--variants ...]
        [--artifacts artifacts/onnx-bench-full --engines artifacts/engines-bench]   # TensorRT, if importable

Written for a bare x86 CUDA machine (H100/H200, PyTorch 2.11, Python 3.12, no network, no TensorRT);
lerobot/transformers may come from wheels unpacked into `.whl/site` (see docs/08-benchmarks.md). It has NOT been
run by the project yet; on a machine without CUDA only `--help`, `--device cpu` (a dry run of the same code
paths without CUDA graphs / compile) and the package's pure helpers work.

Variants (all batch 1, same random weights, same inputs; `--variants` picks a subset):
  lerobot-fp32, lerobot-bf16          LeRobot `SmolVLAPolicy.predict_action_chunk`, eager
  compile-fp32, compile-bf16          the same under `torch.compile(mode="reduce-overhead")` (sample_actions)
  chain-fp32, chain-bf16              export/graphs/graph_wrappers.py Prefix/MainExpert/DeltaExpert graphs, eager
  graphs-fp32, graphs-bf16            the same three stages, each captured once as a CUDA graph (the whole
                                      N-step Euler loop is one graph) and replayed
  ceilings                            device copy bandwidth, bf16 matmul TFLOP/s → floor for one chunk
  tensorrt                            engines built by export/trt/build_engines.py, via runtime TensorRTBackend
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEEL_SITE = ROOT / ".whl" / "site"  # `pip install --no-deps --target .whl/site .whl/*.whl`
for _p in (WHEEL_SITE, ROOT):
    if _p.is_dir() and str(_p) not in sys.path:
        sys.path.insert(0 if _p == ROOT else len(sys.path), str(_p))
