"""CLS-aware attention masks and RoPE positions (the one place the mask rules live).

Sequence layout (any part may be absent):
    [ prefix CLS (NP) | images · language · state | actions (T) | suffix CLS (NS) ]
     '--------- prefix (length P) ----------------'  '------- suffix -------'

Rules, on top of SmolVLA's own block rule (`make_att_2d_masks`):
1. Prefix CLS rows see every valid prefix token (images, language, state) and each other — nothing
   of the suffix.
2. Prefix CLS columns are seen by prefix CLS rows only: images, language, state and actions never see
   them, so the VLM features and the action expert's outputs are exactly plain SmolVLA's. The CLS
   tokens are pure read-outs; starting from a SmolVLA checkpoint leaves its behaviour untouched.
3. Suffix CLS rows never see a prefix token (in self-attention layers their prefix columns are masked;
   in cross-attention layers — which only offer prefix keys — their rows are fully masked and the
   guarded attention returns zero). They see the action tokens allowed by the window (all, or the first
   n and last n) and each other. An action-CLS that could read the observation could copy it and make
   VICReg trivial.
4. Suffix CLS columns are seen by suffix CLS rows only: action outputs are identical with and without
   suffix CLS tokens appended.

Positions (RoPE): real tokens keep exactly the positions plain SmolVLA gives them (the CLS tokens are not
counted), so rotary phases of the pretrained VLM are unchanged; all prefix CLS tokens sit at position 0
(they are global read-outs, their relative offset to every real token is then its own position); suffix
CLS tokens continue after the last action.
"""

from __future__ import annotations

import torch

# Token kinds used to express the rules above.
PREFIX_CLS, PREFIX, ACTION, SUFFIX_CLS = 0, 1, 2, 3


def token_kinds(prefix_len: int, num_prefix_cls: int, suffix_len: int, num_suffix_cls: int,
                device: torch.device | None = None) -> torch.Tensor:
    """int [N] kind of every position for the layout above (N = prefix_len + suffix_len)."""
    kinds = torch.full((prefix_len + suffix_len,), PREFIX, dtype=torch.int64, device=device)
    kinds[:num_prefix_cls] = PREFIX_CLS
    kinds[prefix_len:] = ACTION
    if num_suffix_cls:
        kinds[prefix_len + suffix_len - num_suffix_cls:] = SUFFIX_CLS
    return kinds


def suffix_cls_action_columns(chunk_size: int, window: int | None, device=None) -> torch.Tensor:
    """bool [T]: which action tokens a suffix CLS may attend (None = all; n = first n and last n)."""
    cols = torch.ones(chunk_size, dtype=torch.bool, device=device)
    if window is not None:
        idx = torch.arange(chunk_size, device=device)
        cols = (idx < window) | (idx >= chunk_size - window)
    return cols


def make_att_2d_masks_with_cls(
    pad_masks: torch.Tensor,
    att_masks: torch.Tensor,
    *,
    prefix_len: int,
    num_prefix_cls: int,
    num_suffix_cls: int = 0,
    suffix_cls_window: int | None = None,
) -> torch.Tensor:
    """bool [B, N, N]: True where row token may attend column token (rules in the module docstring).

    pad_masks: bool [B, N] (False = padding); att_masks: [B, N] SmolVLA block markers.
    """
    if pad_masks.ndim != 2 or att_masks.shape != pad_masks.shape:
        raise ValueError(f"pad_masks/att_masks: expected two [B, N] tensors, got {tuple(pad_masks.shape)} "
                         f"and {tuple(att_masks.shape)}")
    n = pad_masks.shape[1]
    suffix_len = n - prefix_len
    if suffix_len < 0 or num_prefix_cls > prefix_len or num_suffix_cls > max(suffix_len, 0):
        raise ValueError(f"prefix_len={prefix_len}, num_prefix_cls={num_prefix_cls}, "
                         f"num_suffix_cls={num_suffix_cls} do not fit a sequence of length {n}")
    device = pad_masks.device
    pad = pad_masks.bool()
    # SmolVLA's block rule: j visible to i iff cumsum(att)[j] <= cumsum(att)[i] (int32: CumSum on bool is
    # rejected by some exporters).
    cs = torch.cumsum(att_masks.to(torch.int32), dim=1)
    base = cs[:, None, :] <= cs[:, :, None]

    kinds = token_kinds(prefix_len, num_prefix_cls, suffix_len, num_suffix_cls, device)
    row, col = kinds[:, None], kinds[None, :]
    # Rule 1: prefix CLS rows see the whole prefix (CLS, images, language, state), nothing of the suffix.
    # (boolean algebra instead of torch.where: onnxruntime-CPU has no Where kernel for bool tensors)
    pc_row = (row == PREFIX_CLS)[None]
    allowed = (pc_row & (col <= PREFIX)[None]) | (~pc_row & base)
    # Rule 2: prefix CLS columns only for prefix CLS rows.
    allowed = allowed & ~((col == PREFIX_CLS) & (row != PREFIX_CLS))[None]
    if num_suffix_cls:
        chunk = suffix_len - num_suffix_cls
        act_cols = torch.zeros(n, dtype=torch.bool, device=device)
        act_cols[prefix_len:prefix_len + chunk] = suffix_cls_action_columns(chunk, suffix_cls_window, device)
        sc_row = (row == SUFFIX_CLS)
        # Rule 3: suffix CLS rows see their action window and each other, never the prefix.
        sc_allowed = act_cols[None, :] | (col == SUFFIX_CLS)
        allowed = (sc_row[None] & sc_allowed[None]) | (~sc_row[None] & allowed)
        # Rule 4: suffix CLS columns only for suffix CLS rows.
        allowed = allowed & ~((col == SUFFIX_CLS) & ~sc_row)[None]
    return allowed & pad[:, None, :] & pad[:, :, None]


def position_ids_with_cls(pad_masks: torch.Tensor, num_prefix_cls: int) -> torch.Tensor:
    """int64 [B, N] RoPE positions: plain SmolVLA positions for real tokens, 0 for prefix CLS tokens."""
    real = pad_masks.to(torch.int64)
    if num_prefix_cls:
        real = torch.cat([torch.zeros_like(real[:, :num_prefix_cls]), real[:, num_prefix_cls:]], dim=1)
    return torch.clamp(torch.cumsum(real, dim=1) - 1, min=0)
