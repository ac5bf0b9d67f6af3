"""The roofline: measured copy bandwidth and bf16 matmul rate, a chunk's weight traffic and FLOPs, and the
floor they set for one chunk."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from scripts.bench_gpu.timing import Timer, summarize


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
