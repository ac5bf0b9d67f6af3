"""A tiny policy of another robot (other state / action / cameras, or trained on a non-simtask dataset) exports:
the simtask gate calibration is skipped with a line saying why, instead of a broadcast traceback in it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from export.graphs.checkpoint_loading import LoadedPolicy
from export.graphs.gate_calibration import simtask_mismatch
from export.graphs.onnx_export import export_artifacts
from tests.model_fixtures import tiny_policy


def _cfg(cams: int, state: int, action: int, size=(64, 64)):
    return SimpleNamespace(image_features={f"observation.images.c{i}": None for i in range(cams)},
                           robot_state_feature=SimpleNamespace(shape=(state,)),
                           action_feature=SimpleNamespace(shape=(action,)), resize_imgs_with_padding=size)


@pytest.mark.parametrize("cams", [1, 2, 3])
@pytest.mark.parametrize("state", [1, 2, 6])
@pytest.mark.parametrize("action", [2, 3, 7])
@pytest.mark.parametrize("size", [(64, 64), (48, 64)])
def test_only_the_simtask_shape_calibrates_on_simtask(cams, state, action, size):
    why = simtask_mismatch(_cfg(cams, state, action, size))
    assert (why is None) == ((cams, state, action) == (1, 2, 2) and size[0] == size[1])


@pytest.mark.parametrize("sidecar", [True, False])
def test_a_non_simtask_training_dataset_is_not_calibrated_on_simtask(tmp_path, sidecar):
    (tmp_path / "meta").mkdir()
    if sidecar:
        (tmp_path / "meta" / "simtask_recording.json").write_text("{}")
    why = simtask_mismatch(_cfg(1, 2, 2), tmp_path)
    assert (why is None) == sidecar and (sidecar or str(tmp_path) in why)


def _stats(dim: int, lo: float, hi: float) -> dict:
    return {"mean": np.zeros(dim), "std": np.full(dim, (hi - lo) / 4), "min": np.full(dim, lo), "max": np.full(dim, hi)}


def test_a_six_motor_tiny_policy_exports_uncalibrated_and_runs(tmp_path, capfd):
    policy = tiny_policy(state_dim=6, action_dim=6, chunk=4).eval()
    loaded = LoadedPolicy(policy, "test", "tiny", {"observation.state": _stats(6, -90, 90), "action": _stats(6, -90, 90)})
    out = tmp_path / "onnx"
    manifest = export_artifacts(loaded, out, calibrate=True, calib_episodes=1, progress=False)
    assert "gate calibration skipped" in capfd.readouterr().err
    assert manifest["gate"]["source"].startswith("uncalibrated (the policy reads 1 camera(s), a 6-D state")
    assert json.loads((out / "manifest.json").read_text())["gate"]["default"].startswith("any:drift")
    from runtime.policy import EdgePolicy

    edge = EdgePolicy(str(out), backend="onnxruntime")
    action = edge.step({"observation.images.top": np.zeros((64, 64, 3), np.uint8),
                        "observation.state": np.zeros(6, np.float32), "task": "pick up the cube"})
    assert action.shape == (6,) and np.isfinite(action).all() and edge.last_info.fault is None
