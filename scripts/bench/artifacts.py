"""The folders and inputs both sides measure: the export/int8 children, the stamps that let a folder be
reused, and the shared input file (images, tokens, state, noise)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from scripts.bench import ROOT
from scripts.bench.measure import rss_mb

INSTRUCTION = "reach the red disc"


# The code that decides what a preset's weights and graphs are: a cached export is reused only when these
# files (and the torch/lerobot versions) are unchanged since it was written.
_STAMP_SOURCES = ("smolvla_cls/presets.py", "smolvla_cls/configuration_smolvla_cls.py",
                  "smolvla_cls/modeling_smolvla_cls.py", "smolvla_cls/attention.py", "smolvla_cls/masks.py",
                  "export/graphs/checkpoint_loading.py", "export/graphs/graph_wrappers.py",
                  "export/graphs/onnx_export.py", "export/graphs/gate_calibration.py", "export/graphs/onnx_checks.py",
                  "export/graphs/tensorrt_rewrites.py", "export/graphs/normalization.py",
                  "export/graphs/export_checks.py")


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
            "code": code_stamp(("export/int8/quantization.py", "export/int8/graph_optimization.py"), ("onnxruntime",))}


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


def child_export(args) -> dict:
    from export.graphs.checkpoint_loading import load_preset
    from export.graphs.onnx_export import export_artifacts

    t0 = time.perf_counter()
    loaded = load_preset(args.config, seed=0)
    build_s = time.perf_counter() - t0
    calibrate = args.config == "tiny" and args.calib_episodes > 0
    manifest = export_artifacts(loaded, Path(args.artifacts), calibrate=calibrate,
                                calib_episodes=max(1, args.calib_episodes), progress=False)
    write_stamp(Path(args.artifacts), calibrate)
    return {"build_s": build_s, "export_s": time.perf_counter() - t0 - build_s,
            "manifest_export_s": manifest["export_seconds"], "memory": rss_mb()}


def child_quantize(args) -> dict:
    from export.int8.quantization import quantize_artifacts

    t0 = time.perf_counter()
    manifest = quantize_artifacts(Path(args.source), Path(args.artifacts), progress=False)
    write_int8_stamp(Path(args.artifacts), Path(args.source))
    return {"quantize_s": time.perf_counter() - t0, "options": {k: manifest["quantization"][k] for k in
                                                                ("weight_type", "per_channel", "ops", "exclude")},
            "memory": rss_mb()}


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
