"""`python -m evaluation run` (closed loop on simtask) and `python -m runtime info` on the fake artifacts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

try:
    from tests.fake_artifacts import build_fake_artifacts, cached_fake_artifacts
except ImportError:
    from fake_artifacts import build_fake_artifacts, cached_fake_artifacts

from evaluation.episodes import main as run_main
from runtime.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_run_reports_success_resamples_and_latency(tmp_path, capsys):
    out = tmp_path / "summary.json"
    rc = run_main(["run", "--artifacts", str(cached_fake_artifacts()), "--gate", "interval:3", "--episodes", "2",
               "--perturb", "--seed", "0", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "success rate" in text and "full resamples" in text and "prefix" in text and "p90" in text
    s = json.loads(out.read_text())
    per = s["per_episode_mean"]
    assert per["resamples"] == pytest.approx(per["ticks"] / 3, abs=1)  # interval:3 → one chunk per 3 ticks
    assert s["latency_ms"]["denoise"]["n"] == s["totals"]["resamples"]
    assert 0.0 <= s["success_rate"] <= 1.0 and s["gate"] == "interval:3"


def test_module_entry_point_and_info():
    art = cached_fake_artifacts()
    out = subprocess.run([sys.executable, "-m", "runtime", "info", "--artifacts", str(art)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "verified" in out.stdout and "chunk 6" in out.stdout


@pytest.mark.parametrize("default", [None, "any:consistency,interval:3"])
def test_info_names_the_default_gate_and_the_robot_section(tmp_path, capsys, default):
    """docs/03 and docs/07 send users to `info` to read the recommended gate and to see whether the folder can
    drive a robot (`runtime robot` refuses one without a `robot` section): both must be in its output."""
    def edit(m):
        if default is not None:
            m["gate"]["default"] = default
            m["robot"] = {"fps": 15, "action_names": ["dx", "dy"], "state_names": ["x", "y"],
                          "cameras": {m["cameras"][0]["key"]: {"height": 64, "width": 64, "channels": 3}}}
    art = build_fake_artifacts(tmp_path / "a", edit_manifest=edit)
    assert main(["info", "--artifacts", str(art)]) == 0
    out = capsys.readouterr().out
    gate_line = [line for line in out.splitlines() if line.startswith("gate default")]
    robot_line = [line for line in out.splitlines() if line.startswith("robot")]
    assert len(gate_line) == 1 and len(robot_line) == 1, out
    if default is None:  # a folder without gate.default means drift; without a robot section only `serve` drives
        assert "drift" in gate_line[0] and "absent" in gate_line[0]
        assert "none" in robot_line[0] and "runtime robot" in robot_line[0]
    else:
        assert default in gate_line[0] and "interval:3" in gate_line[0]
        assert "15" in robot_line[0] and "dx" in robot_line[0] and "x" in robot_line[0]


def test_evaluation_run_gate_help_names_every_gate(capsys):
    """The --gate help lists the spec grammar; a gate the runtime has (jump was missing) must be in it."""
    from runtime.gate import GATE_NAMES

    with pytest.raises(SystemExit):
        run_main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    part = text[text.index("--gate GATE default"):text.index("--check-every CHECK_EVERY consult")]
    assert [g for g in GATE_NAMES if g not in part] == [], part


def test_bad_artifacts_give_a_clear_error(tmp_path, capsys):
    assert main(["info", "--artifacts", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_evaluation_module_entry_point(tmp_path):
    out = subprocess.run([sys.executable, "-m", "evaluation", "run", "--artifacts", str(cached_fake_artifacts()),
                          "--gate", "always", "--episodes", "1", "--warmup", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    assert "success rate" in out.stdout
