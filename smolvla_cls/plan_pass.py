"""The plan-only act-CLS pass (`act_cls_wiring="plan_only"`): act-CLS as a function of the plan alone.

Why: in the seed wiring the suffix CLS tokens read the action tokens, and the action tokens read the
prefix K/V, so the observation reaches act-CLS one layer later; VICReg can then be met by copying the
observation into act-CLS (measured: changing the observation moved act-CLS ~11x more than changing the
plan). Here the delta expert runs over [plan rows | suffix CLS] with *no* observation at all: the prefix is
a block of all-padding zero K/V (so lerobot's layer loop keeps its shapes), masked for every row — action
tokens included. In cross-attention layers the action rows are then fully masked and the guarded
attention returns zero (smolvla_cls/attention.py); in self-attention layers they see each other.

Remainders: the runtime's consistency gate encodes the rows of the queued plan not yet executed. A
remainder of R <= T rows is encoded as those rows at the front of the [T, A] input and `plan_valid`
[T] = (index < R): rows past R are padding, invisible to every token (and their positions are not
counted, so the suffix CLS sit right after the last valid row). Training draws R uniformly in [1, T]
and pairs the observation at frame t with the first R rows of the plan made at t — what a still-valid
old plan's remainder looks like from the current frame.
"""

from __future__ import annotations

import torch
from torch import Tensor


def remainder_mask(lengths: Tensor, chunk_size: int) -> Tensor:
    """bool [B, T]: True for the first lengths[b] rows (the remaining plan), False for the padding."""
    if lengths.ndim != 1:
        raise ValueError(f"lengths: expected a [B] tensor, got shape {tuple(lengths.shape)}")
    if bool(((lengths < 1) | (lengths > chunk_size)).any()):
        raise ValueError(f"lengths: every remainder must be in [1, {chunk_size}], got {lengths.tolist()}")
    return torch.arange(chunk_size, device=lengths.device)[None, :] < lengths[:, None]


def sample_remainders(batch_size: int, chunk_size: int, device=None, generator=None) -> Tensor:
    """int64 [B] remainder lengths, uniform in [1, chunk_size] (the runtime sees every one of them)."""
    return torch.randint(1, chunk_size + 1, (batch_size,), device=device, generator=generator)


def empty_prefix(vlm_with_expert, batch_size: int, length: int, device, dtype) -> tuple[dict, Tensor]:
    """(zero K/V cache of `length` tokens for every VLM layer, all-False prefix pad [B, length]).

    Every column is padding, so no row can attend to it: it only keeps lerobot's cached-forward code path
    (which expects a prefix cache) without handing the pass anything about the observation."""
    text = vlm_with_expert.vlm.config.text_config
    shape = (batch_size, length, text.num_key_value_heads, text.head_dim)
    kv = {i: {"key_states": torch.zeros(shape, device=device, dtype=dtype),
              "value_states": torch.zeros(shape, device=device, dtype=dtype)}
          for i in range(vlm_with_expert.num_vlm_layers)}
    return kv, torch.zeros(batch_size, length, dtype=torch.bool, device=device)
