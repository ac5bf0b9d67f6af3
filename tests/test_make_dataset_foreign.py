"""`make train DATASET_ROOT=<your robot's LeRobotDataset>`: the `dataset` step records nothing over it and training
goes on (before: the recorder refused it, suggesting --force, which deletes it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent


def _make_dataset(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "-o", "install", "dataset", f"DATASET_ROOT={root}",
                           f"VENV={VENV}", "EPISODES=2"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)


def _foreign(tmp_path: Path) -> Path:
    root = tmp_path / "so101_data"
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps({"features": {}, "total_episodes": 7}))
    (root / "data.bin").write_bytes(b"\x00" * 64)
    return root


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_dataset_leaves_a_foreign_lerobot_dataset_alone(tmp_path):
    root = _foreign(tmp_path)
    before = sorted((p.relative_to(root), p.read_bytes()) for p in root.rglob("*") if p.is_file())
    proc = _make_dataset(root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "not recorded by simtask: used as it is" in proc.stdout
    assert sorted((p.relative_to(root), p.read_bytes()) for p in root.rglob("*") if p.is_file()) == before


def test_the_recorder_names_the_foreign_dataset_and_does_not_advise_force(tmp_path):
    from smolvla_cls.dataset_recording import RecordingConfig, _existing_matches

    root = _foreign(tmp_path)
    ok, why = _existing_matches(RecordingConfig(root=root, episodes=2))
    assert not ok and "make train DATASET_ROOT=" in why and "would delete it" in why
    assert "pass --force to overwrite" not in why
