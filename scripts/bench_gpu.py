"""GPU benchmark: LeRobot SmolVLA (eager fp32/bf16, torch.compile reduce-overhead) vs our three-graph chain
(static shapes + CUDA graphs), per stage and per chunk, against measured bandwidth/matmul ceilings.

    python scripts/bench_gpu.py --out reports/bench_gpu [--preset full] [--reps 20] [--variants ...]
        [--artifacts artifacts/onnx-bench-full --engines artifacts/engines-bench]   # TensorRT, if importable

Written for a bare x86 CUDA machine (H100/H200, PyTorch 2.11, Python 3.12, no network, no TensorRT);
lerobot/transformers may come from wheels unpacked into `.whl/site` (see docs/bench.md). It has NOT been
run by the project yet; on a machine without CUDA only `--help`, `--device cpu` (a dry run of the same code
paths without CUDA graphs / compile) and the pure helpers below work.

Variants (all batch 1, same random weights, same inputs; `--variants` picks a subset):
  lerobot-fp32, lerobot-bf16          LeRobot `SmolVLAPolicy.predict_action_chunk`, eager
  compile-fp32, compile-bf16          the same under `torch.compile(mode="reduce-overhead")` (sample_actions)
  chain-fp32, chain-bf16              export/graph_wrappers.py Prefix/MainExpert/DeltaExpert graphs, eager
  graphs-fp32, graphs-bf16            the same three stages, each captured once as a CUDA graph (the whole
                                      N-step Euler loop is one graph) and replayed
  ceilings                            device copy bandwidth, bf16 matmul TFLOP/s → floor for one chunk
  tensorrt                            engines built by export/build_engines.py, via runtime TensorRTBackend
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WHEEL_SITE = ROOT / ".whl" / "site"  # `pip install --no-deps --target .whl/site .whl/*.whl`
for _p in (WHEEL_SITE, ROOT):
    if _p.is_dir() and str(_p) not in sys.path:
        sys.path.insert(0 if _p == ROOT else len(sys.path), str(_p))

ALL_VARIANTS = ("ceilings", "lerobot-fp32", "lerobot-bf16", "chain-fp32", "chain-bf16", "graphs-fp32", "graphs-bf16",
                "compile-fp32", "compile-bf16", "tensorrt")
CPU_VARIANTS = ("lerobot-fp32", "lerobot-bf16", "chain-fp32", "chain-bf16")  # what a --device cpu dry run can do


# ------------------------------------------------------------------------------------ pure helpers
def summarize(ms: list[float]) -> dict[str, float]:
    import numpy as np

    a = np.asarray(ms, dtype=np.float64)
    if a.size == 0:
        return {"n": 0, "median_ms": float("nan"), "p90_ms": float("nan"), "min_ms": float("nan")}
    return {"n": int(a.size), "median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
            "min_ms": float(a.min())}


def chunk_floor(weight_bytes: float, flops: float, copy_gbps: float, matmul_tflops: float) -> dict[str, float]:
    """Roofline lower bound for one chunk: weight traffic at the measured copy bandwidth vs FLOPs at the
    measured matmul rate; the floor is the larger of the two (perfect overlap), the sum is a serial bound."""
    bw_ms = weight_bytes / (copy_gbps * 1e9) * 1e3 if copy_gbps > 0 else float("inf")
    fl_ms = flops / (matmul_tflops * 1e12) * 1e3 if matmul_tflops > 0 else float("inf")
    return {"bandwidth_ms": bw_ms, "compute_ms": fl_ms, "floor_ms": max(bw_ms, fl_ms), "serial_ms": bw_ms + fl_ms,
            "bound": "bandwidth" if bw_ms >= fl_ms else "compute"}


def _numel(modules) -> int:
    return sum(p.numel() for m in modules if m is not None for p in m.parameters())


def weight_traffic(model, num_steps: int, bytes_per_param: int = 2) -> dict[str, float]:
    """Bytes of weights one chunk must read (prefix once, main expert × num_steps, delta expert once) plus the
    prefix K/V the experts read each step. Token-embedding tables count only as rows read (negligible), the
    unused lm_head not at all."""
    vlm = model.vlm_with_expert.get_vlm_model()
    text = vlm.text_model
    prefix_mods = [vlm.vision_model, vlm.connector, *text.layers, text.norm, model.state_proj,
                   getattr(model, "obs_cls_proj", None)]
    prefix_params = _numel(prefix_mods) + sum(p.numel() for n, p in model.named_parameters() if n == "pre_cls_param")
    main = model.main_expert_modules() if hasattr(model, "main_expert_modules") else {
        "lm_expert": model.vlm_with_expert.lm_expert, "action_in_proj": model.action_in_proj,
        "action_out_proj": model.action_out_proj, "action_time_mlp_in": model.action_time_mlp_in,
        "action_time_mlp_out": model.action_time_mlp_out}
    step_params = _numel(main.values())
    delta_params = _numel(model.delta_modules().values()) + _numel([getattr(model, "act_cls_proj", None)]) \
        if hasattr(model, "delta_modules") else 0
    cfg = model.vlm_with_expert.config.text_config
    n_layers = len(text.layers)
    tokens = 0  # prefix length, from the config (images·tokens_per_image + language + state + CLS)
    with contextlib.suppress(Exception):
        per_image = (vlm.config.vision_config.image_size // vlm.config.vision_config.patch_size) ** 2 // (
            vlm.config.scale_factor ** 2)
        cams = len(model.config.image_features)
        tokens = cams * (per_image + (2 if model.config.add_image_special_tokens else 0)) + \
            model.config.tokenizer_max_length + 1 + getattr(model, "num_prefix_cls", 0)
    kv_bytes = 2 * n_layers * tokens * cfg.num_key_value_heads * cfg.head_dim * bytes_per_param
    total = (prefix_params + num_steps * step_params + delta_params) * bytes_per_param + (num_steps + 1) * kv_bytes
    return {"prefix_params": prefix_params, "step_params": step_params, "delta_params": delta_params,
            "kv_bytes_per_step": kv_bytes, "bytes_per_param": bytes_per_param, "chunk_bytes": float(total)}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (matmul/conv/attention, as torch's FlopCounterMode counts them) of one call of `fn`."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


class ConstTensors:
    """While active, `torch.tensor(<python list/number>, device=<dev>)` returns a cached tensor made on first
    use. LeRobot builds its attention-mask patterns and a few scalars this way on every call; each is a
    host→device copy, which is illegal inside CUDA-graph capture. The values only depend on static shapes,
    so warm-up runs fill the cache and the captured graph reads the cached device tensors."""

    def __init__(self, device_type: str = "cuda"):
        import torch

        self.device_type = device_type
        self.cache: dict[tuple, Any] = {}
        self.hits = 0
        self._orig = torch.tensor

    def __call__(self, data, *args, dtype=None, device=None, requires_grad=False, **kwargs):
        import torch

        dev = torch.device(device) if device is not None else None
        if (dev is None or dev.type != self.device_type or args or kwargs or requires_grad
                or not isinstance(data, (list, tuple, int, float, bool))):
            return self._orig(data, *args, dtype=dtype, device=device, requires_grad=requires_grad, **kwargs)
        key = (type(data).__name__, repr(data), str(dtype), str(dev))
        hit = self.cache.get(key)
        if hit is None:
            hit = self.cache[key] = self._orig(data, dtype=dtype, device=device)
        else:
            self.hits += 1
        return hit

    @contextlib.contextmanager
    def active(self) -> Iterator[ConstTensors]:
        import torch

        torch.tensor = self  # type: ignore[assignment]
        try:
            yield self
        finally:
            torch.tensor = self._orig  # type: ignore[assignment]


# ----------------------------------------------------------------------------------------- timing
class Timer:
    """CUDA events on a GPU (device time of the enqueued work, after a sync), perf_counter on the CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def run(self, fn: Callable[[], Any], reps: int, warmup: int) -> list[float]:
        for _ in range(warmup):
            fn()
        self.sync()
        out = []
        if self.cuda:
            import torch

            for _ in range(reps):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                out.append(a.elapsed_time(b))
        else:
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1e3)
        return out


