"""Our chain on TensorRT: engines built by export/trt/build_engines.py, timed through the runtime's
TensorRTBackend (host wall time per call)."""

from __future__ import annotations

from pathlib import Path

from scripts.bench_gpu.timing import Timer, summarize


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
    out = {"prefix": summarize(timer.run(lambda: backend.run_prefix(images, tokens, mask, state), reps, warmup))}
    # The backend keeps only the latest prefix K/V on the GPU, so timing the prefix made every earlier
    # PrefixState stale: take a fresh one for the expert timings (which never run the prefix themselves).
    pre = backend.run_prefix(images, tokens, mask, state)
    x = backend.denoise(noise, d.num_steps, pre)

    def resample():
        p = backend.run_prefix(images, tokens, mask, state)
        y = backend.denoise(noise, d.num_steps, p)
        backend.run_delta_expert(delta_input(y[0], d.chunk_size), p)

    out |= {"main_step": summarize(timer.run(lambda: backend.run_main_expert(noise, 0.5, pre), reps, warmup)),
           "denoise": summarize(timer.run(lambda: backend.denoise(noise, d.num_steps, pre), reps, warmup)),
           "delta": summarize(timer.run(lambda: backend.run_delta_expert(delta_input(x[0], d.chunk_size), pre),
                                        reps, warmup)),
           "chunk": summarize(timer.run(resample, reps, warmup))}
    backend.close()
    return out
