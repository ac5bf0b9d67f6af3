"""`scripts/bench_reactivity.py`: bad inputs are named, and the table's ratios follow the rows (the
benchmark itself is a script, never a timed test)."""

from __future__ import annotations

import pytest

from scripts.bench_reactivity import main, markdown


def _row(name, side, ms, success=1.0, resamples=4.0, recovery=9.0):
    return {"name": name, "side": side, "success_rate": success, "mean_ms_per_tick": ms, "median_ms": ms,
            "p90_ms": ms, "resamples_per_episode": resamples, "mean_recovery_ticks": recovery}


def test_missing_inputs_are_named(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "config.json").write_text("{}")
    assert main(["--checkpoint", str(tmp_path / "ck"), "--artifacts", str(tmp_path / "none"), "--out",
                 str(tmp_path)]) == 2
    assert "--artifacts" in capsys.readouterr().err


@pytest.mark.parametrize("ours_ms", [0.5, 3.0, 40.0])
def test_markdown_ratios(ours_ms):
    rep = {"episodes": 5, "machine": "m", "threads": 2, "date": "d",
           "rows": [_row("LeRobot reactive (n_action_steps=1)", "lerobot", 30.0),
                    _row("LeRobot open loop (n_action_steps=10)", "lerobot", 3.0, recovery=None),
                    _row("ours drift:0.01", "ours", ours_ms)]}
    md = markdown(rep)
    last = md.strip().splitlines()[-1]
    assert f"{30.0 / ours_ms:.1f}×" in last and f"{ours_ms - 3.0:+.2f}" in last
    assert "| – |" in md.splitlines()[-2]  # no recovery for the open-loop row
