"""Our static chain in torch: the export wrappers' prefix, N-step loop and delta step on static buffers, eager
or each stage captured once as a CUDA graph."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from scripts.bench_gpu.timing import Timer, summarize


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


class GraphChain:
    """Prefix → N Euler steps of the main expert → delta step, from the export wrappers, static buffers.

    With `cuda_graphs` each stage is captured once (the prefix, the whole N-step loop, the delta step) and
    later calls replay the graphs; the stages exchange data through the captured graphs' static tensors.
    Without it the same functions run eagerly (this path also runs on the CPU, for tests)."""

    def __init__(self, model, inp: dict[str, Any], num_steps: int, cuda_graphs: bool = False):
        import torch

        from export.graphs.graph_wrappers import DeltaExpertGraph, MainExpertGraph, PrefixGraph

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
