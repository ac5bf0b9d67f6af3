"""The manifest's `robot` section: written at export from a LeRobotDataset's metadata (created here with
lerobot itself, the default task's features), read by the runtime's RobotInterface, and matching the
simulated robot's motor and camera names."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from export.graphs.checkpoint_loading import ExportInputError
from export.graphs.export_checks import check_dataset_stats
from export.graphs.robot_section import dataset_root_from_checkpoint, robot_section, training_cwd
from robot_adapters.sim_reach import SimReachRobot
from runtime.manifest import Manifest, ManifestError
from runtime.robot_interface import RobotInterface
from simtask.config import TaskConfig
from tests.fake_artifacts import build_fake_artifacts

pytest.importorskip("lerobot.datasets.lerobot_dataset")


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    from smolvla_cls.dataset_recording import dataset_features

    root = tmp_path_factory.mktemp("ds") / "reach"
    LeRobotDatasetMetadata.create(repo_id="local/reach", fps=TaskConfig().fps, features=dataset_features(TaskConfig()),
                                  root=root, use_videos=False)
    return root


def test_section_from_the_dataset(dataset_root):
    sec = robot_section(dataset_root, 2, 2, ["observation.images.top"])
    assert sec == {"fps": 10, "action_names": ["dx", "dy"], "state_names": ["x", "y"],
                   "cameras": {"observation.images.top": {"height": 64, "width": 64, "channels": 3}}}
    json.dumps(sec)  # goes into manifest.json as is


def test_dataset_mismatch_names_the_feature(dataset_root, tmp_path):
    with pytest.raises(ExportInputError, match="'observation.state' needs 3 names"):
        robot_section(dataset_root, 2, 3, ["observation.images.top"])
    with pytest.raises(ExportInputError, match="observation.images.wrist"):
        robot_section(dataset_root, 2, 2, ["observation.images.wrist"])
    with pytest.raises(ExportInputError, match="no LeRobotDataset"):
        robot_section(tmp_path, 2, 2, [])


def test_dataset_root_from_train_config(tmp_path, dataset_root, capsys):
    assert dataset_root_from_checkpoint(tmp_path) is None
    (tmp_path / "train_config.json").write_text(json.dumps({"dataset": {"repo_id": "local/reach", "root": str(dataset_root)}}))
    assert dataset_root_from_checkpoint(tmp_path) == dataset_root
    (tmp_path / "train_config.json").write_text(json.dumps({"dataset": {"repo_id": "local/reach", "root": "elsewhere/reach"}}))
    assert dataset_root_from_checkpoint(tmp_path) is None  # trained on another machine: no section, a warning
    assert "--dataset-root" in capsys.readouterr().err


def _train_layout(base, output_dir: str, root: str, link: bool):
    """`make train`'s layout under `base`: <output_dir>/checkpoints/000004/pretrained_model with a train_config,
    optionally reached through the `checkpoints -> stage_x/checkpoints` link train.py makes."""
    run = base / output_dir
    ckpt = run / "checkpoints" / "000004" / "pretrained_model"
    ckpt.mkdir(parents=True)
    (ckpt / "train_config.json").write_text(json.dumps({"output_dir": output_dir, "dataset": {"root": root}}))
    if link:
        (run.parent / "checkpoints").symlink_to(f"{run.name}/checkpoints")
        return run.parent / "checkpoints" / "000004" / "pretrained_model"
    return ckpt


@pytest.mark.parametrize("link", [False, True])
def test_relative_root_resolves_against_the_training_directory(tmp_path, dataset_root, monkeypatch, capsys, link):
    """lerobot resolved dataset.root against the directory training ran in, not the export's."""
    train_dir = tmp_path / "project"
    shutil.copytree(dataset_root, train_dir / "data" / "reach")
    ckpt = _train_layout(train_dir, "outputs/train/default/stage_delta", "data/reach", link)
    other = tmp_path / "elsewhere"
    shutil.copytree(dataset_root, other / "data" / "reach")  # same relative path here: must not be picked
    monkeypatch.chdir(other)
    assert training_cwd(ckpt, "outputs/train/default/stage_delta") == train_dir
    assert dataset_root_from_checkpoint(ckpt) == train_dir / "data" / "reach"
    assert f"{train_dir / 'data' / 'reach'} (against the training directory)" in capsys.readouterr().err


