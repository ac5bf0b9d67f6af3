"""Round trip of the expert recorder through a real lerobot 0.4.4 LeRobotDataset on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simtask import IMAGE_KEY, STATE_KEY, ReachEnv, TaskConfig
from smolvla_cls.dataset_recording import (
    SIDECAR,
    RecordingConfig,
    _replace_problem,
    main,
    perturb_flags,
    record_dataset,
)

lerobot_dataset = pytest.importorskip("lerobot.datasets.lerobot_dataset")
REPO_ID = "test/simtask_reach"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec") / "reach"
    stale = root.with_name(".reach.killed1.lock")  # a recording to the same root that was killed (lock not held)
    stale.write_text("")
    stale.with_suffix(".partial").mkdir()
    (stale.with_suffix(".partial") / "data.parquet").write_bytes(b"x" * 1024)
    cfg = RecordingConfig(root=root, repo_id=REPO_ID, episodes=5, seed=3, perturb_fraction=0.4)
    summary = record_dataset(cfg, progress=False)
    return cfg, summary


def test_round_trip_frames_features_tasks(recorded):
    cfg, summary = recorded
    ds = lerobot_dataset.LeRobotDataset(REPO_ID, root=cfg.root)
    side = json.loads((cfg.root / SIDECAR).read_text())
    assert ds.num_episodes == 5 and ds.meta.total_episodes == 5
    assert ds.num_frames == summary.frames == sum(e["length"] for e in side["episodes"])
    assert ds.fps == 10
    feats = ds.meta.features
    assert feats[IMAGE_KEY]["dtype"] == "image" and tuple(feats[IMAGE_KEY]["shape"]) == (64, 64, 3)
    assert feats[STATE_KEY]["dtype"] == "float32" and tuple(feats[STATE_KEY]["shape"]) == (2,)
    assert feats["action"]["dtype"] == "float32" and tuple(feats["action"]["shape"]) == (2,)
    assert sum(e["perturb"] for e in side["episodes"]) == 2 == summary.perturbed_episodes
    assert not list(cfg.root.parent.glob(".reach.*"))  # neither its own scratch nor a killed recording's

    env = ReachEnv(TaskConfig())
    start = 0
    for ep in side["episodes"]:
        first = ds[start]
        obs = env.reset(seed=ep["seed"], perturb=ep["perturb"])
        # Frame 0 of each episode is exactly the env's first observation (PNG storage is lossless).
        img = (first[IMAGE_KEY].numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
        assert first[IMAGE_KEY].shape == (3, 64, 64)
        assert np.array_equal(img, obs[IMAGE_KEY])
        assert np.allclose(first[STATE_KEY].numpy(), obs[STATE_KEY])
        assert first["task"] == obs["task"] == ep["task"]
        assert int(first["episode_index"]) == ep["episode_index"] and int(first["frame_index"]) == 0
        last = ds[start + ep["length"] - 1]
        assert last["task"] == ep["task"] and int(last["frame_index"]) == ep["length"] - 1
        if ep["perturb"]:
            assert ep["length"] > ep["perturb_tick"]
        start += ep["length"]


def test_stats_match_the_data(recorded):
    cfg, _ = recorded
    ds = lerobot_dataset.LeRobotDataset(REPO_ID, root=cfg.root)
    actions = np.stack([ds.hf_dataset[i]["action"].numpy() for i in range(len(ds))])
    states = np.stack([ds.hf_dataset[i][STATE_KEY].numpy() for i in range(len(ds))])
    stats = ds.meta.stats
    assert np.allclose(stats["action"]["mean"], actions.mean(0), atol=1e-5)
    assert np.allclose(stats["action"]["std"], actions.std(0), atol=1e-4)
    assert np.allclose(stats[STATE_KEY]["min"], states.min(0)) and np.allclose(stats[STATE_KEY]["max"], states.max(0))
    assert int(np.asarray(stats["action"]["count"]).item()) == len(ds)
    # Recorded actions are the clean expert actions: never longer than max_step.
    assert np.all(np.linalg.norm(actions, axis=1) <= TaskConfig().max_step + 1e-6)
    img_mean = np.asarray(stats[IMAGE_KEY]["mean"])
    assert img_mean.shape == (3, 1, 1) and np.all((img_mean > 0.3) & (img_mean < 0.7))  # mid-grey dominated


def test_rerun_is_idempotent_and_mismatch_is_refused(recorded, capsys):
    cfg, summary = recorded
    info = cfg.root / "meta/info.json"
    before = info.stat().st_mtime_ns
    again = record_dataset(cfg, progress=False)
    assert again.reused and again.frames == summary.frames and info.stat().st_mtime_ns == before
    argv = [
        "--root",
        str(cfg.root),
        "--repo-id",
        REPO_ID,
        "--episodes",
        "5",
        "--seed",
        "3",
        "--perturb-fraction",
        "0.4",
        "--quiet",
    ]
    assert main(argv) == 0
    assert "already holds" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="seed"):
        record_dataset(
            RecordingConfig(root=cfg.root, repo_id=REPO_ID, episodes=5, seed=4, perturb_fraction=0.4), progress=False
        )


def test_a_reused_recording_still_sweeps_killed_recorders_folders(recorded):
    """`make train` re-runs `make dataset` every time: the reuse must clean up too, not only a re-record."""
    cfg, _ = recorded
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    legacy = cfg.root.with_name(f".{cfg.root.name}.partial-{dead.pid}")  # the recorder before atomic_folder
    (legacy / "meta").mkdir(parents=True)
    (legacy / "meta" / "info.json").write_text("{}")
    then = time.time() - 2 * 24 * 3600
    for p in (legacy / "meta" / "info.json", legacy / "meta", legacy):
        os.utime(p, (then, then))
    lock = cfg.root.with_name(f".{cfg.root.name}.killed2.lock")  # a current recorder, killed
    lock.write_text("")
    lock.with_suffix(".partial").mkdir()
    assert record_dataset(cfg, progress=False).reused
    assert not legacy.exists() and not lock.exists() and not lock.with_suffix(".partial").exists()
    assert (cfg.root / SIDECAR).is_file()

def test_default_recording_identity_has_no_hold_key(recorded):
    cfg, _ = recorded
    side = json.loads((cfg.root / SIDECAR).read_text())
    # K = 0 keeps the identity (and so the reuse of recordings made before the option) unchanged.
    assert set(side["identity"]) == {"repo_id", "episodes", "seed", "perturb_fraction", "noise_std", "task"}
    assert all("success_length" not in e for e in side["episodes"])


def test_hold_after_success_recording_and_its_identity(recorded, tmp_path):
    cfg, _ = recorded
    root = tmp_path / "hold"
    held = RecordingConfig(root=root, repo_id=REPO_ID, episodes=5, seed=3, perturb_fraction=0.4, hold_after_success=4)
    summary = record_dataset(held, progress=False)
    side = json.loads((root / SIDECAR).read_text())
    assert side["identity"]["hold_after_success"] == 4
    base = json.loads((cfg.root / SIDECAR).read_text())["episodes"]
    assert all(e["length"] == e["success_length"] + 4 for e in side["episodes"])
    # The first episode is the K = 0 one plus 4 frames (later ones differ: the hold draws execution noise).
    assert side["episodes"][0]["seed"] == base[0]["seed"] and side["episodes"][0]["success_length"] == base[0]["length"]
    ds = lerobot_dataset.LeRobotDataset(REPO_ID, root=root)
    assert ds.num_frames == summary.frames == sum(e["length"] for e in side["episodes"])
    # Neither recording is ever reused for the other, whichever way round.
    with pytest.raises(FileExistsError, match="hold_after_success"):
        record_dataset(RecordingConfig(root=root, repo_id=REPO_ID, episodes=5, seed=3, perturb_fraction=0.4),
                       progress=False)
    with pytest.raises(FileExistsError, match="hold_after_success"):
        record_dataset(RecordingConfig(root=cfg.root, repo_id=REPO_ID, episodes=5, seed=3, perturb_fraction=0.4,
                                       hold_after_success=4), progress=False)
    with pytest.raises(ValueError, match="hold_after_success"):
        RecordingConfig(root=root, hold_after_success=-2)


def test_force_rerecords(tmp_path):
    root = tmp_path / "ds"
    record_dataset(RecordingConfig(root=root, repo_id=REPO_ID, episodes=2, seed=0), progress=False)
    s = record_dataset(RecordingConfig(root=root, repo_id=REPO_ID, episodes=3, seed=0, force=True), progress=False)
    assert not s.reused and json.loads((root / "meta/info.json").read_text())["total_episodes"] == 3


def test_an_interrupted_force_rerecord_keeps_the_old_recording(tmp_path, monkeypatch):
    """--force replaces the recording only once the new one is complete (the atomic swap), never deletes first."""
    import smolvla_cls.dataset_recording as rec

    root = tmp_path / "ds"
    record_dataset(RecordingConfig(root=root, repo_id=REPO_ID, episodes=2, seed=0), progress=False)
    before = sorted(str(p.relative_to(root)) for p in root.rglob("*"))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rec, "_record_episodes", killed)
    with pytest.raises(KeyboardInterrupt):
        record_dataset(RecordingConfig(root=root, repo_id=REPO_ID, episodes=3, seed=0, force=True), progress=False)
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == before
    assert json.loads((root / "meta/info.json").read_text())["total_episodes"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]

def _existing_root(root, kind: str) -> None:
    """A --root that already exists, of one `kind`."""
    root.mkdir()
    if kind == "notes":
        (root / "notes.txt").write_text("keep me")
    if kind in ("sidecar only", "other recording", "corrupt info"):
        (root / "meta").mkdir()
        (root / SIDECAR).write_text(json.dumps({"version": 1, "identity": {"seed": 99}}))
    if kind == "corrupt sidecar":
        (root / "meta").mkdir()
        (root / SIDECAR).write_text("{not json")
        (root / "meta/info.json").write_text("{}")
    if kind == "corrupt info":
        (root / SIDECAR).write_text(json.dumps({"version": 1, "identity": RecordingConfig(
            root=root, repo_id=REPO_ID, episodes=1, seed=0).identity()}))
        (root / "meta/info.json").write_text("{not json")


@pytest.mark.parametrize("kind", ["empty", "notes", "sidecar only", "other recording", "corrupt sidecar",
                                  "corrupt info"])
def test_an_existing_root_gets_advice_that_works(tmp_path, capsys, kind):
    """Refused without --force: one line naming the root; it suggests --force only where --force then records
    (before: it suggested --force for a folder of other files, which --force then refused). An empty folder
    is recorded into, no --force needed."""
    root = tmp_path / "ds"
    _existing_root(root, kind)
    argv = ["--root", str(root), "--repo-id", REPO_ID, "--episodes", "1", "--seed", "0", "--quiet"]
    code = main(argv)
    err = capsys.readouterr().err
    if kind == "empty":
        assert code == 0 and json.loads((root / "meta/info.json").read_text())["total_episodes"] == 1
        return
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(root) in err, err
    forced = main([*argv, "--force"])
    forced_err = capsys.readouterr().err
    if "--force" in err:
        assert forced == 0 and json.loads((root / "meta/info.json").read_text())["total_episodes"] == 1
    else:
        assert forced == 2 and "--root" in forced_err and (root / "notes.txt").read_text() == "keep me"

def test_a_task_the_expert_cannot_finish_is_one_error_naming_it(tmp_path):
    """Every rollout failing used to end in a bare StopIteration from the seed list; nothing is left behind."""
    task = TaskConfig(max_steps=3, perturb_window=(1, 2))  # 3 steps: the expert never reaches a disc
    with pytest.raises(ValueError, match="max_steps=3"):
        record_dataset(RecordingConfig(root=tmp_path / "ds", repo_id=REPO_ID, episodes=2, task=task), progress=False)
    assert list(tmp_path.iterdir()) == []

def test_force_refuses_to_delete_a_non_dataset_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    assert "refusing" in _replace_problem(tmp_path)
    with pytest.raises(ValueError, match="refusing"):
        record_dataset(RecordingConfig(root=tmp_path, repo_id=REPO_ID, episodes=1, force=True), progress=False)
    assert (tmp_path / "precious.txt").exists()


@pytest.mark.parametrize(
    "flag,value,name",
    [
        ("--episodes", "0", "--episodes"),
        ("--perturb-fraction", "1.5", "--perturb-fraction"),
        ("--image-size", "8", "--image-size"),
        ("--repo-id", "noslash", "--repo-id"),
        ("--hold-after-success", "-1", "--hold-after-success"),
        ("--image-size", "100000", "--image-size"),  # was a 74.5 GiB MemoryError traceback
        ("--episodes", "99999999999999999999", "--episodes"),  # was "Maximum allowed dimension exceeded"
    ],
)
def test_cli_bad_args_name_the_field(tmp_path, capsys, flag, value, name):
    with pytest.raises(SystemExit) as exc:
        main(["--root", str(tmp_path / "x"), flag, value])
    assert exc.value.code == 2
    assert name in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 500), fraction=st.floats(0, 1), seed=st.integers(0, 2**31))
def test_perturb_flags_exact_count_and_deterministic(n, fraction, seed):
    flags = perturb_flags(n, fraction, seed)
    assert flags.sum() == round(fraction * n)
    assert np.array_equal(flags, perturb_flags(n, fraction, seed))
