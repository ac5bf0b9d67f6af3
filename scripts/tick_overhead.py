"""Measures EdgePolicy.step's own cost per tick: the work around the graphs (docs/06d-latency-experiments.md).

    OMP_NUM_THREADS=1 python -m scripts.tick_overhead --artifacts artifacts/onnx --camera 480x640 --image 512
    OMP_NUM_THREADS=1 python -m scripts.tick_overhead --artifacts artifacts/onnx --backend onnxruntime

`--backend instant` (default) swaps in a backend whose graphs return fixed, valid outputs at once, so what is
timed is only the runtime's own work (validation, preprocessing, gate, checks, safety): on a Jetson the graphs are
TensorRT engines and this share matters. `--image N` rewrites a copy of the folder's manifest to an N x N model
image (instant backend only: the graphs never see it), so a real camera's resize is timed too.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from runtime.artifact_identity import stamp_identity
from runtime.backend import Backend, PrefixState
from runtime.manifest import Manifest
from runtime.policy import EdgePolicy


class InstantBackend(Backend):
    """Fixed, finite outputs of the manifest's shapes; nothing is computed."""

    name = "instant"

    def __init__(self, m: Manifest):
        d, rng = m.dims, np.random.default_rng(0)
        self.obs_cls = rng.standard_normal((1, d.num_cls_prefix, d.cls_dim)).astype(np.float32)
        self.act_cls = rng.standard_normal((1, d.num_cls_suffix, d.cls_dim)).astype(np.float32)
        self.v = (rng.standard_normal(m.plan_shape) * 0.01).astype(np.float32)
        self.delta = np.zeros(m.plan_shape, np.float32)

    def run_prefix(self, images, lang_tokens, lang_mask, state):
        return PrefixState(obs_cls=self.obs_cls.copy(), handle=None)

    def run_main_expert(self, x_t, t, prefix):
        return self.v

    def run_delta_expert(self, actions, prefix):
        return self.delta, self.act_cls

    def run_plan_encoder(self, plan, plan_valid):
        return self.act_cls


def _resized_copy(folder: Path, side: int) -> Path:
    """A copy of `folder` whose manifest asks for a side x side model image (re-stamped, unsigned)."""
    tmp = Path(tempfile.mkdtemp(prefix="tick_overhead_"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    out = tmp / "art"
    shutil.copytree(folder, out)
    m = json.loads((out / "manifest.json").read_text())
    m["image_preprocess"]["height"] = m["image_preprocess"]["width"] = side
    for tensor in m["graphs"]["prefix"]["inputs"]:  # the graph I/O the manifest declares must agree with it
        if tensor["name"] == "images":
            tensor["shape"][-2:] = [side, side]
    stamp_identity(m)
    (out / "manifest.json").write_text(json.dumps(m, indent=2))
    return out


def measure(artifacts: Path, backend: str, gate: str, ticks: int, camera: tuple[int, int], scene_every: int) -> dict:
    """Per-tick wall time (µs) of `ticks` steps after 20 warm-up ticks; the scene changes every `scene_every`."""
    chosen: str | Backend = InstantBackend(Manifest.load(artifacts)) if backend == "instant" else backend
    policy = EdgePolicy(artifacts, backend=chosen, gate=gate, backend_options={"intra_op_threads": 1})
    m = policy.manifest
    rng = np.random.default_rng(0)
    scenes = [rng.integers(0, 256, (*camera, 3), dtype=np.uint8) for _ in range(4)]
    lo, hi = m.state_bounds.low, m.state_bounds.high
    obs = [{**{c: scenes[(i // scene_every) % 4] for c in m.camera_keys},
            m.state_key: (lo + (hi - lo) * (0.4 + 0.2 * (i % 7) / 7)).astype(np.float32), "task": "reach the red target"}
           for i in range(ticks)]
    for o in obs[:20]:
        policy.step(o)
    policy.reset()
    warm = policy.counters.resamples
    times = np.empty(ticks)
    for i, o in enumerate(obs):
        t0 = time.perf_counter()
        policy.step(o)
        times[i] = time.perf_counter() - t0
    times *= 1e6
    return {"gate": gate, "median_us": round(float(np.median(times)), 1),
            "p99_us": round(float(np.percentile(times, 99)), 1), "resamples": policy.counters.resamples - warm}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifacts", type=Path, required=True)
    ap.add_argument("--backend", choices=("instant", "onnxruntime"), default="instant")
    ap.add_argument("--gates", default="default,always,never")
    ap.add_argument("--ticks", type=int, default=2000)
    ap.add_argument("--camera", default="64x64", help="HxW of the uint8 camera frames")
    ap.add_argument("--image", type=int, default=None, help="model image side (instant backend only)")
    ap.add_argument("--scene-every", type=int, default=7, help="ticks between scene changes (gates react)")
    a = ap.parse_args()
    if a.image is not None and a.backend != "instant":
        ap.error("--image rewrites the manifest: the onnxruntime graphs would refuse it; use --backend instant")
    folder = _resized_copy(a.artifacts, a.image) if a.image else a.artifacts
    camera = tuple(int(v) for v in a.camera.lower().split("x"))
    for gate in a.gates.split(","):
        print(json.dumps({"backend": a.backend, "camera": a.camera, "image": a.image,
                          **measure(folder, a.backend, gate, a.ticks, camera, a.scene_every)}))


if __name__ == "__main__":
    main()
