"""Accuracy gate for built engines: TensorRT vs onnxruntime-CPU fp32 on fresh random inputs.

    python -m export.trt.engine_accuracy --artifacts artifacts/onnx --engines artifacts/engines [--trials 3]

Checks each engine in isolation (the experts get the *reference* K/V, so their error is their own) and one
whole chunk (TensorRT prefix → device Euler loop vs the onnxruntime chain, same noise). onnxruntime on the
CPU is the reference because its CUDA provider uses TF32. Gates (cosine similarity):
fp32 ≥ 0.9999 everywhere; fp16/bf16 ≥ 0.999 per engine output, ≥ 0.99 on the action chunk.
Exit 0 pass, 1 under a gate; one line on stderr and 2 for bad arguments or engines that do not fit these
artifacts / this GPU / this TensorRT, 3 when TensorRT or the GPU is unusable here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from export.accuracy_gates import CHUNK, Comparison, compare, euler_chunk, random_inputs, report, vocab_size
from export.trt.engine_plan import GRAPHS

PROG = "engine accuracy"


class _Reference:
    """The four ONNX graphs on onnxruntime CPU, fp32 (the ground truth)."""

    def __init__(self, artifacts: Path, manifest: dict[str, Any]) -> None:
        import onnxruntime as ort

        self._sessions = {
            g: ort.InferenceSession(str(artifacts / manifest["graphs"][g]["file"]), providers=["CPUExecutionProvider"])
            for g in GRAPHS
        }

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._sessions[graph]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds)))


def reference_folder(artifacts: Path, manifest: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The fp32 truth for these engines: a mixed-precision folder is judged against the export it was lowered
    from (when that folder is still there and unchanged), not against its own fp16/bf16 graphs."""
    from runtime.fingerprint import sha256_file

    lowered = manifest.get("mixed_precision")
    if not isinstance(lowered, dict) or not lowered.get("source"):
        return artifacts, manifest
    src = Path(lowered["source"])
    if not src.is_absolute() and not src.exists():
        src = artifacts.parent / src.name
    if not (src / "manifest.json").is_file() or sha256_file(src / "manifest.json") != lowered.get("source_manifest_sha256"):
        raise FileNotFoundError(f"{artifacts} is {lowered.get('precision')} mixed precision; its fp32 source "
                                f"{lowered['source']} (the accuracy reference) is missing or changed — re-run "
                                "`make mixed-precision` from the current export")
    return src, json.loads((src / "manifest.json").read_text(encoding="utf-8"))


def check(artifacts: Path, engines: Path, trials: int, seed: int) -> tuple[list[Comparison], str]:
    """Run every comparison (needs TensorRT + a GPU); returns the rows and the engines' precision."""
    from runtime.backend_tensorrt import TensorRTBackend
    from runtime.fingerprint import EngineFingerprint

    manifest = json.loads((artifacts / "manifest.json").read_text(encoding="utf-8"))
    precisions = {EngineFingerprint.read(engines / f"{g}.fingerprint.json").precision for g in GRAPHS}
    precision = "fp32" if precisions == {"fp32"} else ("bf16" if "bf16" in precisions else "fp16")
    dims = manifest["dims"]
    shape = (1, dims["chunk_size"], dims["max_action_dim"])
    steps, action_dim = int(dims["num_steps"]), int(dims["action_dim"])
    ref = _Reference(*reference_folder(artifacts, manifest))
    backend = TensorRTBackend(artifacts, engines, manifest=manifest)
    rng = np.random.default_rng(seed)
    vocab = vocab_size(artifacts, manifest)
    rows: list[Comparison] = []
    try:
        for _ in range(trials):
            feeds = random_inputs(manifest, rng, vocab)
            expected = ref.run("prefix", feeds)
            prefix = backend.run_prefix(feeds["images"], feeds["lang_tokens"], feeds["lang_mask"], feeds["state"])
            rows.append(compare("prefix", "obs_cls", prefix.obs_cls, expected["obs_cls"], precision))
            for name in ("prefix_k", "prefix_v", "prefix_pad"):
                rows.append(compare("prefix", name, backend.read_tensor(name), expected[name], precision))

            # Experts in isolation: both sides read the reference K/V.
            kv = {n: expected[n] for n in ("prefix_k", "prefix_v", "prefix_pad")}
            for name, value in kv.items():
                backend.write_tensor(name, value)
            x = rng.standard_normal(shape).astype(np.float32)
            t = float(rng.uniform(0.05, 1.0))
            v_ref = ref.run("main_expert", {"x_t": x, "t": np.array([t], np.float32), **kv})["v_t"]
            rows.append(compare("main_expert", "v_t", backend.run_main_expert(x, t, prefix), v_ref, precision))
            plan = rng.standard_normal(shape).astype(np.float32)
            d_ref = ref.run("delta_expert", {"actions": plan, **kv})
            delta, act_cls = backend.run_delta_expert(plan, prefix)
            rows.append(compare("delta_expert", "delta", delta, d_ref["delta"], precision))
            rows.append(compare("delta_expert", "act_cls", act_cls, d_ref["act_cls"], precision))
            valid = np.arange(shape[1])[None] < rng.integers(1, shape[1] + 1)  # a remainder of the plan
            p_ref = ref.run("plan_encoder", {"plan": plan, "plan_valid": valid})
            rows.append(compare("plan_encoder", "act_cls", backend.run_plan_encoder(plan, valid), p_ref["act_cls"],
                                precision))

            # Whole chunk: TensorRT's own K/V and device loop vs the onnxruntime chain, same noise.
            prefix = backend.run_prefix(feeds["images"], feeds["lang_tokens"], feeds["lang_mask"], feeds["state"])
            noise = rng.standard_normal(shape).astype(np.float32)
            got = backend.denoise(noise, steps, prefix)
            x = euler_chunk(steps, kv, noise, lambda feeds: ref.run("main_expert", feeds))
            rows.append(compare(CHUNK, "actions", got[..., :action_dim], x[..., :action_dim], precision))
            # Again: from the second call on the loop replays a captured CUDA graph; it must agree too.
            again = backend.denoise(noise, steps, prefix)
            rows.append(compare(CHUNK, "replay", again[..., :action_dim], x[..., :action_dim], precision))
    finally:
        backend.close()
    return rows, precision


