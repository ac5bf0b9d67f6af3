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
   - `ort` again on the int8 dynamically quantized copy `artifacts/onnx-bench-<cfg>-int8` (export.quantization
     with its default graph rewrites, reused while its stamp matches the fp32 folder's manifest and the code of
     export/quantization.py + export/graph_optimization.py; `--no-int8` skips it), plus its accuracy cost:
     |chunk_int8 − chunk_fp32| for the same inputs and noise;
   - `gates` (tiny only): `EdgePolicy` on simtask perturbed episodes per gate policy (mean ms/tick, success);
4. writes `<out>/bench.json`, `<out>/bench.md` (ratios ours/baseline in the same table) and
   `<out>/latency_breakdown.png` (stacked bars per stage).

Warm-up runs are excluded; medians and p90 are over the repetitions. Both sides get the same inputs and
the same noise, and the parent reports the max |difference| of the two chunks (a same-weights check).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("tiny", "full")
DEFAULT_REPS = {"tiny": 30, "full": 5}
INSTRUCTION = "reach the red disc"
GATES = ("always", "interval:10", "drift", "consistency")
PARITY_WARN = 1e-3  # max |chunk difference| above which the two sides cannot carry the same weights
TARGET_SPEEDUP = 2.0  # full-size full resample (ORT CPU) vs LeRobot eager predict_action_chunk


# --------------------------------------------------------------------------------------------- helpers
def summarize(ms: list[float] | np.ndarray) -> dict[str, float]:
    a = np.asarray(ms, dtype=np.float64)
    if a.size == 0:
        return {"n": 0, "median_ms": float("nan"), "p90_ms": float("nan"), "mean_ms": float("nan"), "min_ms": float("nan")}
    return {"n": int(a.size), "median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
            "mean_ms": float(a.mean()), "min_ms": float(a.min())}


