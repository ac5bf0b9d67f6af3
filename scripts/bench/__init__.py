"""`make bench`: latency, memory and compute per stage — our onnxruntime chain vs LeRobot's own inference.

    python -m scripts.bench --out reports/bench [--configs tiny,full] [--reps N] [--smoke]

Per configuration (preset `tiny` and/or `full`, random weights, seed 0) the parent process
1. exports the preset once to `artifacts/onnx-bench-<cfg>` (reused when present and intact),
2. writes one shared input set (images, tokens, state, noise) to `<out>/inputs-<cfg>.npz`,
3. runs each side in its own subprocess, so peak RSS (`ru_maxrss`) is per side:
   - `lerobot`: a plain lerobot `SmolVLAPolicy` carrying the SAME weights as ours (state dict copied with
     strict=False) — eager `predict_action_chunk` (prefix and denoise loop timed separately by wrapping
     `model.denoise_step`), `select_action` with n_action_steps = chunk (open loop) and = 1 (reactive);
   - `ort`: the three exported graphs under onnxruntime CPU (the runtime's own `OnnxRuntimeBackend`) —
     each graph alone, full resample (prefix + N main steps + delta), a gated tick that keeps the plan
     (prefix + gate [+ delta]), and `EdgePolicy.step` ticks (gate always = reactive, gate never = open loop);
   - `ort` again on the int8 dynamically quantized copy `artifacts/onnx-bench-<cfg>-int8` (export.int8.quantization
     with its default graph rewrites, reused while its stamp matches the fp32 folder's manifest and the code of
     export/int8/quantization.py + export/int8/graph_optimization.py; `--no-int8` skips it), plus its accuracy cost:
     |chunk_int8 − chunk_fp32| for the same inputs and noise;
   - `gates` (tiny only): `EdgePolicy` on simtask perturbed episodes per gate policy (mean ms/tick, success);
4. writes `<out>/bench.json`, `<out>/bench.md` (ratios ours/baseline in the same table) and
   `<out>/latency_breakdown.png` (stacked bars per stage).

Warm-up runs are excluded; medians and p90 are over the repetitions. Both sides get the same inputs and
the same noise, and the parent reports the max |difference| of the two chunks (a same-weights check).

Modules: `cli` (the parent: flags, per-configuration runs, outputs), `runner` (one side per subprocess),
`artifacts` (export/int8 folders, reuse stamps, shared inputs), `lerobot_side`, `ours` (onnxruntime), `gates`
(simtask), `measure` (timers, RSS), `report` (rows, markdown, target) and `plot` (latency_breakdown.png).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository root: code stamps, child processes' cwd/PYTHONPATH
