"""`make bench` smoke (tiny, 2 reps) and the GPU bench script's CPU-independent parts.

The smoke run reuses `artifacts/onnx-bench-tiny` when it is current (first run on a machine exports it,
~20-40 s); scripts/bench_gpu/ cannot run its CUDA paths here, so its helpers and a `--device cpu` dry
run (eager LeRobot and eager graph chain, tiny preset) are what is tested.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_bench_smoke(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "scripts.bench", "--smoke", "--out", str(out)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    report = json.loads((out / "bench.json").read_text())
    md = (out / "bench.md").read_text()
    assert (out / "latency_breakdown.png").stat().st_size > 1000
    assert "| ours/baseline | speedup |" in md and "LeRobot eager" in md
    tiny = report["configs"]["tiny"]
    rows = {r["metric"]: r for r in tiny["rows"]}
    chunk = next(r for m, r in rows.items() if m.startswith("full resample:"))
    assert chunk["baseline"] > 0 and chunk["ours"] > 0
    assert math.isclose(chunk["ratio"], chunk["ours"] / chunk["baseline"], rel_tol=1e-9)
    assert any(m.startswith("peak RSS") for m in rows)
    assert tiny["parity_max_abs"] < 1e-3, "LeRobot and the ONNX chain must carry the same weights"
    assert set(tiny["gates"]["gates"]) == {"always", "interval:10", "drift", "consistency"}
    assert "full" not in report["configs"]  # --smoke never exports/benches the full model
    # the int8 dynamically quantized variant (export.int8.quantization) runs too, with its accuracy cost reported
    assert "| ours int8 (ORT CPU) |" in md and "int8 accuracy cost" in md
    assert chunk["int8"] > 0 and math.isclose(chunk["int8_ratio"], chunk["int8"] / chunk["baseline"], rel_tol=1e-9)
    acc = tiny["int8_accuracy"]
    assert 0 < acc["chunk_max_abs"] < 0.25 and acc["resample_mean_abs"] < 0.1, acc
    assert tiny["ort_int8"]["quantization"]["mode"] == "int8-dynamic"


def test_bench_gpu_help():
    for cmd in ([sys.executable, "scripts/bench_gpu", "--help"], [sys.executable, "-m", "scripts.bench_gpu", "--help"]):
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "--variants" in proc.stdout and "graphs-bf16" in proc.stdout


# ----------------------------------------------------------------------- bench_gpu helpers on the CPU
def test_chunk_floor_roofline():
    from scripts.bench_gpu.roofline import chunk_floor

    f = chunk_floor(weight_bytes=2.5e9, flops=0.5e12, copy_gbps=4000, matmul_tflops=500)
    assert f["bandwidth_ms"] == pytest.approx(0.625) and f["compute_ms"] == pytest.approx(1.0)
    assert f["floor_ms"] == pytest.approx(1.0) and f["bound"] == "compute" and f["serial_ms"] == pytest.approx(1.625)
    assert chunk_floor(1e9, 1e9, 1000, 1000)["bound"] == "bandwidth"


def test_const_tensors_cache_only_python_data_on_the_device():
    import torch

    from scripts.bench_gpu.chain import ConstTensors

    consts = ConstTensors("cpu")
    with consts.active():
        a = torch.tensor([True, False], dtype=torch.bool, device="cpu")
        b = torch.tensor([True, False], dtype=torch.bool, device="cpu")
        c = torch.tensor([1.0, 2.0])  # no device given: never cached
        d = torch.tensor([1.0, 2.0])
    assert a is b and consts.hits == 1
    assert c is not d
    assert torch.tensor is consts._orig  # restored


@pytest.fixture(scope="module")
def tiny_models():
    from scripts.bench_gpu.models import build_models, make_inputs

    model, plain = build_models("tiny", "cpu")
    return model, plain, make_inputs(plain.config, "cpu")


def test_weight_traffic_and_flops(tiny_models):
    from scripts.bench_gpu.chain import GraphChain
    from scripts.bench_gpu.roofline import count_flops, weight_traffic

    model, plain, inp = tiny_models
    m = model.model
    t = weight_traffic(m, num_steps=10, bytes_per_param=2)
    expert = sum(p.numel() for p in m.vlm_with_expert.lm_expert.parameters())
    assert t["step_params"] > expert > 0
    assert t["delta_params"] >= sum(p.numel() for p in m.delta_expert.parameters())
    assert t["prefix_params"] + t["step_params"] + t["delta_params"] <= sum(p.numel() for p in m.parameters())
    assert t["chunk_bytes"] > 2 * (t["prefix_params"] + 10 * t["step_params"])
    chain = GraphChain(m, inp, num_steps=plain.config.num_steps)
    assert count_flops(chain.chunk) > count_flops(chain.stage("delta")) > 0


def test_graph_chain_matches_lerobot_on_cpu(tiny_models):
    import torch

    from scripts.bench_gpu.chain import GraphChain
    from scripts.bench_gpu.lerobot_side import lerobot_batch

    model, plain, inp = tiny_models
    chain = GraphChain(model.model, inp, num_steps=plain.config.num_steps)
    chain.chunk()
    with torch.inference_mode():
        ref = plain.predict_action_chunk(lerobot_batch(plain, inp), noise=inp["noise"].clone())
    ours = chain.x[:, :, : ref.shape[-1]]
    assert torch.allclose(ours, ref, atol=1e-4), (ours - ref).abs().max()
    assert chain.out[0].shape == inp["noise"].shape and torch.isfinite(chain.out[1]).all()


def test_bench_gpu_cpu_dry_run(tmp_path):
    """The whole script on the CPU (tiny; eager fp32 + bf16 variants; CUDA-only variants are skipped)."""
    proc = subprocess.run([sys.executable, "-m", "scripts.bench_gpu", "--device", "cpu", "--preset", "tiny", "--reps", "1",
                           "--warmup", "0", "--out", str(tmp_path)], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    report = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert set(report["variants"]) == {"lerobot-fp32", "lerobot-bf16", "chain-fp32", "chain-bf16"}
    for name, r in report["variants"].items():
        assert "error" not in r, (name, r)
        assert r["chunk"]["median_ms"] > 0
    assert report["parity_max_abs"] < 1e-4
    assert report["flops"] > 0 and report["traffic"]["chunk_bytes"] > 0
    assert "| chain-bf16 |" in (tmp_path / "bench_gpu.md").read_text()
