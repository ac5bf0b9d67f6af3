"""The training report of another robot's dataset (no simtask sidecar): loss plots only, with a line saying why;
it never runs the simulated task (before: a KeyError traceback after training, the run's exit code 1)."""

from __future__ import annotations

import json

import pytest

from smolvla_cls.train_report import write_training_report


@pytest.mark.parametrize("quick", [False, True])
def test_non_simtask_dataset_gets_loss_plots_only(tmp_path, capsys, quick):
    (tmp_path / "data" / "meta").mkdir(parents=True)
    (tmp_path / "data" / "meta" / "info.json").write_text(json.dumps({"features": {}}))
    out = tmp_path / "run"
    out.mkdir()
    (out / "loss_main.jsonl").write_text("".join(json.dumps({"step": s, "main_loss": 1.0 / s}) + "\n" for s in range(1, 5)))
    (out / "loss_delta.jsonl").write_text(json.dumps({"step": 1, "delta_loss": 0.2}) + "\n")
    missing = tmp_path / "no_checkpoint_needed"  # the policy is never loaded
    report = write_training_report(out, missing, tmp_path / "data", quick=quick)
    assert report["closed_loop"] == {} and report["alignment"] is None
    assert "not a simtask recording" in capsys.readouterr().out
    md = (out / "report" / "report.md").read_text()
    assert "Skipped" in md and "loss_main.png" in md
    assert json.loads((out / "report" / "report.json").read_text())["plots"] == ["loss_main.png", "loss_delta.png"]
