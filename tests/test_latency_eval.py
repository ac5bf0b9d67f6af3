"""`python -m evaluation.latency`: writes the table and JSON for every (gate, mode, L) cell; bad flags are
refused with a message naming the flag."""

from __future__ import annotations

import json

import pytest

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


def test_refills_count_the_resamples_made_because_the_plan_ran_out(tmp_path, capsys):
    """A gate that never fires within a chunk resamples only on refills; one that fires every 3 ticks of an
    8-row plan refills only for the first plan; the first plan always counts as a refill."""
    art = cached_fake_artifacts(chunk_size=8)
    assert main(["--artifacts", str(art), "--out", str(tmp_path), "--episodes", "2", "--latencies", "0",
                 "--gates", "interval:3;interval:100", "--modes", "aligned", "--max-steps", "35"]) == 0
    cells = {c["gate"]: c for c in json.loads((tmp_path / "latency.json").read_text())["cells"]}
    for ep in cells["interval:100"]["episodes"]:
        assert ep["refills"] == ep["resamples"] >= 2
    for ep in cells["interval:3"]["episodes"]:
        assert ep["refills"] == 1 < ep["resamples"]
    assert cells["interval:100"]["summary"]["refills_per_episode"] == cells["interval:100"]["summary"]["resamples_per_episode"]


def test_refills_are_counted_under_latency_too(tmp_path, capsys):
    """At L = 3 a plan lands 3 ticks after it was asked for; with a gate that never fires within a chunk every
    resample is still a refill, several per episode."""
    art = cached_fake_artifacts(chunk_size=8)
    assert main(["--artifacts", str(art), "--out", str(tmp_path), "--episodes", "2", "--latencies", "3",
                 "--gates", "interval:100", "--modes", "aligned+reanchor+slew", "--max-steps", "35"]) == 0
    for ep in json.loads((tmp_path / "latency.json").read_text())["cells"][0]["episodes"]:
        assert ep["refills"] == ep["resamples"] >= 3


def test_bad_flags_name_the_flag(tmp_path, capsys):
    art = cached_fake_artifacts(chunk_size=8)
    assert main(["--artifacts", str(art), "--out", str(tmp_path), "--modes", "warp"]) == 2
    assert "--modes" in capsys.readouterr().err
    assert main(["--artifacts", str(art), "--out", str(tmp_path), "--latencies", "1,x"]) == 2
    assert "--latencies" in capsys.readouterr().err
    for bad in ("0", "-1", "nan", "inf"):
        assert main(["--artifacts", str(art), "--out", str(tmp_path), "--slew", bad]) == 2
        assert "--slew" in capsys.readouterr().err


def test_targets_mark_met_and_not_met_from_the_cells():
    from evaluation.latency import targets

    def cell(gate, mode, latency, success, resamples, seam=0.02, within=0.02):
        return {"gate": gate, "mode": mode, "latency": latency,
                "summary": {"success_rate": success, "resamples_per_episode": resamples,
                            "seam_jump_mean": seam, "within_step_mean": within}}

    cells = [cell("always", "any (L=0)", 0, 1.0, 30), cell("always", "aligned+inpaint", 5, 0.96, 10),
             cell("always", "async", 5, 0.80, 10), cell("drift", "any (L=0)", 0, 1.0, 5),
             cell("drift", "aligned+inpaint", 5, 0.90, 5, seam=0.05), cell("drift", "async", 5, 0.85, 5)]
    lines = targets(cells)
    assert "met: within 5 points" in lines[0] and "(met: >= 10 points" in lines[1] and "(met: <= 2)" in lines[2]
    assert "not met: within 5 points" in lines[3] and "not met: >= 10" in lines[4] and "not met: <= 2" in lines[5]
    assert "50% of always's resamples" in lines[6] and "not met" in lines[6]


def test_waypoints_leave_out_reanchor_modes_by_default_and_refuse_them_when_asked(tmp_path, capsys):
    art = cached_fake_artifacts(chunk_size=8)
    rc = main(["--artifacts", str(art), "--out", str(tmp_path / "a"), "--episodes", "1", "--latencies", "2",
               "--gates", "interval:3", "--waypoints", "--max-steps", "35"])
    assert rc == 0
    modes = {c["mode"] for c in json.loads((tmp_path / "a" / "latency.json").read_text())["cells"]}
    assert "aligned" in modes and not any("reanchor" in m for m in modes)
    with pytest.raises(SystemExit, match="reanchor"):
        main(["--artifacts", str(art), "--out", str(tmp_path / "b"), "--episodes", "1", "--latencies", "2",
              "--gates", "interval:3", "--waypoints", "--modes", "aligned+reanchor"])


def test_gate_specs_with_commas_are_separated_by_semicolons():
    from evaluation.latency import _names

    assert _names("always,drift", None, "--gates") == ["always", "drift"]
    assert _names("always; any:drift,interval:6", None, "--gates") == ["always", "any:drift,interval:6"]
    with pytest.raises(ValueError, match="--gates"):
        _names(" ; ", None, "--gates")


@pytest.mark.parametrize("text", ["", ",", "-1", "1,x"])
def test_latencies_must_be_ticks_and_are_named(text):
    from evaluation.latency import _ints

    with pytest.raises(ValueError, match="--latencies"):
        _ints(text)
    assert _ints("0, 3,5") == [0, 3, 5]
