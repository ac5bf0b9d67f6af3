"""Guarded eager attention for lerobot's `SmolVLMWithExpertModel`.

Two changes to lerobot's eager attention, both output-preserving wherever a row sees at least one key:
- the mask fill is -32752 (float16 min / 2) instead of float32 min, which becomes -inf in fp16 and
  turns fully masked rows into NaN (TensorRT FP16 builds);
- a fully masked row returns zero instead of a uniform average over every key. This is what keeps the
  suffix CLS tokens blind to the prefix in cross-attention layers, which only offer prefix keys.
"""

from __future__ import annotations

import torch
from lerobot.policies.smolvla.smolvlm_with_expert import SmolVLMWithExpertModel
from torch import nn

MASK_FILL = -32752.0  # torch.finfo(torch.float16).min / 2: safe in fp16, bf16 and fp32


class GuardedSmolVLMWithExpert(SmolVLMWithExpertModel):
    """lerobot's VLM+expert with FP16-safe, fully-masked-row-guarded attention (same weights, same keys)."""

    def eager_attention_forward(self, attention_mask, batch_size, head_dim, query_states, key_states,
                                value_states):
        groups = self.num_attention_heads // self.num_key_value_heads
        # [B, S, KH, D] -> [B, KH*groups, S, D] (GQA: each kv head serves `groups` query heads)
        k = key_states.to(torch.float32).repeat_interleave(groups, dim=2).transpose(1, 2)
        v = value_states.repeat_interleave(groups, dim=2).transpose(1, 2)
        q = query_states.to(torch.float32).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(2, 3)) * head_dim**-0.5
        mask = attention_mask[:, None, :, :]
        scores = torch.where(mask, scores, torch.full_like(scores, MASK_FILL))
        probs = nn.functional.softmax(scores, dim=-1)
        probs = probs * mask.any(dim=-1, keepdim=True).to(probs.dtype)  # fully masked row -> 0
        out = torch.matmul(probs.to(v.dtype), v).transpose(1, 2)
        return out.reshape(batch_size, -1, self.num_attention_heads * head_dim)


def install_guarded_attention(model: SmolVLMWithExpertModel) -> None:
    """Switch an existing lerobot VLM+expert module to the guarded attention (no weight change)."""
    model.__class__ = GuardedSmolVLMWithExpert
