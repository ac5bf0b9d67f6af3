"""evaluation.gate_bench's command line: unknown --sweep labels and --refine names, a negative --seed and a report
without the keys --rerender needs are refused in one line naming the flag; a repeated kind runs once; config.caps
says which caps ran; a report with one-value intervals (null, or NaN from before the strict writer) re-renders."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from evaluation import gate_bench
from tests.fake_artifacts import cached_fake_artifacts
from tests.test_cli_arguments import _never, _refused


@pytest.mark.parametrize("argv, flag", [(["--sweep", "p95x"], "--sweep"), (["--sweep", "p95", "p97"], "--sweep"),
                                        (["--seed", "-1"], "--seed")])
def test_bad_values_are_refused_naming_the_flag(argv, flag, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gate_bench, "run_gate_bench", _never)
    _refused(capsys, gate_bench.main, ["--out", str(tmp_path / "r"), *argv], flag)


def test_a_repeated_kind_runs_once_in_order(tmp_path, monkeypatch):
    seen = {}

    def fake(*args, **kwargs):
        seen["kinds"] = args[5]
        raise ValueError("stop")

    monkeypatch.setattr(gate_bench, "run_gate_bench", fake)
    assert gate_bench.main(["--out", str(tmp_path / "r"), "--kinds", "mixed", "jump", "mixed", "jump"]) == 2
    assert seen["kinds"] == ["mixed", "jump"]


def test_an_unknown_refine_name_is_refused_before_calibration(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gate_bench, "record_distances", _never)
    rc = gate_bench.main(["--artifacts", str(cached_fake_artifacts()), "--out", str(tmp_path / "r"), "--no-progress",
                          "--kinds", "jump", "--refine", "drift:p95", "drift:p95x"])
    err = capsys.readouterr().err
    assert rc == 2 and "--refine" in err and "'drift:p95x'" in err and "Traceback" not in err
    assert "'drift:p95'," not in err.split("among")[0]  # a valid name is not reported
    assert not (tmp_path / "r").exists()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """One kind, one episode per policy, a cap the chunk makes moot: NaN-free JSON and the caps really run."""
    out = tmp_path_factory.mktemp("gb")
    rc = gate_bench.main(["--artifacts", str(cached_fake_artifacts()), "--out", str(out), "--quick", "--no-progress",
                          "--kinds", "jump", "--episodes", "1", "--calibration-episodes", "1", "--caps", "99",
                          "--no-plots"])
    assert rc == 0
    return out


def _strict(text: str) -> dict:
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_caps_at_or_above_the_chunk_are_not_recorded_as_run(small):
    report = _strict((small / "gate_bench.json").read_text())
    assert report["config"]["caps"] == []
    assert not any(r["family"].endswith("+cap") for r in report["policies"])


def test_one_episode_reports_are_strict_json_and_rerender(small, capsys):
    path = small / "gate_bench.json"
    report = _strict(path.read_text())
    ci = report["policies"][0]["per_kind"]["jump"]["resamples"]
    assert ci["n"] == 1 and ci["lo"] is None and ci["hi"] is None
    ci["lo"] = ci["hi"] = math.nan  # as the writer before the strict one left it
    path.write_text(json.dumps(report))
    assert gate_bench.main(["--rerender", str(path)]) == 0  # plots included: they read the null intervals
    again = _strict(path.read_text())
    assert again["policies"][0]["per_kind"]["jump"]["resamples"]["lo"] is None
    captured = capsys.readouterr()
    assert f"{len(again['policies'])} policies" in captured.out and "plot failed" not in captured.err


@pytest.mark.parametrize("content", ['{"policies": []}', '{"policies": [], "config": {}, "calibration": {}}'])
def test_rerender_of_a_report_without_its_keys_is_one_line(content, tmp_path, capsys):
    """One line naming --rerender, exit status 2 (as argparse's), nothing written — not a KeyError traceback."""
    path = tmp_path / "gate_bench.json"
    path.write_text(content)
    with pytest.raises(SystemExit) as exc:
        gate_bench.main(["--rerender", str(path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: --rerender {path}: not a gate_bench.json report (")
    assert not (tmp_path / "gate_bench.md").exists()


def test_a_refine_name_calibration_drops_is_warned_and_skipped(tmp_path, capsys, monkeypatch):
    """`drift:3xp99` passes the up-front check, but with quiet distances up to 0.9 its threshold (≥ 2) is dropped
    by calibration: the run warns and goes on instead of failing after minutes of calibration."""
    rng = np.random.default_rng(0)

    def distances(*args, **kwargs):
        return {"quiet": list(rng.uniform(0.5, 0.9, 200)), "irrelevant": [0.6], "relevant": [1.5], "moving": []}
    monkeypatch.setattr(gate_bench, "record_distances", distances)
    rc = gate_bench.main(["--artifacts", str(cached_fake_artifacts()), "--out", str(tmp_path / "r"), "--no-progress",
                          "--kinds", "jump", "--episodes", "1", "--calibration-episodes", "1", "--no-plots",
                          "--sweep", "p95", "3xp99", "--caps", "99", "--refine", "drift:3xp99", "drift:p95"])
    err = capsys.readouterr().err
    assert rc == 0 and "--refine drift:3xp99: not built after calibration" in err, err
    names = {p["name"] for p in json.loads((tmp_path / "r" / "gate_bench.json").read_text())["policies"]}
    assert "drift:p95+refine" in names and not any(n.startswith("drift:3xp99") for n in names)


def test_a_sweep_without_p95_still_runs_the_baselines_keyed_on_it(tmp_path, capsys):
    """`--sweep p90` alone: the default --refine names and the matched-rate random gates are keyed on p95, so p95
    (the default threshold) always runs — not a refusal naming a --refine the user never gave, nor a benchmark
    that silently lost its random baseline."""
    rc = gate_bench.main(["--artifacts", str(cached_fake_artifacts()), "--out", str(tmp_path / "r"), "--no-progress",
                          "--kinds", "jump", "--episodes", "1", "--calibration-episodes", "1", "--no-plots",
                          "--caps", "99", "--sweep", "p90"])
    err = capsys.readouterr().err
    assert rc == 0, err
    policies = json.loads((tmp_path / "r" / "gate_bench.json").read_text())["policies"]
    names = {p["name"] for p in policies}
    assert {"drift:p90", "drift:p95", "pixel:p95", "drift:p95+refine"} <= names
    matched = {p["label"].split(" ")[-1] for p in policies if p["family"] == "random"}
    for fam in ("drift", "pixel"):  # a random gate at rate 0 would be interval:chunk again: not run
        rate = next(p for p in policies if p["name"] == f"{fam}:p95")["all"]["fire_rate"]
        assert (f"(={fam})" in matched) == bool(rate)
