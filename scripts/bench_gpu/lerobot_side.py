"""The LeRobot side: `SmolVLAPolicy.predict_action_chunk`, eager (prefix, denoise steps and loop timed) or under
`torch.compile(mode="reduce-overhead")`."""

from __future__ import annotations

import time
from typing import Any

from scripts.bench_gpu.timing import Timer, summarize


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
