"""What a training chunk should teach, for simtask recordings: two relabellings of lerobot's action chunk.

- `hold_padding`: the rows past an episode's end are a hold (a zero displacement), supervised. lerobot repeats
  the last action there and the loss masks it, so a model never learns what follows success and its chunk
  tails keep moving (measured: an n = 20 model's plans overshoot the goal by 0.36 on average; docs/06c).
  Zero is the hold for simtask's displacement actions only (an absolute-target robot holds by repeating its
  last target).
- `mask_after_event`: the rows that answer an event the frame could not see (a target jump at a later frame
  of the episode) are not the expert's response to this observation: they become padding, unsupervised.
  Without it, a frame waiting at the goal before a jump is labelled with a move toward wherever the target
  will jump, and the model learns to wander off while it waits (overshoot 0.13 → 0.04 with it; docs/06c).
"""

from __future__ import annotations

from typing import Any

import torch

from simtask.config import ACTION_KEY

PAD_KEY = f"{ACTION_KEY}_is_pad"


def hold_padding(item: dict[str, Any]) -> dict[str, Any]:
    """`item` with its padded chunk rows set to zero and no longer padding (a new dict; the input is kept)."""
    pad = item.get(PAD_KEY)
    if pad is None or not bool(pad.any()):
        return item
    action = item[ACTION_KEY].clone()
    action[pad.bool()] = 0.0
    return {**item, ACTION_KEY: action, PAD_KEY: torch.zeros_like(pad)}


def mask_after_event(item: dict[str, Any], event_tick: int | None) -> dict[str, Any]:
    """`item` (frame f of its episode) with chunk rows j >= event_tick - f marked as padding when the event
    falls inside the chunk after the frame (observation `event_tick` is the first that shows it)."""
    if event_tick is None or PAD_KEY not in item:
        return item
    frame = int(item["frame_index"])
    pad = item[PAD_KEY]
    first = event_tick - frame
    if not 0 < first < len(pad):
        return item
    pad = pad.clone()
    pad[first:] = True
    return {**item, PAD_KEY: pad}


def relabel_chunk(item: dict[str, Any], pad_hold: bool, event_ticks: dict[int, int] | None) -> dict[str, Any]:
    """Both relabellings in their order: the episode end is a hold first, then rows after an event are masked
    (they are not a hold: the agent may still have been on its way when the target jumped)."""
    if pad_hold:
        item = hold_padding(item)
    if event_ticks:
        item = mask_after_event(item, event_ticks.get(int(item["episode_index"])))
    return item