# --------------------------------------------------------------------------------------- ceilings
def measure_ceilings(device: str, copy_mib: int = 1024, n: int = 8192, reps: int = 20) -> dict[str, float]:
    import torch

    timer = Timer(device)
    src = torch.empty(copy_mib << 20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_ms = summarize(timer.run(lambda: dst.copy_(src), reps, 3))["median_ms"]
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    mm_ms = summarize(timer.run(lambda: a @ b, reps, 3))["median_ms"]
    return {"copy_bytes": 2 * (copy_mib << 20), "copy_ms": copy_ms,
            "copy_gbps": 2 * (copy_mib << 20) / (copy_ms * 1e-3) / 1e9,  # read + write
            "matmul_n": n, "matmul_ms": mm_ms, "matmul_tflops": 2 * n**3 / (mm_ms * 1e-3) / 1e12}


# ------------------------------------------------------------------------------------------ models
def build_models(preset: str, device: str):
    """(our SmolVLA-CLS model, plain lerobot SmolVLAPolicy with the same weights), both on `device`, fp32."""
    from export.checkpoint_loading import load_preset
    from scripts.bench import plain_smolvla_from

    loaded = load_preset(preset, seed=0)
    plain = plain_smolvla_from(loaded.policy)
    return loaded.policy.to(device).eval(), plain.to(device).eval()


def cast_bf16(model) -> None:
    """The bf16 variant: VLM + experts in bf16 (as LeRobot loads the VLM), projections/heads stay fp32;
    LeRobot's attention code casts activations to each layer's weight dtype."""
    import torch

    model.vlm_with_expert.to(torch.bfloat16)
    if hasattr(model, "delta_expert"):
        model.delta_expert.to(torch.bfloat16)


def make_inputs(config, device: str, seed: int = 0) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    h, w = config.resize_imgs_with_padding
    length = config.tokenizer_max_length
    cams = len(config.image_features)
    state = torch.zeros(1, config.max_state_dim)
    dim = config.robot_state_feature.shape[0]
    state[:, :dim] = torch.randn(1, dim, generator=g)  # zero-padded, as LeRobot's prepare_state pads it
    return {"images": torch.rand(1, cams, 3, h, w, generator=g).to(device),
            "lang_tokens": torch.randint(7, 40, (1, length), generator=g).to(device),
            "lang_mask": (torch.arange(length)[None] < max(1, length // 3)).to(device),
            "state": state.to(device),
            "noise": torch.randn(1, config.chunk_size, config.max_action_dim, generator=g).to(device)}


def lerobot_batch(plain, inp: dict[str, Any]) -> dict[str, Any]:
    batch = {key: inp["images"][:, i] for i, key in enumerate(plain.config.image_features)}
    batch["observation.state"] = inp["state"][:, : plain.config.robot_state_feature.shape[0]]
    batch["observation.language.tokens"] = inp["lang_tokens"]
    batch["observation.language.attention_mask"] = inp["lang_mask"]
    return batch


def bench_lerobot(plain, inp: dict, device: str, reps: int, warmup: int, compiled: bool = False) -> dict:
    """predict_action_chunk (whole chunk); eager runs also time the denoise steps (prefix = the rest)."""
    import torch

    timer = Timer(device)
    batch = lerobot_batch(plain, inp)
    out: dict[str, Any] = {}
    if compiled:
        plain.model.sample_actions = torch.compile(plain.model.sample_actions, mode="reduce-overhead")
        t0 = time.perf_counter()
        with torch.inference_mode():
            plain.predict_action_chunk(dict(batch), noise=inp["noise"].clone())
            timer.sync()
        out["compile_s"] = time.perf_counter() - t0
    with torch.inference_mode():
        chunk = timer.run(lambda: plain.predict_action_chunk(dict(batch), noise=inp["noise"].clone()), reps, warmup)
        out["chunk"] = summarize(chunk)
        if not compiled:
            prefix_fn = plain.model.embed_prefix
            steps: list[float] = []
            inner = plain.model.denoise_step

            def timed_step(*a, **k):
                a_, b_ = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if timer.cuda \
                    else (None, None)
                t = time.perf_counter()
                if a_ is not None:
                    a_.record()
                r = inner(*a, **k)
                if b_ is not None:
                    b_.record()
                    b_.synchronize()
                    steps.append(a_.elapsed_time(b_))
                else:
                    steps.append((time.perf_counter() - t) * 1e3)
                return r

            plain.model.denoise_step = timed_step
            totals, loops = [], []
            for _ in range(max(1, reps // 2)):
                n0 = len(steps)
                ms = timer.run(lambda: plain.predict_action_chunk(dict(batch), noise=inp["noise"].clone()), 1, 0)[0]
                totals.append(ms)
                loops.append(sum(steps[n0:]))
            del plain.model.denoise_step  # back to the class method
            out["denoise_step"] = summarize(steps)
            out["denoise_loop"] = summarize(loops)
            out["prefix"] = summarize([t - lp for t, lp in zip(totals, loops, strict=True)])
            del prefix_fn
    if timer.cuda:
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


class GraphChain:
    """Prefix → N Euler steps of the main expert → delta step, from the export wrappers, static buffers.

    With `cuda_graphs` each stage is captured once (the prefix, the whole N-step loop, the delta step) and
    later calls replay the graphs; the stages exchange data through the captured graphs' static tensors.
    Without it the same functions run eagerly (this path also runs on the CPU, for tests)."""

    def __init__(self, model, inp: dict[str, Any], num_steps: int, cuda_graphs: bool = False):
        import torch

        from export.graph_wrappers import DeltaExpertGraph, MainExpertGraph, PrefixGraph

        self.prefix_m, self.main_m, self.delta_m = PrefixGraph(model).eval(), MainExpertGraph(model).eval(), \
            DeltaExpertGraph(model).eval()
        self.inp = inp
        self.num_steps = num_steps
        dev = inp["noise"].device
        self.times = torch.tensor([1.0 - i / num_steps for i in range(num_steps)], device=dev).reshape(num_steps, 1)
        self.cuda_graphs = cuda_graphs
        self.consts = ConstTensors(dev.type)
        self.graphs: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        with torch.inference_mode():
            self.kv = self._prefix()
            self.x = self._denoise()
            self.out = self._delta()

    # stage bodies (read the previous stage's static outputs)
    def _prefix(self):
        i = self.inp
        with self.consts.active():
            return self.prefix_m(i["images"], i["lang_tokens"], i["lang_mask"], i["state"])

    def _denoise(self):
        k, v, pad, _ = self.kv
        x = self.inp["noise"].clone()
        dt = -1.0 / self.num_steps
        with self.consts.active():
            for s in range(self.num_steps):
                x = x + dt * self.main_m(x, self.times[s], k, v, pad)
        return x

    def _delta(self):
        k, v, pad, _ = self.kv
        with self.consts.active():
            return self.delta_m(self.x, k, v, pad)

    def capture(self) -> None:
        """Capture prefix, loop and delta as three CUDA graphs (each stage falls back to eager on failure)."""
        import torch

        for name, fn, attr in (("prefix", self._prefix, "kv"), ("denoise", self._denoise, "x"),
                               ("delta", self._delta, "out")):
            try:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side), torch.inference_mode():
                    for _ in range(2):
                        setattr(self, attr, fn())
                torch.cuda.current_stream().wait_stream(side)
                g = torch.cuda.CUDAGraph()
                with torch.inference_mode(), torch.cuda.graph(g):
                    setattr(self, attr, fn())  # static outputs: later stages read these tensors
                self.graphs[name] = g
            except Exception as exc:  # noqa: BLE001 — recorded in the report, the stage stays eager
                self.errors[name] = f"{type(exc).__name__}: {exc}"[:300]
                with torch.inference_mode():
                    setattr(self, attr, fn())

    def stage(self, name: str) -> Callable[[], Any]:
        g = self.graphs.get(name)
        if g is not None:
            return g.replay
        fn, attr = {"prefix": (self._prefix, "kv"), "denoise": (self._denoise, "x"), "delta": (self._delta, "out")}[name]

        def run():
            import torch

            with torch.inference_mode():
                setattr(self, attr, fn())

        return run

    def chunk(self) -> None:
        for name in ("prefix", "denoise", "delta"):
            self.stage(name)()

    def one_step(self) -> Callable[[], Any]:
        import torch

        k, v, pad, _ = self.kv
        x = self.inp["noise"]

        def run():
            with torch.inference_mode(), self.consts.active():
                self.main_m(x, self.times[0], k, v, pad)

        return run


def bench_chain(model, inp: dict, num_steps: int, device: str, reps: int, warmup: int, cuda_graphs: bool) -> dict:
    import torch

    timer = Timer(device)
    t0 = time.perf_counter()
    chain = GraphChain(model, inp, num_steps)
    if cuda_graphs:
        chain.capture()
    setup_s = time.perf_counter() - t0
    out: dict[str, Any] = {"setup_s": setup_s, "captured": sorted(chain.graphs), "capture_errors": chain.errors,
                           "const_tensors": len(chain.consts.cache)}
    for name in ("prefix", "denoise", "delta"):
        out[name] = summarize(timer.run(chain.stage(name), reps, warmup))
    out["main_step_eager"] = summarize(timer.run(chain.one_step(), reps, warmup))
    out["chunk"] = summarize(timer.run(chain.chunk, reps, warmup))
    out["chunk_actions"] = chain.x[0, :, : model.config.action_feature.shape[0]].float().cpu().tolist()
    if timer.cuda:
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def bench_tensorrt(artifacts: Path, engines: Path, reps: int, warmup: int) -> dict:
    import numpy as np

    from runtime.backend_tensorrt import TensorRTBackend
    from runtime.manifest import Manifest
    from runtime.policy import delta_input

    m = Manifest.load(artifacts, verify_hashes=False)
    d = m.dims
    backend = TensorRTBackend(artifacts, engines, manifest=m.raw)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (1, len(m.cameras), 3, m.image.height, m.image.width)).astype(np.float32)
    tokens = rng.integers(7, 40, (1, d.lang_len)).astype(np.int64)
    mask = np.arange(d.lang_len)[None] < max(1, d.lang_len // 3)
    state = rng.standard_normal((1, d.max_state_dim)).astype(np.float32)
    noise = rng.standard_normal(m.plan_shape).astype(np.float32)
    timer = Timer("cpu")  # host wall time: what a caller of the backend waits for (it syncs per call)
    pre = backend.run_prefix(images, tokens, mask, state)
    x = backend.denoise(noise, d.num_steps, pre)

    def resample():
        p = backend.run_prefix(images, tokens, mask, state)
        y = backend.denoise(noise, d.num_steps, p)
        backend.run_delta_expert(delta_input(y[0], d.chunk_size), p)

    out = {"prefix": summarize(timer.run(lambda: backend.run_prefix(images, tokens, mask, state), reps, warmup)),
           "main_step": summarize(timer.run(lambda: backend.run_main_expert(noise, 0.5, pre), reps, warmup)),
           "denoise": summarize(timer.run(lambda: backend.denoise(noise, d.num_steps, pre), reps, warmup)),
           "delta": summarize(timer.run(lambda: backend.run_delta_expert(delta_input(x[0], d.chunk_size), pre),
                                        reps, warmup)),
           "chunk": summarize(timer.run(resample, reps, warmup))}
    backend.close()
    return out


# ------------------------------------------------------------------------------------- offline wheels
_NOT_WHEELS = ("torch", "triton", "nvidia-", "cuda-", "smolvla-cls-edge", "setuptools", "pip")


def wheel_requirements() -> list[str]:
    """`name==version` of every distribution this script imports besides torch/CUDA (run where it works,
    e.g. the project venv): what a bare GPU machine needs as wheels (docs/bench.md)."""
    import importlib.metadata as md

    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy  # noqa: F401

    import export.checkpoint_loading
    import export.graph_wrappers  # noqa: F401
    import scripts.bench  # noqa: F401
    from smolvla_cls.modeling_smolvla_cls import SmolVLACLSPolicy  # noqa: F401

    dists = md.packages_distributions()
    names = {d for m in list(sys.modules) for d in dists.get(m.split(".")[0], [])}
    return sorted(f"{n}=={md.version(n)}" for n in names if not n.lower().startswith(_NOT_WHEELS))


# ------------------------------------------------------------------------------------------ report
def render_markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [f"# GPU bench: LeRobot SmolVLA vs SmolVLA-CLS graph chain ({meta['preset']})", "",
             (f"Device {meta['device_name']} ({meta['device']}), torch {meta['torch']}, python {meta['python']}, "
              f"lerobot {meta['lerobot']}. Batch 1, {meta['num_steps']} steps, chunk {meta['chunk_size']}, "
              f"{meta['reps']} reps (warm-up {meta['warmup']} excluded). Timings: CUDA events (device time)."), "",
             "| variant | chunk median ms | p90 | prefix | one step | N-step loop | delta | setup/compile s | peak GPU MB | vs LeRobot fp32 eager |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = report["variants"].get("lerobot-fp32", {}).get("chunk", {}).get("median_ms")

    def f(v: Any, nd: int = 2) -> str:
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))

    for name, r in report["variants"].items():
        if name == "ceilings" or "chunk" not in r:
            continue
        c = r["chunk"]["median_ms"]
        step = r.get("denoise_step", r.get("main_step", r.get("main_step_eager", {}))).get("median_ms")
        loop = r.get("denoise_loop", r.get("denoise", {})).get("median_ms")
        setup = r.get("compile_s", r.get("setup_s"))
        ratio = f"{base / c:.2f}× faster" if base and c and not math.isnan(c) else "—"
        lines.append(f"| {name} | {f(c)} | {f(r['chunk']['p90_ms'])} | {f(r.get('prefix', {}).get('median_ms'))} | "
                     f"{f(step)} | {f(loop)} | {f(r.get('delta', {}).get('median_ms'))} | {f(setup, 1)} | "
                     f"{f(r.get('peak_gpu_mb'), 0)} | {ratio} |")
    errs = {k: v["error"] for k, v in report["variants"].items() if "error" in v}
    for name, r in report["variants"].items():
        if r.get("capture_errors"):
            errs[f"{name} (CUDA-graph capture, stage left eager)"] = json.dumps(r["capture_errors"])[:400]
    if errs:
        lines += ["", "Failures:", ""] + [f"- `{k}`: {v}" for k, v in errs.items()]
    ceil = report["variants"].get("ceilings")
    if ceil and "error" not in ceil:
        fl = report.get("floor", {})
        lines += ["", (f"Ceilings: device copy {ceil['copy_gbps']:.0f} GB/s (read+write), bf16 matmul "
                       f"{ceil['matmul_tflops']:.0f} TFLOP/s. One chunk: {report['traffic']['chunk_bytes'] / 1e9:.2f} GB "
                       f"of bf16 weights + K/V, {report['flops'] / 1e12:.3f} TFLOP → floor "
                       f"{fl.get('floor_ms', float('nan')):.2f} ms ({fl.get('bound')}-bound; serial bound "
                       f"{fl.get('serial_ms', float('nan')):.2f} ms).")]
    if "parity_max_abs" in report:
        lines += ["", (f"LeRobot fp32 vs chain fp32 (same weights, inputs, noise): max |Δ chunk| = "
                       f"{report['parity_max_abs']:.2e}.")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/bench_gpu.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[9:]))
    p.add_argument("--out", type=Path, default=Path("reports/bench_gpu"))
    p.add_argument("--preset", default="full", choices=["tiny", "full"])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (dry run: eager variants only)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
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
    import importlib.metadata as md

    report: dict[str, Any] = {"meta": {
        "preset": args.preset, "device": args.device, "python": platform.python_version(), "torch": torch.__version__,
        "lerobot": md.version("lerobot"), "device_name": torch.cuda.get_device_name() if cuda else platform.processor(),
        "num_steps": cfg.num_steps, "chunk_size": cfg.chunk_size, "reps": args.reps, "warmup": args.warmup,
        "params": sum(p_.numel() for p_ in plain.parameters())}, "variants": {}}
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

    fp32 = [v for v in variants if v.endswith("fp32") or v in ("ceilings", "tensorrt")]
    bf16 = [v for v in variants if v.endswith("bf16")]
    for v in fp32:
        if v == "ceilings":
            record(v, lambda: measure_ceilings(args.device))
        elif v == "lerobot-fp32":
            record(v, lambda: bench_lerobot(plain, inp, args.device, args.reps, args.warmup))
        elif v == "chain-fp32":
            record(v, lambda: bench_chain(model.model, inp, cfg.num_steps, args.device, args.reps, args.warmup, False))
        elif v == "graphs-fp32":
            record(v, lambda: bench_chain(model.model, inp, cfg.num_steps, args.device, args.reps, args.warmup, True))
        elif v == "tensorrt":
            record(v, lambda: bench_tensorrt(args.artifacts, args.engines, args.reps, args.warmup))
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
        record("compile-fp32", lambda: bench_lerobot(plain, inp, args.device, args.reps, args.warmup, compiled=True))
        vars(plain.model).pop("sample_actions", None)
    if bf16:
        cast_bf16(model.model)
        cast_bf16(plain.model)
        for v in bf16:
            if v == "lerobot-bf16":
                record(v, lambda: bench_lerobot(plain, inp, args.device, args.reps, args.warmup))
            elif v == "chain-bf16":
                record(v, lambda: bench_chain(model.model, inp, cfg.num_steps, args.device, args.reps, args.warmup, False))
            elif v == "graphs-bf16":
                record(v, lambda: bench_chain(model.model, inp, cfg.num_steps, args.device, args.reps, args.warmup, True))
            elif v == "compile-bf16":
                record(v, lambda: bench_lerobot(plain, inp, args.device, args.reps, args.warmup, compiled=True))
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


if __name__ == "__main__":
    raise SystemExit(main())
