"""The models and inputs every variant shares: our SmolVLA-CLS and a plain LeRobot SmolVLA with the same
weights, their bf16 cast, and one random input set."""

from __future__ import annotations

from typing import Any


def build_models(preset: str, device: str):
    """(our SmolVLA-CLS model, plain lerobot SmolVLAPolicy with the same weights), both on `device`, fp32."""
    from export.graphs.checkpoint_loading import load_preset
    from scripts.bench.lerobot_side import plain_smolvla_from

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
