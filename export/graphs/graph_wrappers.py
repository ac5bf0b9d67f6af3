"""The four exported graphs as torch modules over one `VLAFlowMatchingCLS` (docs/10-artifact-contract.md).

Each wrapper is batch-1, static-shape, float32 and calls the model's own methods (`encode_prefix`,
`denoise_step`, `delta_step`, `plan_step`, `embed_cls`), so the CLS-aware masks inside the graphs are exactly the
PyTorch ones. The per-layer K/V cache (a dict in lerobot) crosses graph boundaries as two stacked
tensors [num_layers, 1, P, kv_heads, head_dim].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from smolvla_cls.modeling_smolvla_cls import VLAFlowMatchingCLS

PREFIX_INPUTS = ("images", "lang_tokens", "lang_mask", "state")
PREFIX_OUTPUTS = ("prefix_k", "prefix_v", "prefix_pad", "obs_cls")
MAIN_INPUTS = ("x_t", "t", "prefix_k", "prefix_v", "prefix_pad")
MAIN_OUTPUTS = ("v_t",)
DELTA_INPUTS = ("actions", "prefix_k", "prefix_v", "prefix_pad")
DELTA_OUTPUTS = ("delta", "act_cls")
PLAN_INPUTS = ("plan", "plan_valid")
PLAN_OUTPUTS = ("act_cls",)


def stack_kv(kv: dict) -> tuple[Tensor, Tensor]:
    layers = sorted(kv)
    return (torch.stack([kv[i]["key_states"] for i in layers]), torch.stack([kv[i]["value_states"] for i in layers]))


def unstack_kv(prefix_k: Tensor, prefix_v: Tensor) -> dict:
    return {i: {"key_states": prefix_k[i], "value_states": prefix_v[i]} for i in range(prefix_k.shape[0])}


class PrefixGraph(nn.Module):
    """images [1,C,3,H,W] in [0,1] (already resized/padded), tokens, mask, normalised state ->
    (prefix_k, prefix_v, prefix_pad, obs_cls)."""

    def __init__(self, model: VLAFlowMatchingCLS):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, lang_tokens: Tensor, lang_mask: Tensor, state: Tensor):
        cams = [images[:, i] * 2.0 - 1.0 for i in range(images.shape[1])]  # SigLIP range [-1, 1]
        masks = [torch.ones(images.shape[0], dtype=torch.bool, device=images.device) for _ in cams]
        kv, pad, prefix_cls = self.model.encode_prefix(cams, masks, lang_tokens, lang_mask, state)
        obs_cls, _ = self.model.embed_cls(prefix_cls, None)
        k, v = stack_kv(kv)
        return k, v, pad, obs_cls


class MainExpertGraph(nn.Module):
    """One denoising velocity: (x_t, t, prefix K/V, pad) -> v_t. The runtime owns the Euler loop."""

    def __init__(self, model: VLAFlowMatchingCLS):
        super().__init__()
        self.model = model

    def forward(self, x_t: Tensor, t: Tensor, prefix_k: Tensor, prefix_v: Tensor, prefix_pad: Tensor):
        return self.model.denoise_step(prefix_pad, unstack_kv(prefix_k, prefix_v), x_t, t)


class DeltaExpertGraph(nn.Module):
    """Delta expert on a normalised plan: (actions, prefix K/V, pad) -> (correction, act_cls)."""

    def __init__(self, model: VLAFlowMatchingCLS):
        super().__init__()
        self.model = model

    def forward(self, actions: Tensor, prefix_k: Tensor, prefix_v: Tensor, prefix_pad: Tensor):
        delta, suffix_cls = self.model.delta_step(prefix_pad, unstack_kv(prefix_k, prefix_v), actions)
        _, act_cls = self.model.embed_cls(None, suffix_cls)
        return delta, act_cls


class PlanEncoderGraph(nn.Module):
    """act-CLS of a normalised plan alone (plan_only wiring): (plan [1,T,A], plan_valid [1,T]) -> act_cls.
    No observation input: the remaining rows sit at the front, plan_valid marks them (plan_pass.py)."""

    def __init__(self, model: VLAFlowMatchingCLS):
        super().__init__()
        self.model = model

    def forward(self, plan: Tensor, plan_valid: Tensor):
        _, act_cls = self.model.embed_cls(None, self.model.plan_step(plan, plan_valid))
        return act_cls


def example_inputs(model: VLAFlowMatchingCLS, num_cameras: int, generator: torch.Generator | None = None,
                   lang_valid: int | None = None, partial_plan: bool = False) -> dict[str, tuple[Tensor, ...]]:
    """Random batch-1 inputs of every graph with the exported static shapes; `partial_plan`: the plan encoder's
    remainder is shorter than the chunk (as the runtime feeds it), so a graph that sees padding rows differs."""
    cfg = model.config
    h, w = cfg.resize_imgs_with_padding
    length = cfg.tokenizer_max_length
    g = generator
    valid = length if lang_valid is None else lang_valid
    images = torch.rand(1, num_cameras, 3, h, w, generator=g)
    tokens = torch.randint(7, 40, (1, length), generator=g)
    mask = torch.arange(length)[None] < valid
    state = torch.randn(1, cfg.max_state_dim, generator=g)
    with torch.no_grad():
        k, v, pad, _ = PrefixGraph(model)(images, tokens, mask, state)
    x_t = torch.randn(1, cfg.chunk_size, cfg.max_action_dim, generator=g)
    t = torch.rand(1, generator=g)
    actions = torch.randn(1, cfg.chunk_size, cfg.max_action_dim, generator=g)
    longest = cfg.chunk_size - 1 if partial_plan and cfg.chunk_size > 1 else cfg.chunk_size
    remaining = int(torch.randint(1, longest + 1, (1,), generator=g))
    plan_valid = torch.arange(cfg.chunk_size)[None] < remaining
    return {"prefix": (images, tokens, mask, state), "main_expert": (x_t, t, k, v, pad),
            "delta_expert": (actions, k, v, pad), "plan_encoder": (actions * plan_valid[..., None], plan_valid)}
