"""Tiny SmolVLA-CLS policies and random batches for tests (built offline from the `tiny` preset)."""

from __future__ import annotations

import torch
from lerobot.configs.types import FeatureType, PolicyFeature

from smolvla_cls.configuration_smolvla_cls import SmolVLACLSConfig
from smolvla_cls.presets import POLICY_OVERRIDES

IMAGE_KEY = "observation.images.top"


def tiny_config(cameras: int = 1, state_dim: int = 2, action_dim: int = 2, chunk: int = 6, **overrides):
    inputs = {f"{IMAGE_KEY}{'' if i == 0 else i}": PolicyFeature(FeatureType.VISUAL, (3, 64, 64))
              for i in range(cameras)}
    inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (state_dim,))
    kwargs = dict(POLICY_OVERRIDES["tiny"], vlm_preset="tiny", input_features=inputs,
                  output_features={"action": PolicyFeature(FeatureType.ACTION, (action_dim,))},
                  chunk_size=chunk, n_action_steps=chunk, train_expert_only=False, freeze_vision_encoder=False,
                  device="cpu", num_steps=3)
    kwargs.update(overrides)
    return SmolVLACLSConfig(**kwargs)


def random_batch(config, batch_size: int = 3, seed: int = 0, with_action: bool = True, lang_pad: int = 3):
    g = torch.Generator().manual_seed(seed)
    batch = {key: torch.rand(batch_size, 3, 64, 64, generator=g) for key in config.image_features}
    batch["observation.state"] = torch.randn(batch_size, config.robot_state_feature.shape[0], generator=g)
    length = config.tokenizer_max_length
    batch["observation.language.tokens"] = torch.randint(7, 60, (batch_size, length), generator=g)
    mask = torch.ones(batch_size, length, dtype=torch.bool)
    if lang_pad:
        mask[:, length - lang_pad:] = False  # right padding, as the tokenizer step produces
    batch["observation.language.attention_mask"] = mask
    if with_action:
        batch["action"] = torch.randn(batch_size, config.chunk_size, config.action_feature.shape[0], generator=g)
        batch["action_is_pad"] = torch.zeros(batch_size, config.chunk_size, dtype=torch.bool)
    return batch


def tiny_policy(seed: int = 0, **overrides):
    from smolvla_cls.modeling_smolvla_cls import SmolVLACLSPolicy

    torch.manual_seed(seed)
    return SmolVLACLSPolicy(tiny_config(**overrides))
