"""ORT-vs-PyTorch parity (Polygraphy-style: two runners, one comparator).

Per graph: fresh random inputs, onnxruntime CPU vs the PyTorch wrapper in fp32 — every output within
max |Δ| ≤ 1e-4 and cosine ≥ 0.99999 (bool outputs exactly equal). Whole chunk: prefix → N main-expert
Euler steps → one delta step from the same initial noise, compared in action units (≤ 1e-3), plus the
obs-CLS and act-CLS embeddings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from export.graphs.graph_wrappers import (
    DeltaExpertGraph,
    MainExpertGraph,
    PlanEncoderGraph,
    PrefixGraph,
    example_inputs,
)
from runtime.manifest import GRAPH_NAMES

GRAPH_ATOL, GRAPH_COSINE, CHUNK_ATOL = 1e-4, 0.99999, 1e-3


@dataclass
class Comparison:
    what: str
    max_abs: float
    cosine: float
    ok: bool


def compare(what: str, got: np.ndarray, want: np.ndarray, atol: float, min_cos: float) -> Comparison:
    if got.shape != want.shape:
        return Comparison(what, float("inf"), 0.0, False)
    if want.dtype == np.bool_:
        same = bool(np.array_equal(got, want))
        return Comparison(what, 0.0 if same else 1.0, 1.0 if same else 0.0, same)
    g, w = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    max_abs = float(np.abs(g - w).max()) if g.size else 0.0
    denom = np.linalg.norm(g) * np.linalg.norm(w)
    cosine = float(g @ w / denom) if denom > 0 else (1.0 if max_abs == 0 else 0.0)
    ok = bool(np.isfinite(g).all() and max_abs <= atol and cosine >= min_cos)
    return Comparison(what, max_abs, cosine, ok)


class GraphLoadError(ValueError):
    """A graph of the folder does not load in onnxruntime; the message names the file."""


class OrtRunner:
    """The four graphs in onnxruntime (CPU, fp32 — the reference TensorRT is compared against too)."""

    def __init__(self, artifacts: Path):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.sessions = {}
        for n in GRAPH_NAMES:
            path = Path(artifacts) / f"{n}.onnx"
            try:
                self.sessions[n] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            except Exception as exc:  # noqa: BLE001 — onnxruntime's errors share no base class but Exception
                raise GraphLoadError(f"{path.name} does not load in onnxruntime ({str(exc).strip()[:200]})") from None

    def run(self, graph: str, inputs: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        sess = self.sessions[graph]
        return sess.run(None, {i.name: x for i, x in zip(sess.get_inputs(), inputs, strict=True)})


class TorchRunner:
    def __init__(self, model):
        self.mods = {"prefix": PrefixGraph(model).eval(), "main_expert": MainExpertGraph(model).eval(),
                     "delta_expert": DeltaExpertGraph(model).eval(), "plan_encoder": PlanEncoderGraph(model).eval()}

    @torch.no_grad()
    def run(self, graph: str, inputs: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        out = self.mods[graph](*(torch.from_numpy(np.ascontiguousarray(x)) for x in inputs))
        return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


def _np(inputs) -> tuple[np.ndarray, ...]:
    return tuple(x.numpy() for x in inputs)


def graph_parity(model, artifacts: Path, trials: int = 2, seed: int | None = None) -> list[Comparison]:
    """Each graph alone on `trials` fresh random inputs (at least 1: zero trials would compare nothing)."""
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    seed = int(time.time_ns() % 2**31) if seed is None else seed
    ort_r, torch_r = OrtRunner(artifacts), TorchRunner(model)
    names = {"prefix": ("prefix_k", "prefix_v", "prefix_pad", "obs_cls"), "main_expert": ("v_t",),
             "delta_expert": ("delta", "act_cls"), "plan_encoder": ("act_cls",)}
    results = []
    n_cams = len(model.config.image_features)
    for trial in range(trials):
        g = torch.Generator().manual_seed(seed + trial)
        lang_valid = int(torch.randint(1, model.config.tokenizer_max_length + 1, (1,), generator=g))
        # trial 0's plan remainder is always partial: a full plan cannot show padding rows leaking into act_cls
        inputs = example_inputs(model, n_cams, g, lang_valid=lang_valid, partial_plan=trial == 0)
        for graph, outs in names.items():
            a, b = ort_r.run(graph, _np(inputs[graph])), torch_r.run(graph, _np(inputs[graph]))
            for name, x, y in zip(outs, a, b, strict=True):
                results.append(compare(f"{graph}.{name}#{trial}", x, y, GRAPH_ATOL, GRAPH_COSINE))
    return results


def chunk(runner, inputs, noise: np.ndarray, num_steps: int):
    """prefix -> Euler loop -> delta step -> plan encoder on the refined chunk;
    returns (normalised chunk, obs_cls, the delta expert's act_cls, the plan encoder's act_cls)."""
    k, v, pad, obs_cls = runner.run("prefix", inputs)
    x, dt = noise.astype(np.float32), -1.0 / num_steps
    for i in range(num_steps):
        t = np.array([1.0 + i * dt], dtype=np.float32)
        x = (x + dt * runner.run("main_expert", (x, t, k, v, pad))[0]).astype(np.float32)
    delta, act_cls = runner.run("delta_expert", (x, k, v, pad))
    plan = (x + delta).astype(np.float32)
    (plan_cls,) = runner.run("plan_encoder", (plan, np.ones(plan.shape[:2], dtype=bool)))
    return plan, obs_cls, act_cls, plan_cls


def chunk_parity(model, artifacts: Path, action_std: np.ndarray, seed: int | None = None) -> list[Comparison]:
    seed = int(time.time_ns() % 2**31) if seed is None else seed
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    inputs = _np(example_inputs(model, len(cfg.image_features), g, lang_valid=max(1, cfg.tokenizer_max_length // 2))["prefix"])
    noise = torch.randn(1, cfg.chunk_size, cfg.max_action_dim, generator=g).numpy()
    a = chunk(OrtRunner(artifacts), inputs, noise, cfg.num_steps)
    b = chunk(TorchRunner(model), inputs, noise, cfg.num_steps)
    dim = len(action_std)
    units = lambda x: x[..., :dim] * action_std  # normalised -> action units (std, or half the min_max span)
    return [compare("chunk.actions[action units]", units(a[0]), units(b[0]), CHUNK_ATOL, 0.9999),
            compare("chunk.obs_cls", a[1], b[1], GRAPH_ATOL, GRAPH_COSINE),
            compare("chunk.act_cls", a[2], b[2], CHUNK_ATOL, 0.9999),
            compare("chunk.plan_encoder.act_cls", a[3], b[3], CHUNK_ATOL, 0.9999)]


def run_parity(model, artifacts: Path, action_std: np.ndarray, trials: int = 2, seed: int | None = None) -> dict:
    results = graph_parity(model, artifacts, trials, seed) + chunk_parity(model, artifacts, action_std, seed)
    return {"ok": all(r.ok for r in results), "results": [asdict(r) for r in results]}


def folder_problem(artifacts: Path) -> str | None:
    """Why `artifacts` is not an intact fp32 export parity can compare (hashes, digest, a derived int8 / fp16
    folder), or None. Parity of a folder whose files differ from its manifest would vouch for graphs the runtime
    refuses; a derived (int8, fp16/bf16) folder is not meant to meet PyTorch fp32's 1e-4."""
    from export.derived_artifacts import derivation_of
    from runtime.manifest import Manifest, ManifestError

    try:
        manifest = Manifest.load(artifacts, verify_hashes=True)
    except ManifestError as exc:
        return f"is not an intact artifact folder: {exc}"
    derived = derivation_of(manifest.raw)
    if derived:
        key, record = derived
        return (f"is a derived folder ({key}: {record.get('mode', '?')}), not an fp32 export: parity holds graphs to "
                f"PyTorch fp32 within {GRAPH_ATOL:g}; run it on the fp32 export it came from ({record.get('source', '?')})")
    return None


