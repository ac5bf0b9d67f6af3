"""Task symmetries (simtask/symmetry.py) and the training augmentation built on them
(smolvla_cls/augmentation.py): a transformed frame must be exactly the frame of the transformed scene,
with the expert's action and the instruction transformed consistently."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simtask import TaskConfig
from simtask.layout import sample_scene
from simtask.reach_env import clip_action, instruction_for
from simtask.render import render_frame
from simtask.symmetry import Symmetry, colour_permutations, symmetry_group

CFG = TaskConfig()
GROUP = symmetry_group(CFG.colors)
elements = st.sampled_from(GROUP)
seeds = st.integers(min_value=0, max_value=2**40)


def test_group_size_identity_first_and_distinct():
    assert len(GROUP) == 8 * 6  # square symmetries x all RGB permutations of red/green/blue
    assert GROUP[0].is_identity and not any(s.is_identity for s in GROUP[1:])
    assert len(set(GROUP)) == len(GROUP)


def test_colour_permutations_keep_the_colour_set():
    assert len(colour_permutations(["red", "green", "blue"])) == 6
    # yellow/cyan/magenta are the other cube corners: a set mixing them with primaries is less symmetric.
    for perm in colour_permutations(["red", "yellow"]):
        s = Symmetry(channels=perm)
        assert {s.colour("red"), s.colour("yellow")} == {"red", "yellow"}
    assert len(colour_permutations(["red", "yellow"])) < 6
    with pytest.raises(ValueError, match="unknown colour"):
        symmetry_group(["red", "octarine"])


@settings(max_examples=60, deadline=None)
@given(seed=seeds, sym=elements)
def test_transformed_image_is_the_image_of_the_transformed_scene(seed, sym):
    scene = sample_scene(seed, CFG)
    agent = np.random.default_rng(seed).uniform(0.0, 1.0, 2)
    image = render_frame(CFG, scene.target_positions, scene.target_colors, agent)
    moved = render_frame(CFG, sym.point(scene.target_positions), [sym.colour(c) for c in scene.target_colors],
                         sym.point(agent))
    np.testing.assert_array_equal(sym.image(image), moved)
    chw = np.moveaxis(image, -1, 0)
    np.testing.assert_array_equal(sym.image(chw, channels_first=True), np.moveaxis(moved, -1, 0))


@settings(max_examples=60, deadline=None)
@given(seed=seeds, sym=elements)
def test_expert_action_and_instruction_are_equivariant(seed, sym):
    scene = sample_scene(seed, CFG)
    goal, agent = scene.target_positions[scene.goal_index], scene.agent_start
    action = clip_action(goal - agent, CFG.max_step)
    moved_action = clip_action(sym.point(goal) - sym.point(agent), CFG.max_step)
    np.testing.assert_allclose(sym.vector(action), moved_action, atol=1e-12)
    # The renamed instruction names the colour that the (moved) goal disc now has.
    text = instruction_for(scene.target_colors[scene.goal_index])
    assert sym.instruction(text, CFG.colors) == instruction_for(sym.colour(scene.target_colors[scene.goal_index]))


def test_instruction_renames_whole_words_once():
    swap = Symmetry(channels=(1, 0, 2))  # red <-> green
    assert swap.instruction("reach the red target then the green one", CFG.colors) == \
        "reach the green target then the red one"
    assert swap.instruction("reach the reddish target", CFG.colors) == "reach the reddish target"


def test_image_shape_is_checked():
    with pytest.raises(ValueError, match="square RGB image"):
        Symmetry(flip_x=True).image(np.zeros((4, 5, 3)))


torch = pytest.importorskip("torch")


@settings(max_examples=40, deadline=None)
@given(sym=elements, chunk=st.integers(1, 12), seed=st.integers(0, 2**31))
def test_torch_augmentation_matches_the_numpy_symmetry(sym, chunk, seed):
    from smolvla_cls.augmentation import apply_symmetry

    rng = np.random.default_rng(seed)
    image = rng.uniform(size=(3, 16, 16)).astype(np.float32)
    state = rng.uniform(size=2).astype(np.float32)
    action = rng.uniform(-0.06, 0.06, size=(chunk, 2)).astype(np.float32)
    item = {"observation.images.top": torch.from_numpy(image), "observation.state": torch.from_numpy(state),
            "action": torch.from_numpy(action), "task": "reach the blue target", "index": torch.tensor(7)}
    out = apply_symmetry(item, sym, list(CFG.colors))
    np.testing.assert_array_equal(out["observation.images.top"].numpy(), sym.image(image, channels_first=True))
    np.testing.assert_allclose(out["observation.state"].numpy(), sym.point(state), atol=1e-6)
    np.testing.assert_allclose(out["action"].numpy(), sym.vector(action), atol=1e-7)
    assert out["task"] == sym.instruction("reach the blue target", CFG.colors)
    assert out["index"] is item["index"]
    assert item["task"] == "reach the blue target"  # the input item is not modified


@settings(max_examples=20, deadline=None)
@given(sym=elements, frames=st.integers(1, 3))
def test_torch_augmentation_keeps_a_leading_time_axis(sym, frames):
    """lerobot's training items hold images as [T, 3, H, W] (T = 1) and states as [T, 2]."""
    from smolvla_cls.augmentation import apply_symmetry

    rng = np.random.default_rng(frames)
    image = rng.uniform(size=(frames, 3, 8, 8)).astype(np.float32)
    state = rng.uniform(size=(frames, 2)).astype(np.float32)
    item = {"observation.images.top": torch.from_numpy(image), "observation.state": torch.from_numpy(state),
            "action": torch.zeros(4, 2)}
    out = apply_symmetry(item, sym, list(CFG.colors))
    assert tuple(out["observation.images.top"].shape) == image.shape
    for t in range(frames):
        np.testing.assert_array_equal(out["observation.images.top"][t].numpy(),
                                      sym.image(image[t], channels_first=True))
    np.testing.assert_allclose(out["observation.state"].numpy(), sym.point(state), atol=1e-6)


