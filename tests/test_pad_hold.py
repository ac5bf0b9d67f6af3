"""`--pad-hold`: chunk rows past an episode's end become supervised zero displacements (the hold)."""

import numpy as np
import pytest
import torch

from simtask import ReachEnv, ScriptedExpert, TaskConfig, run_expert_episode
from simtask.config import ACTION_KEY
from smolvla_cls.augmentation import hold_padding


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


@pytest.mark.parametrize("augment", ["auto", "off"])
def test_pad_hold_without_a_simtask_recording_or_with_augmentation_off_is_refused(tmp_path, augment):
    """A zero displacement is only known to be the hold for simtask's actions: other data is refused, and
    `--augment off` (which would silently drop the option) too."""
    from types import SimpleNamespace

    from smolvla_cls.train import _augmented

    (tmp_path / "meta").mkdir()
    with pytest.raises(SystemExit, match="--pad-hold"):
        _augmented(object(), SimpleNamespace(augment=augment, dataset_root=tmp_path, pad_hold=True))