def artifact_mismatch(model, artifacts: Path) -> str | None:
    """Why the folder's graphs cannot have been exported from `model` (another checkpoint's shapes, CLS counts or
    a missing graph), or None; compared before any graph runs, so parity names it instead of an onnxruntime error."""
    try:
        manifest = json.loads((Path(artifacts) / "manifest.json").read_text())
        graphs, dims = manifest["graphs"], manifest["dims"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        return f"{artifacts}/manifest.json is unreadable ({exc})"
    cfg = model.config
    for key, want in (("num_cls_prefix", model.num_prefix_cls), ("num_cls_suffix", model.num_suffix_cls),
                      ("n_action_steps", cfg.n_action_steps), ("num_steps", cfg.num_steps),
                      ("action_dim", cfg.action_feature.shape[0]), ("state_dim", cfg.robot_state_feature.shape[0])):
        if dims.get(key) != want:
            return f"{key} is {dims.get(key)} in the folder, {want} in the checkpoint"
    inputs = example_inputs(model, len(cfg.image_features), torch.Generator().manual_seed(0))
    for graph in GRAPH_NAMES:
        if not isinstance(graphs.get(graph), dict) or not (Path(artifacts) / f"{graph}.onnx").is_file():
            return f"the folder has no {graph} graph (an older export?)"
        for spec, x in zip(graphs[graph].get("inputs", []), inputs[graph], strict=False):
            if list(spec.get("shape", [])) != list(x.shape):
                return (f"{graph} input '{spec.get('name')}' is {spec.get('shape')} in the folder, {list(x.shape)} "
                        "for the checkpoint")
    return None


def _argument_problem(args: argparse.Namespace) -> str | None:
    """One line naming the flag when --trials or --json cannot work, else None."""
    if args.trials < 1:
        return f"--trials must be at least 1, got {args.trials} (with none no graph would be compared)"
    if args.json is not None:
        if args.json.is_dir():
            return f"--json {args.json} is a folder; give a file path, e.g. {args.json / 'parity.json'}"
        blocker = next((p for p in args.json.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return f"--json {args.json}: {blocker} is a file, not a folder; choose another path for --json"
    return None


def main(argv: list[str] | None = None) -> int:
    from export.graphs.checkpoint_loading import ExportInputError, load_checkpoint, load_preset

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=Path)
    src.add_argument("--preset")
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts/onnx"))
    parser.add_argument("--trials", type=int, default=2, help="random-input trials per graph (at least 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report to this file")
    args = parser.parse_args(argv)
    from export.graphs.normalization import Normalizer

    problem = _argument_problem(args)  # before the model load and the whole run
    if problem:
        print(f"parity: {problem}", file=sys.stderr)
        return 2
    try:
        loaded = load_preset(args.preset) if args.preset else load_checkpoint(
            args.checkpoint or Path("outputs/train/default/checkpoints/last/pretrained_model"))
        action_scale = Normalizer.of(loaded).action_scale  # raw units per normalised unit, per the action's mode
    except ExportInputError as exc:
        print(f"parity: {exc}", file=sys.stderr)
        return 2
    if not (args.artifacts / "manifest.json").is_file():
        print(f"parity: {args.artifacts}/manifest.json is missing (run `make export`)", file=sys.stderr)
        return 2
    mismatch = artifact_mismatch(loaded.policy.model, args.artifacts)
    if mismatch:
        print(f"parity: {args.artifacts} was not exported from {loaded.source}: {mismatch}; export it from this "
              "checkpoint (`make export CHECKPOINT=...`) or pass the checkpoint it came from", file=sys.stderr)
        return 2
    problem = folder_problem(args.artifacts)
    if problem:
        print(f"parity: --artifacts {args.artifacts} {problem}", file=sys.stderr)
        return 2
    try:
        report = run_parity(loaded.policy.model, args.artifacts, action_scale, args.trials)
    except GraphLoadError as exc:
        print(f"parity: --artifacts {args.artifacts}: {exc}", file=sys.stderr)
        return 2
    print(f"{'comparison':42s} {'max|Δ|':>10s} {'cosine':>10s}  ok")
    for r in report["results"]:
        print(f"{r['what']:42s} {r['max_abs']:10.2e} {r['cosine']:10.7f}  {'yes' if r['ok'] else 'NO'}")
    print("parity:", "PASS" if report["ok"] else "FAIL")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
