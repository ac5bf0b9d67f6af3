"""Checks a policy batch before it reaches torch: a bad key, shape or dtype gets a message naming it."""

from __future__ import annotations

import torch
from lerobot.utils.constants import ACTION, OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS, OBS_STATE


class BatchError(ValueError):
    """A batch field is missing or has the wrong shape/dtype (the message names the field)."""


def _tensor(batch: dict, key: str) -> torch.Tensor:
    if key not in batch:
        raise BatchError(f"batch[{key!r}] is missing (keys present: {sorted(batch)})")
    value = batch[key]
    if not isinstance(value, torch.Tensor):
        raise BatchError(f"batch[{key!r}]: expected a torch.Tensor, got {type(value).__name__}")
    return value


def _expect(cond: bool, key: str, value: torch.Tensor, expected: str) -> None:
    if not cond:
        raise BatchError(f"batch[{key!r}]: expected {expected}, got shape {tuple(value.shape)} dtype {value.dtype}")


def validate_batch(config, batch: dict, need_action: bool) -> None:
    """Raise BatchError unless `batch` has what SmolVLA-CLS reads, with consistent shapes and dtypes."""
    present = [k for k in config.image_features if k in batch]
    if not present:
        raise BatchError(f"batch has none of the image features {list(config.image_features)}")
    bsize = None
    for key in present:
        img = _tensor(batch, key)
        _expect(img.ndim in (4, 5) and img.shape[-3] == 3 and img.is_floating_point(), key, img,
                "a float image [B,3,H,W] (or [B,n_obs,3,H,W]) in [0, 1]")
        bsize = bsize or img.shape[0]
        _expect(img.shape[0] == bsize, key, img, f"batch size {bsize}")
    state_dim = config.robot_state_feature.shape[0] if config.robot_state_feature else None
    state = _tensor(batch, OBS_STATE)
    _expect(state.is_floating_point() and state.ndim in (2, 3) and state.shape[0] == bsize
            and (state_dim is None or state.shape[-1] == state_dim), OBS_STATE, state,
            f"float [B={bsize}, {state_dim}]")
    _expect(state.shape[-1] <= config.max_state_dim, OBS_STATE, state, f"at most max_state_dim={config.max_state_dim} dims")
    tokens = _tensor(batch, OBS_LANGUAGE_TOKENS)
    _expect(tokens.ndim == 2 and tokens.shape[0] == bsize and not tokens.is_floating_point(), OBS_LANGUAGE_TOKENS,
            tokens, f"integer token ids [B={bsize}, L]")
    mask = _tensor(batch, OBS_LANGUAGE_ATTENTION_MASK)
    _expect(mask.shape == tokens.shape and not mask.is_floating_point(), OBS_LANGUAGE_ATTENTION_MASK, mask,
            f"a bool/int mask of the tokens' shape {tuple(tokens.shape)}")
    if need_action:
        action = _tensor(batch, ACTION)
        action_dim = config.action_feature.shape[0]
        _expect(action.is_floating_point() and action.ndim == 3 and action.shape[0] == bsize
                and action.shape[1] == config.chunk_size and action.shape[2] == action_dim, ACTION, action,
                f"float [B={bsize}, chunk_size={config.chunk_size}, action_dim={action_dim}]")
        if "action_is_pad" in batch:
            pad = _tensor(batch, "action_is_pad")
            _expect(pad.shape == action.shape[:2] and pad.dtype == torch.bool, "action_is_pad", pad,
                    f"bool [B={bsize}, {config.chunk_size}]")