def test_augmented_dataset_items_are_valid_frames(tmp_path):
    """On a real recording: augmented items are transformed copies of the stored frame, the dataset
    keeps lerobot's attributes, survives pickling (DataLoader workers), and non-simtask roots are refused."""
    import pickle
    import random

    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from smolvla_cls.augmentation import enable, simtask_colours
    from smolvla_cls.dataset_recording import RecordingConfig, record_dataset

    root = tmp_path / "reach"
    record_dataset(RecordingConfig(root=root, repo_id="test/aug", episodes=2, seed=1), progress=False)
    colours = simtask_colours(root)
    assert colours == list(CFG.colors)
    delta = {"action": [i / CFG.fps for i in range(5)]}
    plain = LeRobotDataset("test/aug", root=root, delta_timestamps=delta)
    aug = enable(LeRobotDataset("test/aug", root=root, delta_timestamps=delta), colours)
    assert aug.num_frames == plain.num_frames and aug.meta is not None
    random.seed(0)
    seen = set()
    for idx in range(min(plain.num_frames, 12)):
        a, p = aug[idx], plain[idx]
        matches = [s for s in GROUP
                   if np.array_equal(a["observation.images.top"].numpy(),
                                     s.image(p["observation.images.top"].numpy(), channels_first=True))
                   and np.allclose(a["action"].numpy(), s.vector(p["action"].numpy()), atol=1e-6)
                   and np.allclose(a["observation.state"].numpy(), s.point(p["observation.state"].numpy()), atol=1e-6)
                   and a["task"] == s.instruction(p["task"], colours)]
        assert matches, f"frame {idx}: augmented item is not a symmetry of the stored one"
        seen.add(matches[0])
    assert len(seen) > 1  # the element is random per item
    clone = pickle.loads(pickle.dumps(aug))
    assert type(clone).__name__ == type(aug).__name__ and clone.num_frames == aug.num_frames
    (tmp_path / "other" / "meta").mkdir(parents=True)
    (tmp_path / "other" / "meta" / "info.json").write_text(json.dumps({}))
    assert simtask_colours(tmp_path / "other") is None
