"""Bad arguments to the export and parity CLIs end in one line naming the flag, exit 2, before any work —
above all, `--out` never replaces a folder that is not an earlier export (the checkpoint, a folder of notes):
the export's atomic swap deletes whatever folder stood at `--out`."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from export.graphs import onnx_export, parity
from export.graphs.checkpoint_loading import ExportInputError
from export.graphs.onnx_export import check_out, export_artifacts
from tests.model_fixtures import tiny_policy
from tests.test_export import _loaded


def _one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def checkpoint(tmp_path):
    """A saved tiny policy: config.json + model.safetensors, the files a wrong --out used to delete."""
    folder = tmp_path / "pretrained_model"
    tiny_policy().save_pretrained(folder)
    return folder


def _contents(folder):
    return sorted((p.name, p.read_bytes()) for p in folder.iterdir())


def test_export_never_writes_over_or_into_its_checkpoint(checkpoint, capsys):
    before = _contents(checkpoint)
    loaded = replace(_loaded(), source=str(checkpoint))
    for out in (checkpoint, checkpoint / "onnx", checkpoint.parent):
        with pytest.raises(ExportInputError, match=r"--out .* must be a new folder outside --checkpoint"):
            export_artifacts(loaded, out, calibrate=False, progress=False)
    assert _contents(checkpoint) == before and not (checkpoint / "onnx").exists()
    # the CLI refuses it before loading the model
    assert onnx_export.main(["--checkpoint", str(checkpoint), "--out", str(checkpoint)]) == 2
    line = _one_line(capsys)
    assert line.startswith("export: --out") and "--checkpoint" in line
    assert _contents(checkpoint) == before


def test_export_keeps_a_folder_that_is_not_an_export(tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    with pytest.raises(ExportInputError, match="--out .* is not an artifact folder"):
        export_artifacts(_loaded(), notes, calibrate=False, progress=False)
    assert (notes / "notes.txt").read_text() == "mine" and len(list(notes.iterdir())) == 1
    (tmp_path / "afile").write_text("x")
    assert onnx_export.main(["--preset", "tiny", "--out", str(tmp_path / "afile")]) == 2
    assert "--out" in _one_line(capsys) and (tmp_path / "afile").read_text() == "x"


def test_out_may_be_new_empty_or_an_earlier_export(tmp_path):
    check_out(tmp_path / "new", None)
    (tmp_path / "empty").mkdir()
    check_out(tmp_path / "empty", None)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "manifest.json").write_text(json.dumps({"format_version": 3, "graphs": {}}))
    check_out(earlier, None)
    (earlier / "manifest.json").write_text(json.dumps({"something": "else"}))  # a manifest, but no artifact one
    with pytest.raises(ExportInputError, match="not an artifact folder"):
        check_out(earlier, None)


def test_calibration_needs_at_least_one_episode(tmp_path, capsys):
    with pytest.raises(ExportInputError, match=r"--calib-episodes must be at least 1, got 0.*--no-calibration"):
        export_artifacts(_loaded(), tmp_path / "o", calibrate=True, calib_episodes=0, progress=False)
    assert not (tmp_path / "o").exists()
    assert onnx_export.main(["--preset", "tiny", "--out", str(tmp_path / "o"), "--calib-episodes", "-1"]) == 2
    assert "--calib-episodes" in _one_line(capsys)


def test_export_names_the_flags_the_user_typed(tmp_path, capsys):
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("not a key")
    assert onnx_export.main(["--preset", "tiny", "--out", str(tmp_path / "o"), "--sign-key", str(bad_key)]) == 2
    assert _one_line(capsys).startswith(f"export: --sign-key {bad_key}")
    assert onnx_export.main(["--checkpoint", str(bad_key), "--out", str(tmp_path / "o")]) == 2
    assert "is not a folder" in _one_line(capsys)


@pytest.mark.parametrize("trials", ["0", "-2"])
def test_parity_refuses_no_trials(tmp_path, capsys, trials):
    assert parity.main(["--preset", "tiny", "--artifacts", str(tmp_path), "--trials", trials]) == 2
    assert _one_line(capsys).startswith(f"parity: --trials must be at least 1, got {trials}")
    with pytest.raises(ValueError, match="trials"):
        parity.graph_parity(None, tmp_path, trials=int(trials))


def test_parity_checks_the_json_path_before_running(tmp_path, capsys):
    assert parity.main(["--preset", "tiny", "--artifacts", str(tmp_path), "--json", str(tmp_path)]) == 2
    assert _one_line(capsys).startswith(f"parity: --json {tmp_path} is a folder")
    (tmp_path / "afile").write_text("x")
    assert parity.main(["--preset", "tiny", "--json", str(tmp_path / "afile" / "r.json")]) == 2
    assert "--json" in _one_line(capsys)
