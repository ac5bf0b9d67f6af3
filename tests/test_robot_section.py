"""The manifest's `robot` section: written at export from a LeRobotDataset's metadata (created here with
lerobot itself, the default task's features), read by the runtime's RobotInterface, and matching the
simulated robot's motor and camera names."""

from __future__ import annotations

import json

import pytest

from export.graphs.checkpoint_loading import ExportInputError
from export.graphs.robot_section import dataset_root_from_checkpoint, robot_section
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
