"""Accuracy gate for built engines: TensorRT vs onnxruntime-CPU fp32 on fresh random inputs.

    python -m export.engine_accuracy --artifacts artifacts/onnx --engines artifacts/engines [--trials 3]

Checks each engine in isolation (the experts get the *reference* K/V, so their error is their own) and one
whole chunk (TensorRT prefix → device Euler loop vs the onnxruntime chain, same noise). onnxruntime on the
CPU is the reference because its CUDA provider uses TF32. Gates (cosine similarity):
fp32 ≥ 0.9999 everywhere; fp16/bf16 ≥ 0.999 per engine output, ≥ 0.99 on the action chunk.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.engine_plan import GRAPHS

CHUNK = "chunk"
PROG = "engine accuracy"


@dataclass(frozen=True)
class Gate:
    """Minimum cosine similarity for one engine's outputs and for the whole chunk."""

    per_engine: float
    chunk: float


GATES = {"fp32": Gate(0.9999, 0.9999), "fp16": Gate(0.999, 0.99), "bf16": Gate(0.999, 0.99)}


@dataclass(frozen=True)
class Comparison:
    """One compared tensor: where it comes from, its cosine, its max abs error, and the gate it must meet."""

    graph: str
    tensor: str
    cosine: float
    max_abs: float
    gate: float

    @property
    def passed(self) -> bool:
        return self.cosine >= self.gate


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two tensors, flattened in float64; two all-zero tensors count as identical."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0.0 and ny == 0.0:
        return 1.0
    if nx == 0.0 or ny == 0.0:
        return 0.0
    return float(np.dot(x, y) / (nx * ny))


def compare(graph: str, tensor: str, got: np.ndarray, ref: np.ndarray, precision: str) -> Comparison:
    """Compare one output; bool tensors (prefix_pad) must match exactly (cosine 1 or 0)."""
    gate = GATES[precision]
    limit = gate.chunk if graph == CHUNK else gate.per_engine
    if ref.dtype == np.bool_:
        same = bool(np.array_equal(got.astype(bool), ref))
        return Comparison(graph, tensor, 1.0 if same else 0.0, 0.0 if same else 1.0, limit)
    diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
    return Comparison(graph, tensor, cosine(got, ref), diff, limit)


def report(rows: list[Comparison]) -> str:
    """A fixed-width table, worst cosine per (graph, tensor) over all trials."""
    worst: dict[tuple[str, str], Comparison] = {}
    for row in rows:
        key = (row.graph, row.tensor)
        if key not in worst or row.cosine < worst[key].cosine:
            worst[key] = row
    lines = [f"{'graph':<14}{'tensor':<12}{'cosine':>12}{'max |err|':>12}{'gate':>10}  result"]
    for row in worst.values():
        verdict = "ok" if row.passed else "FAIL"
        lines.append(
            f"{row.graph:<14}{row.tensor:<12}{row.cosine:>12.6f}{row.max_abs:>12.3e}{row.gate:>10.4f}  {verdict}"
        )
    return "\n".join(lines)


def vocab_size(artifacts: Path, manifest: dict[str, Any]) -> int:
    """Token ids the artifact's tokenizer can produce (1 + its largest id); 1000 when it records none."""
    path = artifacts / manifest.get("tokenizer", {}).get("file", "tokenizer.json")
    try:
        tok = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return 1000
    vocab = tok.get("model", {}).get("vocab", {})
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
    ids += [a.get("id", 0) for a in tok.get("added_tokens", [])]
    return max(ids, default=999) + 1


def random_inputs(manifest: dict[str, Any], rng: np.random.Generator, vocab: int = 1000) -> dict[str, np.ndarray]:
    """Fresh prefix inputs with the manifest's shapes: images in [0,1], a left-aligned language mask,
    token ids below `vocab` (pass `vocab_size(...)`: a tiny model's embedding table is small)."""
    specs = {s["name"]: s for s in manifest["graphs"]["prefix"]["inputs"]}
    images = rng.random(specs["images"]["shape"], dtype=np.float32)
    lang_shape = specs["lang_tokens"]["shape"]
    length = lang_shape[-1]
    real = int(rng.integers(1, length + 1))
    tokens = np.zeros(lang_shape, dtype=np.int64)
    tokens[..., :real] = rng.integers(1, max(vocab, 2), size=real)
    mask = np.zeros(lang_shape, dtype=np.bool_)
    mask[..., :real] = True
    state = rng.standard_normal(specs["state"]["shape"]).astype(np.float32)
    return {"images": images, "lang_tokens": tokens, "lang_mask": mask, "state": state}


def euler_chunk(num_steps: int, kv: dict[str, np.ndarray], noise: np.ndarray,
                run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]) -> np.ndarray:
    """The chunk from `noise` after the main expert's Euler loop (t = 1 → 0); `run(feeds) -> outputs` is one
    main-expert call (onnxruntime session, instrumented session, ...), `kv` the prefix K/V/pad it reads."""
    x = noise
    for i in range(num_steps):
        v = run({"x_t": x, "t": np.array([1.0 - i / num_steps], np.float32), **kv})["v_t"]
        x = (x - np.float32(1.0 / num_steps) * v).astype(np.float32)
    return x


class _Reference:
    """The three ONNX graphs on onnxruntime CPU, fp32 (the ground truth)."""

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.engine_accuracy", description="TensorRT vs onnxruntime gate")
    p.add_argument("--artifacts", type=Path, default=Path("artifacts/onnx"))
    p.add_argument("--engines", type=Path, default=Path("artifacts/engines"))
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from runtime.trt_env import tensorrt_missing_reason

    reason = tensorrt_missing_reason()
    if reason:
        print(f"{PROG}: {reason} — run this check on the device that built the engines", file=sys.stderr)
        return 3
    rows, precision = check(args.artifacts, args.engines, args.trials, args.seed)
    print(f"precision {precision}, {args.trials} trial(s), worst case per tensor:")
    print(report(rows))
    failed = [r for r in rows if not r.passed]
    print("PASS" if not failed else f"FAIL: {len(failed)} comparison(s) under the gate")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
