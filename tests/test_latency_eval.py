"""`python -m evaluation.latency`: writes the table and JSON for every (gate, mode, L) cell; bad flags are
refused with a message naming the flag."""

from __future__ import annotations

import json

try:
    from tests.fake_artifacts import cached_fake_artifacts
except ImportError:
    from fake_artifacts import cached_fake_artifacts

from evaluation.latency import main


def test_cli_writes_one_cell_per_gate_mode_and_latency(tmp_path, capsys):
    art = cached_fake_artifacts(chunk_size=8)
    rc = main(["--artifacts", str(art), "--out", str(tmp_path), "--episodes", "2", "--latencies", "0,2",
               "--gates", "interval:3", "--modes", "sync,aligned+inpaint", "--max-steps", "35"])
    assert rc == 0
    report = json.loads((tmp_path / "latency.json").read_text())
    cells = [(c["gate"], c["mode"], c["latency"]) for c in report["cells"]]
    assert cells == [("interval:3", "any (L=0)", 0), ("interval:3", "sync", 2), ("interval:3", "aligned+inpaint", 2)]
    sync = report["cells"][1]["summary"]
    assert sync["paused_ticks_per_episode"] >= 2 and sync["n_episodes"] == 2
    md = (tmp_path / "latency.md").read_text()
    assert md.count("| interval:3 |") == 3


def test_bad_flags_name_the_flag(tmp_path, capsys):
    art = cached_fake_artifacts(chunk_size=8)
    assert main(["--artifacts", str(art), "--out", str(tmp_path), "--modes", "warp"]) == 2
    assert "--modes" in capsys.readouterr().err
    assert main(["--artifacts", str(art), "--out", str(tmp_path), "--latencies", "1,x"]) == 2
    assert "--latencies" in capsys.readouterr().err