def test_unknown_training_directory_falls_back_to_here_and_says_so(tmp_path, dataset_root, monkeypatch, capsys):
    ckpt = _train_layout(tmp_path / "run", "outputs/x", "data/reach", False)
    (ckpt / "train_config.json").write_text(json.dumps({"output_dir": str(tmp_path / "moved"),
                                                        "dataset": {"root": "data/reach"}}))
    assert training_cwd(ckpt, str(tmp_path / "moved")) is None and training_cwd(ckpt, "other/run") is None
    shutil.copytree(dataset_root, tmp_path / "here" / "data" / "reach")
    monkeypatch.chdir(tmp_path / "here")
    assert dataset_root_from_checkpoint(ckpt) == tmp_path / "here" / "data" / "reach"
    assert "against this directory (the training directory is unknown)" in capsys.readouterr().err


def _write_stats(root, stats):
    (root / "meta" / "stats.json").write_text(json.dumps(
        {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in stats.items()}))


STATS = {"observation.state": {"mean": [0.49, 0.5], "std": [0.2, 0.21], "min": [0.01, 0.04], "max": [0.96, 0.97]},
         "action": {"mean": [0.0005, -0.0003], "std": [0.039, 0.038], "min": [-0.06, -0.06], "max": [0.06, 0.06]}}
KEYS = ("observation.state", "action")


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("stat", ["mean", "std", "min", "max"])
def test_a_dataset_with_other_stats_is_refused_naming_the_feature(tmp_path, dataset_root, key, stat):
    root = shutil.copytree(dataset_root, tmp_path / "ds")
    ours = {k: {s: np.asarray(v, dtype=np.float32).astype(np.float64) for s, v in d.items()} for k, d in STATS.items()}
    _write_stats(root, STATS)
    check_dataset_stats(root, ours, KEYS)  # float32 copies of the dataset's stats: the same dataset
    theirs = json.loads(json.dumps(STATS))
    theirs[key][stat][1] += 0.01
    _write_stats(root, theirs)
    with pytest.raises(ExportInputError, match=f"'{key}' {stat} .* differs from the checkpoint's normaliser"):
        check_dataset_stats(root, ours, KEYS)


def test_a_dataset_without_stats_is_noted_not_refused(dataset_root, capsys):
    check_dataset_stats(dataset_root, {}, KEYS)
    assert "cannot check" in capsys.readouterr().err


def test_export_refuses_a_dataset_the_checkpoint_was_not_trained_on(tmp_path, dataset_root):
    from export.graphs.onnx_export import export_artifacts
    from tests.test_export import _loaded

    loaded = _loaded()  # action std 0.04 / 0.03
    root = shutil.copytree(dataset_root, tmp_path / "ds")
    _write_stats(root, STATS)  # action std 0.039 / 0.038: another recording
    with pytest.raises(ExportInputError, match="'observation.state' mean .* not the dataset this checkpoint"):
        export_artifacts(loaded, tmp_path / "out", calibrate=False, progress=False, dataset_root=root)
    assert not (tmp_path / "out").exists()


def test_runtime_reads_it_and_the_sim_robot_matches(dataset_root, tmp_path):
    sec = robot_section(dataset_root, 2, 2, ["observation.images.top"])
    art = build_fake_artifacts(tmp_path / "a", edit_manifest=lambda m: m.update(robot=sec))
    iface = RobotInterface.from_manifest(Manifest.load(art))
    assert iface.fps == 10 and iface.state_names == ("x", "y") and iface.action_names == ("dx", "dy")
    robot = SimReachRobot()
    lerobot_features = {"observation.state": {"names": [k for k, v in robot.observation_features.items() if v is float]},
                        "observation.images.top": {"shape": robot.observation_features["top"]}}
    assert iface.check_lerobot_features(lerobot_features) == ("x", "y")
    assert tuple(robot.action_features) == iface.action_names


@pytest.mark.parametrize(("edit", "field"), [
    (lambda s: s.update(fps=0), "robot.fps"),
    (lambda s: s.update(action_names=["dx"]), "robot.action_names"),
    (lambda s: s.update(state_names=["x", "x"]), "robot.state_names"),
    (lambda s: s.update(cameras={}), "robot.cameras"),
])
def test_bad_sections_name_the_field(dataset_root, tmp_path, edit, field):
    sec = robot_section(dataset_root, 2, 2, ["observation.images.top"])
    edit(sec)
    art = build_fake_artifacts(tmp_path / "a", edit_manifest=lambda m: m.update(robot=sec))
    with pytest.raises(ManifestError, match=field):
        RobotInterface.from_manifest(Manifest.load(art))
