"""The LeRobot side: a plain lerobot `SmolVLAPolicy` with our weights, timed eager (`predict_action_chunk`,
its prefix and denoise loop, `select_action` open loop and reactive)."""

from __future__ import annotations

import gc
import time
from typing import Any

import numpy as np

from scripts.bench.measure import reps_for, reset_peak_rss, rss_mb, summarize, timed


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


def child_lerobot(args) -> dict:
    import torch

    from export.graphs.checkpoint_loading import load_preset

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
