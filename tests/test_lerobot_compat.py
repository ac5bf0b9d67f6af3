"""The version seams (smolvla_cls/lerobot_compat.py) on the installed lerobot, and what lerobot 0.6's
"spawn" DataLoader workers need: the prepared training dataset survives pickling into a fresh process."""

from __future__ import annotations

import dataclasses
import multiprocessing
import pickle
import random
from types import SimpleNamespace

import pytest
import torch

from smolvla_cls import lerobot_compat

lerobot_dataset = pytest.importorskip("lerobot.datasets.lerobot_dataset")
DELTA = {"action": [i / 10 for i in range(5)]}


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    from smolvla_cls.dataset_recording import RecordingConfig, record_dataset

    root = tmp_path_factory.mktemp("compat") / "reach"
    record_dataset(RecordingConfig(root=root, repo_id="test/compat", episodes=3, seed=2), progress=False)
    return root


def _dataset(root, episodes=None):
    return lerobot_dataset.LeRobotDataset("test/compat", root=root, delta_timestamps=DELTA, episodes=episodes)


def test_train_config_keyword_is_a_field_of_this_release():
    from lerobot.configs.train import TrainPipelineConfig

    (name, value), = lerobot_compat.train_config_kwargs(0).items()
    assert value == 0 and name in {f.name for f in dataclasses.fields(TrainPipelineConfig)}


def test_datasets_transformed_wraps_the_loops_factory_and_restores_it():
    from lerobot.scripts import lerobot_train

    name = "make_train_eval_datasets" if hasattr(lerobot_train, "make_train_eval_datasets") else "make_dataset"
    original = getattr(lerobot_train, name)
    setattr(lerobot_train, name, lambda cfg: ("train", None) if name != "make_dataset" else "train")
    try:
        with lerobot_compat.datasets_transformed(lerobot_train, lambda d: f"seen:{d}"):
            made = getattr(lerobot_train, name)(None)
        assert made == (("seen:train", None) if name != "make_dataset" else "seen:train")
        assert getattr(lerobot_train, name)(None) in (("train", None), "train")  # restored
    finally:
        setattr(lerobot_train, name, original)


def test_only_the_train_dataset_is_transformed_on_a_train_eval_split():
    """lerobot 0.6 builds its eval split with `image_transforms=None`: our augmentation must leave it alone too."""
    from types import SimpleNamespace

    fake = SimpleNamespace(make_train_eval_datasets=lambda cfg: ("train", "eval"))
    with lerobot_compat.datasets_transformed(fake, lambda d: f"seen:{d}"):
        assert fake.make_train_eval_datasets(None) == ("seen:train", "eval")
    assert fake.make_train_eval_datasets(None) == ("train", "eval")


def test_dataset_info_is_a_dict_with_the_features(recording):
    info = lerobot_compat.dataset_info(recording)
    assert isinstance(info, dict) and info["fps"] == 10
    assert list(info["features"]["action"]["shape"]) == [2]


@pytest.mark.parametrize("episodes", [None, [1, 2]])
def test_fast_chunk_queries_equal_lerobots_own(recording, episodes):
    """Same chunks and padding flags as lerobot's Arrow look-ups, also for an episode subset (index map)."""
    from smolvla_cls.chunk_queries import CachedChunkQueries, enable_fast_chunk_queries

    plain, fast = _dataset(recording, episodes), enable_fast_chunk_queries(_dataset(recording, episodes))
    assert isinstance(lerobot_compat.dataset_reader(fast)._query_hf_dataset, CachedChunkQueries)
    for idx in range(0, len(plain), 7):
        a, b = plain[idx], fast[idx]
        assert torch.equal(a["action"], b["action"]) and torch.equal(a["action_is_pad"], b["action_is_pad"])


def _item_in_fresh_process(blob: bytes) -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]:
    dataset = pickle.loads(blob)
    random.seed(0)
    item = dataset[4]
    return type(dataset).__name__, item["action"], item["observation.state"], item["action_is_pad"]


def test_prepared_dataset_works_in_a_spawned_worker(recording):
    """What `make train` hands lerobot's loop (fast look-ups + symmetry augmentation + chunk relabelling)
    unpickles and serves items in a "spawn" process, where nothing of this process's state exists."""
    from smolvla_cls.train import _prepared_dataset

    dataset = _prepared_dataset(_dataset(recording), SimpleNamespace(augment="on", dataset_root=recording,
                                                                      irrelevant_augment=0.5,
                                                                      irrelevant_augment_stages="main",
                                                                      pad_hold=True, mask_after_jump=True))
    random.seed(0)
    want = dataset[4]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        name, action, state, pad = pool.apply(_item_in_fresh_process, (pickle.dumps(dataset),))
    assert name == type(dataset).__name__ == "SymmetryAugmentedLeRobotDataset"
    assert torch.equal(action, want["action"]) and torch.equal(state, want["observation.state"])
    assert torch.equal(pad, want["action_is_pad"])
    assert dataset._pad_hold and dataset._event_ticks


def test_relabelled_training_items_hold_at_the_end_and_drop_rows_after_a_jump(recording):
    """Through the wrapper `make train` uses: rows past an episode's end are supervised zeros; in a perturbed
    episode the frames before the jump keep only the rows before it, and the first post-jump frame all."""
    from smolvla_cls.dataset_recording import read_sidecar
    from smolvla_cls.train import _prepared_dataset

    args = SimpleNamespace(augment="on", dataset_root=recording, irrelevant_augment=0.0,
                           irrelevant_augment_stages="main", pad_hold=True, mask_after_jump=True)
    dataset = _prepared_dataset(_dataset(recording), args)
    episodes = read_sidecar(recording)["episodes"]
    jumped = next(e for e in episodes if e["perturb_tick"] is not None)
    start = sum(e["length"] for e in episodes if e["episode_index"] < jumped["episode_index"])
    tick, rows = jumped["perturb_tick"], len(DELTA["action"])
    for back in (3, 1, 0):
        item = dataset[start + tick - back]
        assert int(item["frame_index"]) == tick - back
        want = [j >= back > 0 for j in range(rows)]
        assert item["action_is_pad"].tolist() == want, back
    last = dataset[start + jumped["length"] - 1]  # the episode's last frame: 1 real row, then the hold
    assert not last["action_is_pad"].any()
    assert last["action"][1:].abs().sum() == 0 and last["action"][0].abs().sum() > 0


@pytest.mark.parametrize(("stages", "stage", "want"), [("main", "main", 0.5), ("main", "delta", 0.0),
                                                       ("main,delta", "delta", 0.5), ("delta", "main", 0.0)])
def test_irrelevant_changes_reach_only_the_stages_named(recording, stages, stage, want):
    from smolvla_cls.train import _prepared_dataset

    args = SimpleNamespace(augment="on", dataset_root=recording, irrelevant_augment=0.5,
                           irrelevant_augment_stages=stages)
    assert _prepared_dataset(_dataset(recording), args, stage)._irrelevant_p == want
