"""Chunk relabelling for simtask recordings (smolvla_cls/chunk_labels.py): `--pad-hold`, `--mask-after-jump`."""

import numpy as np
import pytest
import torch

from simtask import ReachEnv, ScriptedExpert, TaskConfig, run_expert_episode
from simtask.config import ACTION_KEY
from smolvla_cls.chunk_labels import hold_padding, mask_after_event, relabel_chunk


@pytest.mark.parametrize("n_pad", [0, 1, 4, 10])
def test_padded_rows_become_supervised_zeros_and_the_rest_is_kept(n_pad):
    t = 10
    action = torch.arange(t * 2, dtype=torch.float32).reshape(t, 2) + 1.0
    pad = torch.zeros(t, dtype=torch.bool)
    if n_pad:
        pad[-n_pad:] = True
    item = {ACTION_KEY: action, "action_is_pad": pad, "task": "go to the red disc"}
    out = hold_padding(item)
    assert not out["action_is_pad"].any()  # every row is now in the loss
    assert torch.equal(out[ACTION_KEY][: t - n_pad], action[: t - n_pad])
    assert torch.count_nonzero(out[ACTION_KEY][t - n_pad:]) == 0
    assert out["task"] == item["task"]
    assert torch.equal(item[ACTION_KEY], torch.arange(t * 2, dtype=torch.float32).reshape(t, 2) + 1.0)  # input kept


def test_an_item_without_padding_information_is_returned_unchanged():
    item = {ACTION_KEY: torch.ones(3, 2)}
    assert hold_padding(item) is item


def test_zero_is_the_experts_hold_at_the_goal():
    """The label is right for simtask: past success the expert's clean hold is one short step to the disc's
    centre (inside the success radius) and then zero, so a tail that stops where success was reached is what
    holding would have recorded, up to that one step the success test does not need."""
    cfg = TaskConfig()
    ep = run_expert_episode(ReachEnv(cfg), ScriptedExpert(noise_std=0.0, seed=0), seed=3, hold_after_success=5)
    assert ep.success
    hold = np.stack(ep.actions[ep.success_length:])
    assert np.linalg.norm(hold[0]) <= cfg.success_radius
    assert np.linalg.norm(hold[1:], axis=1).max() < 1e-6


@pytest.mark.parametrize("frame,event,first", [(0, 5, 5), (3, 5, 2), (4, 5, 1), (5, 5, None), (0, 10, None),
                                               (0, 40, None), (7, 5, None)])
def test_rows_after_an_unseen_jump_become_padding_and_nothing_else_changes(frame, event, first):
    t = 10
    item = {ACTION_KEY: torch.ones(t, 2), "action_is_pad": torch.zeros(t, dtype=torch.bool),
            "frame_index": torch.tensor(frame), "episode_index": torch.tensor(3)}
    out = mask_after_event(item, event)
    expected = torch.zeros(t, dtype=torch.bool)
    if first is not None:
        expected[first:] = True
    assert torch.equal(out["action_is_pad"], expected)
    assert torch.equal(out[ACTION_KEY], item[ACTION_KEY])
    assert not item["action_is_pad"].any()  # input kept


def test_relabel_holds_the_episode_end_then_masks_after_the_jump():
    """Episode end first (zeros, supervised), then rows after the jump unsupervised; an episode without a jump
    only gets the hold."""
    t = 6
    pad = torch.tensor([0, 0, 0, 0, 1, 1], dtype=torch.bool)
    item = {ACTION_KEY: torch.ones(t, 2), "action_is_pad": pad, "frame_index": torch.tensor(8),
            "episode_index": torch.tensor(1)}
    out = relabel_chunk(item, pad_hold=True, event_ticks={1: 10})
    assert out["action_is_pad"].tolist() == [False, False, True, True, True, True]
    assert out[ACTION_KEY][4:].abs().sum() == 0
    other = relabel_chunk({**item, "episode_index": torch.tensor(2)}, pad_hold=True, event_ticks={1: 10})
    assert not other["action_is_pad"].any()
    assert relabel_chunk(item, pad_hold=False, event_ticks=None) is item


def test_the_recording_names_every_perturbed_episodes_jump_tick(tmp_path):
    import json

    from smolvla_cls.train import jump_ticks

    (tmp_path / "meta").mkdir()
    side = {"version": 1, "identity": {}, "episodes": [
        {"episode_index": 0, "perturb": False, "perturb_tick": None},
        {"episode_index": 1, "perturb": True, "perturb_tick": 17, "length": 30},
        {"episode_index": 2, "perturb": True, "perturb_tick": 25, "length": 40, "success_length": 20},
        {"episode_index": 3, "perturb": True, "perturb_tick": 12, "length": 60, "success_length": None}]}
    (tmp_path / "meta" / "simtask_recording.json").write_text(json.dumps(side))
    # episode 2 succeeded before its scene's jump tick; episode 3 never succeeded (held recording: None)
    assert jump_ticks(tmp_path) == {1: 17, 3: 12}


@pytest.mark.parametrize("flag", ["pad_hold", "mask_after_jump"])
@pytest.mark.parametrize("augment", ["auto", "off"])
def test_relabelling_without_a_simtask_recording_or_with_augmentation_off_is_refused(tmp_path, augment, flag):
    """A zero displacement is only known to be the hold for simtask's actions: other data is refused, and
    `--augment off` (which would silently drop the option) too."""
    from types import SimpleNamespace

    from smolvla_cls.train import _augmented

    (tmp_path / "meta").mkdir()
    with pytest.raises(SystemExit, match="--" + flag.replace("_", "-")):
        _augmented(object(), SimpleNamespace(augment=augment, dataset_root=tmp_path, **{flag: True}))