def rss_mb() -> dict[str, float]:
    """Current and high-water RSS of this process (MB) from /proc, and ru_maxrss (lifetime peak)."""
    out = {"ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                key = "rss_mb" if line.startswith("VmRSS") else "hwm_mb"
                out[key] = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return out


def reset_peak_rss() -> bool:
    """Reset VmHWM so the inference-phase peak can be read later (Linux >= 4.0; best effort)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def timed(fn, reps: int, warmup: int = 0) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def reps_for(cfg: str, reps: int | None, smoke: bool) -> tuple[int, int, int]:
    """(reps for chunk-sized work, reps for single expert steps, warm-up runs)."""
    big = 2 if smoke else (reps or DEFAULT_REPS.get(cfg, 5))
    small = big if smoke else max(4 * big, 20)
    warm = 1 if (smoke or cfg == "full") else 3
    return big, small, warm


# The code that decides what a preset's weights and graphs are: a cached export is reused only when these
# files (and the torch/lerobot versions) are unchanged since it was written.
_STAMP_SOURCES = ("smolvla_cls/presets.py", "smolvla_cls/configuration_smolvla_cls.py",
                  "smolvla_cls/modeling_smolvla_cls.py", "smolvla_cls/attention.py", "smolvla_cls/masks.py",
                  "export/checkpoint_loading.py", "export/graph_wrappers.py",
                  "export/onnx_export.py", "export/gate_calibration.py", "export/onnx_checks.py")


def code_stamp(sources: tuple[str, ...] = _STAMP_SOURCES,
               packages: tuple[str, ...] = ("torch", "lerobot", "transformers", "onnx", "onnxscript")) -> str:
    """Hash of the code (and package versions) an artifact folder was written by."""
    import hashlib
    import importlib.metadata as md

    h = hashlib.sha256()
    for pattern in sources:
        for f in sorted(ROOT.glob(pattern)):
            h.update(f.relative_to(ROOT).as_posix().encode())
            h.update(f.read_bytes())
    for pkg in packages:
        try:
            h.update(f"{pkg}={md.version(pkg)}".encode())
        except md.PackageNotFoundError:
            pass
    return h.hexdigest()[:16]


def stamp_path(folder: Path) -> Path:
    return folder.with_name(folder.name + ".bench-stamp.json")


def write_stamp(folder: Path, calibrated: bool) -> None:
    stamp_path(folder).write_text(json.dumps({"code": code_stamp(), "calibrated": calibrated}))


def int8_stamp(source: Path) -> dict:
    """What an int8 folder depends on: the fp32 folder's manifest (its hashes name every graph) and the
    quantization + graph-rewrite code / onnxruntime version."""
    from runtime.fingerprint import sha256_file

    return {"source_manifest_sha256": sha256_file(source / "manifest.json"),
            "code": code_stamp(("export/quantization.py", "export/graph_optimization.py"), ("onnxruntime",))}


def write_int8_stamp(folder: Path, source: Path) -> None:
    stamp_path(folder).write_text(json.dumps(int8_stamp(source)))


def int8_reusable(folder: Path, source: Path) -> bool:
    """An intact int8 copy of the current fp32 folder, written by the current quantization code."""
    from runtime.manifest import Manifest

    try:
        stamp = json.loads(stamp_path(folder).read_text())
        m = Manifest.load(folder, verify_hashes=True)
    except Exception:  # noqa: BLE001 — missing/stale folder → re-quantize
        return False
    q = m.raw.get("quantization") or {}
    want = int8_stamp(source)
    return stamp == want and q.get("source_manifest_sha256") == want["source_manifest_sha256"]


def artifacts_reusable(folder: Path, preset: str, need_calibration: bool) -> bool:
    """An intact export of `preset` written by the current code (and calibrated, when that is needed)."""
    from runtime.manifest import Manifest

    try:
        stamp = json.loads(stamp_path(folder).read_text())
        m = Manifest.load(folder, verify_hashes=True)
    except Exception:  # noqa: BLE001 — missing/stale folder → re-export
        return False
    if stamp.get("code") != code_stamp() or (need_calibration and not stamp.get("calibrated")):
        return False
    return m.raw.get("model", {}).get("preset") == preset


def plain_smolvla_from(policy):
    """A lerobot SmolVLAPolicy with the same config values and the same weights as `policy` (as in tests)."""
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    cfg = policy.config
    fields = {k: getattr(cfg, k) for k in SmolVLAConfig.__dataclass_fields__ if k != "type" and hasattr(cfg, k)}
    fields.pop("vlm_preset", None)
    plain = SmolVLAPolicy(SmolVLAConfig(**fields))
    missing, _unexpected = plain.load_state_dict(policy.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"plain SmolVLA lacks weights for {missing[:5]}")
    return plain.eval()


def _write(path: str, obj: dict) -> None:
    Path(path).write_text(json.dumps(obj, indent=1, default=float))


# ----------------------------------------------------------------------------------------- child: export
def child_export(args) -> dict:
    from export.checkpoint_loading import load_preset
    from export.onnx_export import export_artifacts

    t0 = time.perf_counter()
    loaded = load_preset(args.config, seed=0)
    build_s = time.perf_counter() - t0
    calibrate = args.config == "tiny" and args.calib_episodes > 0
    manifest = export_artifacts(loaded, Path(args.artifacts), calibrate=calibrate,
                                calib_episodes=max(1, args.calib_episodes), progress=False)
    write_stamp(Path(args.artifacts), calibrate)
    return {"build_s": build_s, "export_s": time.perf_counter() - t0 - build_s,
            "manifest_export_s": manifest["export_seconds"], "memory": rss_mb()}


# ---------------------------------------------------------------------------------------- child: lerobot
def child_lerobot(args) -> dict:
    import torch

    from export.checkpoint_loading import load_preset

    big, _small, warm = reps_for(args.config, args.reps, args.smoke)
    t0 = time.perf_counter()
    loaded = load_preset(args.config, seed=0)  # the exported weights (same seed → same tensors)
    plain = plain_smolvla_from(loaded.policy)
    del loaded
    gc.collect()
    build_s = time.perf_counter() - t0
    mem_loaded = rss_mb()
    reset_peak_rss()
    cfg = plain.config
    data = np.load(args.inputs)
    batch: dict[str, Any] = {key: torch.from_numpy(data["images"][:, i].copy()) for i, key in enumerate(cfg.image_features)}
    batch["observation.state"] = torch.from_numpy(data["state"])
    batch["observation.language.tokens"] = torch.from_numpy(data["lang_tokens"])
    batch["observation.language.attention_mask"] = torch.from_numpy(data["lang_mask"])
    noise = torch.from_numpy(data["noise"])

    steps: list[float] = []
    inner = plain.model.denoise_step

    def timed_denoise(*a, **k):
        t = time.perf_counter()
        r = inner(*a, **k)
        steps.append((time.perf_counter() - t) * 1e3)
        return r

    plain.model.denoise_step = timed_denoise
    total, loop, prefix = [], [], []
    with torch.inference_mode():
        for _ in range(warm):
            plain.predict_action_chunk(dict(batch), noise=noise.clone())
        steps.clear()
        for _ in range(big):
            n0 = len(steps)
            t = time.perf_counter()
            chunk = plain.predict_action_chunk(dict(batch), noise=noise.clone())
            ms = (time.perf_counter() - t) * 1e3
            total.append(ms)
            loop.append(sum(steps[n0:]))
            prefix.append(ms - loop[-1])
        step_ms = list(steps)
        # select_action, open loop: one chunk per `chunk_size` ticks (whole cycles, amortised)
        cycles = 1 if (args.smoke or args.config == "full") else 3
        cfg.n_action_steps = cfg.chunk_size
        plain.reset()
        open_ticks = timed(lambda: plain.select_action(dict(batch)), cycles * cfg.chunk_size)
        # select_action, reactive: n_action_steps = 1 → a chunk every tick
        cfg.n_action_steps = 1
        plain.reset()
        reactive = timed(lambda: plain.select_action(dict(batch)), max(2, big // 2) if args.config == "full" else big)
    n_params = sum(p.numel() for p in plain.parameters())
    return {
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "params": n_params,
        "build_s": build_s, "chunk_size": cfg.chunk_size, "num_steps": cfg.num_steps,
        "predict_action_chunk": summarize(total), "prefix": summarize(prefix), "denoise_loop": summarize(loop),
        "denoise_step": summarize(step_ms),
        "select_action_open_loop": {**summarize(open_ticks), "ticks": len(open_ticks),
                                    "amortised_ms": float(np.sum(open_ticks) / len(open_ticks))},
        "select_action_reactive": {**summarize(reactive), "amortised_ms": float(np.mean(reactive))},
        "chunk": chunk[0].float().numpy().tolist(),
        "memory": {"after_load": mem_loaded, "end": rss_mb()},
    }


# -------------------------------------------------------------------------------------------- child: ort
def child_ort(args) -> dict:
    import onnxruntime as ort

    from runtime.backend_onnxruntime import OnnxRuntimeBackend
    from runtime.gate import cosine_distance, embed
    from runtime.manifest import Manifest
    from runtime.policy import EdgePolicy, delta_input
    from runtime.preprocess import StateNormalizer

    big, small, warm = reps_for(args.config, args.reps, args.smoke)
    m = Manifest.load(args.artifacts, verify_hashes=False)  # the parent verified the hashes once
    d = m.dims
    t0 = time.perf_counter()
    backend = OnnxRuntimeBackend(args.artifacts, m, intra_op_threads=args.threads)
    load_s = time.perf_counter() - t0
    mem_loaded = rss_mb()
    reset_peak_rss()
    data = np.load(args.inputs)
    images = np.ascontiguousarray(data["images"], dtype=np.float32)
    tokens, mask = data["lang_tokens"].astype(np.int64), data["lang_mask"].astype(bool)
    state = StateNormalizer(m.state_norm, d.max_state_dim)(data["state"][0])
    noise = data["noise"].astype(np.float32)
    n = d.num_steps

    def resample(with_delta: bool = True):
        st = {}
        t = time.perf_counter()
        pre = backend.run_prefix(images, tokens, mask, state)
        t1 = time.perf_counter()
        x = backend.denoise(noise, n, pre)
        t2 = time.perf_counter()
        if with_delta:
            plan = x[0]
            delta, _ = backend.run_delta_expert(delta_input(plan, d.chunk_size), pre)
            x = plan[None] + delta
        t3 = time.perf_counter()
        st.update(prefix=(t1 - t) * 1e3, denoise=(t2 - t1) * 1e3, delta=(t3 - t2) * 1e3, total=(t3 - t) * 1e3)
        return x, pre, st

    for _ in range(warm):
        resample()
    x_ref, pre, _ = resample(with_delta=False)  # same noise as lerobot → parity
    chunk = x_ref[0, :, : d.action_dim].tolist()
    x_full, _, _ = resample()  # full resample (with the delta step), same noise: the int8-vs-fp32 comparison
    chunk_resample = x_full[0, :, : d.action_dim].tolist()
    sec = big if args.config != "full" else max(2, big - 2)  # secondary full-size rows: fewer reps (time budget)
    prefix_ms = timed(lambda: backend.run_prefix(images, tokens, mask, state), sec)
    rng = np.random.default_rng(0)
    x_t = rng.standard_normal(m.plan_shape, dtype=np.float32)
    main_ms = timed(lambda: backend.run_main_expert(x_t, 0.5, pre), small, warmup=1)
    plan = x_ref[0]
    dinp = delta_input(plan[3:], d.chunk_size)  # a remaining plan after 3 executed actions
    delta_ms = timed(lambda: backend.run_delta_expert(dinp, pre), small, warmup=1)
    stages: dict[str, list[float]] = {"prefix": [], "denoise": [], "delta": [], "total": []}
    for _ in range(big):
        _, _, st = resample()
        for k, acc in stages.items():
            acc.append(st[k])
    plan_emb = embed(pre.obs_cls)

    def keep_drift():
        p = backend.run_prefix(images, tokens, mask, state)
        return cosine_distance(embed(p.obs_cls), plan_emb) > 1.0

    def keep_consistency():
        p = backend.run_prefix(images, tokens, mask, state)
        _, act_cls = backend.run_delta_expert(dinp, p)
        return cosine_distance(embed(p.obs_cls), embed(act_cls)) > 1.0

    drift_ms = timed(keep_drift, sec)
    cons_ms = timed(keep_consistency, sec)

    # EdgePolicy ticks on the same backend (whole chain: validation, preprocessing, gate, safety)
    obs = {cam: images[0, i] for i, cam in enumerate(m.camera_keys)}
    obs.update({m.state_key: data["state"][0].astype(np.float32), "task": INSTRUCTION})
    out_ticks = {}
    for gate, ticks in (("always", sec), ("never", (1 if args.smoke or args.config == "full" else 3) * d.n_action_steps)):
        pol = EdgePolicy(args.artifacts, backend=backend, gate=gate, seed=0, verify_hashes=False)
        pol.warmup(obs, runs=1)
        ms = []
        for _ in range(ticks):
            pol.step(obs)
            ms.append(pol.last_info.total_ms)
        out_ticks[gate] = {**summarize(ms), "ticks": ticks, "amortised_ms": float(np.mean(ms)),
                           "resamples": pol.counters.resamples}
    backend.close()
    return {
        "onnxruntime": ort.__version__, "providers": backend.providers, "intra_op_threads": args.threads,
        "graph_optimization_level": "ORT_ENABLE_ALL", "session_load_s": load_s,
        "prefix": summarize(prefix_ms), "main_step": summarize(main_ms), "delta": summarize(delta_ms),
        "resample": {k: summarize(v) for k, v in stages.items()},
        "resample_no_delta": summarize(np.asarray(stages["prefix"]) + np.asarray(stages["denoise"])),
        "gated_keep_drift": summarize(drift_ms), "gated_keep_consistency": summarize(cons_ms),
        "edge_reactive": out_ticks["always"], "edge_open_loop": out_ticks["never"],
        "chunk": chunk, "chunk_resample": chunk_resample, "obs_emb": embed(pre.obs_cls).tolist(),
        "quantization": m.raw.get("quantization"), "memory": {"after_load": mem_loaded, "end": rss_mb()},
    }


# ------------------------------------------------------------------------------------------ child: gates
class SimtaskAdapter:
    """simtask policy adapter: renames simtask's camera key to the artifact's and records TickInfos."""

    def __init__(self, policy, camera_key: str):
        self.policy, self.camera_key, self.infos = policy, camera_key, []

    def reset(self) -> None:
        self.policy.reset()

    def act(self, obs: dict) -> np.ndarray:
        from simtask import IMAGE_KEY

        if self.camera_key not in obs:
            obs = {**obs, self.camera_key: obs[IMAGE_KEY]}
        a = self.policy.step(obs)
        self.infos.append(self.policy.last_info)
        return a


def child_gates(args) -> dict:
    from runtime.backend_onnxruntime import OnnxRuntimeBackend
    from runtime.manifest import Manifest
    from runtime.policy import EdgePolicy
    from simtask import IMAGE_KEY, ReachEnv, TaskConfig, evaluate_policy

    m = Manifest.load(args.artifacts, verify_hashes=False)
    backend = OnnxRuntimeBackend(args.artifacts, m, intra_op_threads=args.threads)
    cam = m.camera_keys[0]
    cfg = TaskConfig(image_size=m.image.height)
    warm_obs = ReachEnv(cfg).reset(seed=2**31 - 1)
    warm_obs = {**warm_obs, cam: warm_obs[IMAGE_KEY]}
    out = {}
    for gate in GATES:
        pol = EdgePolicy(args.artifacts, backend=backend, gate=gate, seed=0, verify_hashes=False)
        pol.warmup(warm_obs, runs=2)
        rec = SimtaskAdapter(pol, cam)
        rep = evaluate_policy(rec, n_episodes=args.episodes, seed=0, perturb=True, config=cfg)
        ms = [i.total_ms for i in rec.infos]
        c = pol.counters
        eps = args.episodes
        out[gate] = {"spec": pol.gate.spec, "ticks": len(ms), "mean_ms_per_tick": float(np.mean(ms)),
                     "median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
                     "resamples_per_episode": c.resamples / eps, "prefix_passes_per_episode": c.prefix_passes / eps,
                     "delta_passes_per_episode": c.delta_passes / eps, "success_rate": rep.success_rate,
                     "threshold": pol.gate.threshold if hasattr(pol.gate, "threshold") else None}
    backend.close()
    return {"episodes": args.episodes, "perturb": True, "artifacts": str(args.artifacts),
            "weights": m.raw.get("model", {}).get("source"), "gates": out, "memory": rss_mb()}


# --------------------------------------------------------------------------------------- child: quantize
def child_quantize(args) -> dict:
    from export.quantization import quantize_artifacts

    t0 = time.perf_counter()
    manifest = quantize_artifacts(Path(args.source), Path(args.artifacts), progress=False)
    write_int8_stamp(Path(args.artifacts), Path(args.source))
    return {"quantize_s": time.perf_counter() - t0, "options": {k: manifest["quantization"][k] for k in
                                                                ("weight_type", "per_channel", "ops", "exclude")},
            "memory": rss_mb()}


CHILDREN = {"export": child_export, "lerobot": child_lerobot, "ort": child_ort, "gates": child_gates,
            "quantize": child_quantize}


# ---------------------------------------------------------------------------------------------- parent
def run_child(kind: str, config: str, result: Path, args, extra: list[str] | None = None, timeout: float = 900) -> dict:
    cmd = [sys.executable, "-m", "scripts.bench", "--child", kind, "--config", config, "--result", str(result),
           "--threads", str(args.threads), *(extra or [])]
    if args.reps:
        cmd += ["--reps", str(args.reps)]
    if args.smoke:
        cmd.append("--smoke")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not result.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).replace("\r", "\n").splitlines()[-25:])
        raise RuntimeError(f"bench child '{kind}' ({config}) failed with rc {proc.returncode}:\n{tail}")
    out = json.loads(result.read_text())
    out["wall_s"] = wall
    return out


def make_inputs(artifacts: Path, path: Path, seed: int = 0) -> None:
    from runtime.manifest import Manifest
    from runtime.tokenizer import InstructionTokenizer

    m = Manifest.load(artifacts, verify_hashes=False)
    d = m.dims
    rng = np.random.default_rng(seed)
    tokens, mask = InstructionTokenizer(m.tokenizer_path, m.tokenizer).encode(INSTRUCTION)
    lo, hi = m.state_bounds.low, m.state_bounds.high
    np.savez(path,
             images=rng.uniform(0, 1, (1, len(m.cameras), 3, m.image.height, m.image.width)).astype(np.float32),
             lang_tokens=np.asarray(tokens, dtype=np.int64).reshape(1, -1),
             lang_mask=np.asarray(mask, dtype=bool).reshape(1, -1),
             state=(lo + (hi - lo) * rng.uniform(0.25, 0.75, d.state_dim)).astype(np.float32)[None],
             noise=rng.standard_normal(m.plan_shape).astype(np.float32))


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
    return [(f"int8 (`{res['artifacts_int8']}`, export.quantization: {q.get('mode')}, weights {q.get('weights')}, "
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
                      "descheduled, so this ratio overstates the speedup; see docs/bench.md for a single-thread "
                      "(CPU-time) comparison."), ""]
    lines += ["![latency breakdown](latency_breakdown.png)", ""]
    return "\n".join(lines)


def _kept(total: float, prefix: float, delta: float) -> dict[str, float]:
    """Stack a kept tick's measured total as prefix [+ delta] + rest, scaled down if the separately measured
    stage medians exceed the total (they come from other repetitions)."""
    scale = min(1.0, total / max(prefix + delta, 1e-9))
    return {"prefix": prefix * scale, "delta": delta * scale, "gate/other": max(0.0, total - (prefix + delta) * scale)}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfgs = list(report["configs"])
    fig, axes = plt.subplots(1, len(cfgs), figsize=(6.5 * len(cfgs), 4.8), squeeze=False)
    colors = {"prefix": "#4c72b0", "denoise loop": "#dd8452", "delta": "#55a868", "gate/other": "#8c8c8c"}
    for ax, cfg in zip(axes[0], cfgs, strict=True):
        lr, o = report["configs"][cfg]["lerobot"], report["configs"][cfg]["ort"]
        bars = {
            "LeRobot eager\npredict_action_chunk": {"prefix": lr["prefix"]["median_ms"],
                                                   "denoise loop": lr["denoise_loop"]["median_ms"]},
            "ours ORT\nfull resample": {"prefix": o["resample"]["prefix"]["median_ms"],
                                        "denoise loop": o["resample"]["denoise"]["median_ms"],
                                        "delta": o["resample"]["delta"]["median_ms"]},
            **({"ours ORT int8\nfull resample": {"prefix": o8["resample"]["prefix"]["median_ms"],
                                                "denoise loop": o8["resample"]["denoise"]["median_ms"],
                                                "delta": o8["resample"]["delta"]["median_ms"]}}
               if (o8 := report["configs"][cfg].get("ort_int8")) else {}),
            "ours ORT\nkept tick (drift)": _kept(o["gated_keep_drift"]["median_ms"], o["prefix"]["median_ms"], 0.0),
            "ours ORT\nkept tick (consist.)": _kept(o["gated_keep_consistency"]["median_ms"], o["prefix"]["median_ms"],
                                                    o["delta"]["median_ms"]),
        }
        x = np.arange(len(bars))
        bottom = np.zeros(len(bars))
        for stage, color in colors.items():
            vals = np.array([b.get(stage, 0.0) for b in bars.values()])
            ax.bar(x, vals, bottom=bottom, color=color, label=stage, width=0.6)
            bottom += vals
        for xi, top in zip(x, bottom, strict=True):
            ax.text(xi, top, f"{top:.0f} ms" if top >= 10 else f"{top:.2f} ms", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, list(bars), fontsize=8)
        ax.set_ylabel("median ms")
        ax.set_title(f"{cfg}: latency per stage (CPU)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    p = argparse.ArgumentParser(prog="python -m scripts.bench", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("reports/bench"))
    p.add_argument("--configs", default="tiny,full", help="comma list of presets: tiny, full")
    p.add_argument("--reps", type=int, default=None,
                   help="repetitions of chunk-sized work (default tiny 30, full 5; single expert steps get 4× (≥20))")
    p.add_argument("--smoke", action="store_true", help="CI: tiny only, 2 reps, no full export (< 60 s)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra_op_num_threads (0 = ORT default)")
    p.add_argument("--episodes", type=int, default=10, help="simtask episodes per gate (tiny)")
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
        _write(args.result, CHILDREN[args.child](args))
        return 0

    started = time.perf_counter()
    configs = ["tiny"] if args.smoke else [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in configs if c not in CONFIGS]
    if bad:
        p.error(f"--configs: unknown {bad}; expected a subset of {list(CONFIGS)}")
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
        row = next(r for r in report["configs"]["full"]["rows"] if r["metric"].startswith("full resample:"))
        met = row["speedup"] is not None and row["speedup"] >= TARGET_SPEEDUP
        report["target"] = {"speedup_full_resample_vs_lerobot_chunk": row["speedup"], "required": TARGET_SPEEDUP,
                            "met": met,
                            "text": (f"Full-size full resample (prefix + N steps + delta) with onnxruntime CPU vs LeRobot "
                                     f"eager predict_action_chunk on the same machine: {row['speedup']:.2f}× faster "
                                     f"(target ≥ {TARGET_SPEEDUP:.0f}×: {'met' if met else 'NOT met'}).")}
        if row.get("int8_speedup") is not None:
            met8 = row["int8_speedup"] >= TARGET_SPEEDUP
            acc = report["configs"]["full"]["int8_accuracy"]
            report["target"].update(
                speedup_int8_full_resample_vs_lerobot_chunk=row["int8_speedup"], met_int8=met8,
                text=report["target"]["text"] + (
                    f" With int8 dynamic quantization (onnxruntime CPU): {row['int8_speedup']:.2f}× "
                    f"(target: {'met' if met8 else 'NOT met'}), at an accuracy cost of max |Δ chunk| "
                    f"{acc['resample_max_abs']:.2e} (mean {acc['resample_mean_abs']:.2e}) normalised action units "
                    f"vs fp32."))
    (out / "bench.json").write_text(json.dumps(report, indent=1, default=float))
    plot(report, out / "latency_breakdown.png")
    (out / "bench.md").write_text(render_markdown(report))
    for f in out.glob(".*.json"):
        f.unlink()
    print(render_markdown(report))
    print(f"[bench] wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'latency_breakdown.png'} "
          f"in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