def argument_problem(artifacts: Path, engines: Path, trials: int) -> str | None:
    """One line naming the flag when an argument cannot work, else None — checked before TensorRT is looked
    for, so mistakes show on any machine, not only on the device."""
    if trials < 1:
        return f"--trials must be at least 1, got {trials} (with none nothing would be compared)"
    needs = (("--artifacts", artifacts, ["manifest.json"], "`make export`"),
             ("--engines", engines, [f"{g}.fingerprint.json" for g in GRAPHS], "`make engine`"))
    for flag, folder, files, how in needs:
        if not folder.exists():
            return f"{flag} {folder} does not exist (write it with {how})"
        if not folder.is_dir():
            return f"{flag} {folder} is not a folder"
        missing = next((f for f in files if not (folder / f).is_file()), None)
        if missing:
            return f"{flag} {folder} has no {missing}: not the folder {how} writes"
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.trt.engine_accuracy", description="TensorRT vs onnxruntime gate")
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/onnx"))
    p.add_argument("--engines", type=Path, default=Path("artifacts/engines"))
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    problem = argument_problem(args.artifacts, args.engines, args.trials)
    if problem:
        print(f"{PROG}: {problem}", file=sys.stderr)
        return 2

    from runtime.backend import BackendError
    from runtime.cuda_memory import CudaError
    from runtime.fingerprint import FingerprintError, FingerprintMismatch
    from runtime.trt_api import TensorRTApiError
    from runtime.trt_env import TensorRTUnavailable, tensorrt_missing_reason

    where = "run this check on the device that built the engines"
    reason = tensorrt_missing_reason()
    if reason:
        print(f"{PROG}: {reason} — {where}", file=sys.stderr)
        return 3
    try:
        rows, precision = check(args.artifacts, args.engines, args.trials, args.seed)
    except (TensorRTUnavailable, TensorRTApiError, CudaError) as exc:  # no GPU, an API member missing, CUDA failed
        print(f"{PROG}: {exc} — {where}", file=sys.stderr)
        return 3
    except (FingerprintError, FingerprintMismatch, BackendError, FileNotFoundError) as exc:  # engines not for these
        print(f"{PROG}: {exc}", file=sys.stderr)  # artifacts / this GPU / this TensorRT, or the fp32 source missing
        return 2
    print(f"precision {precision}, {args.trials} trial(s), worst case per tensor:")
    print(report(rows))
    failed = [r for r in rows if not r.passed]
    print("PASS" if not failed else f"FAIL: {len(failed)} comparison(s) under the gate")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
