"""`python -m scripts.bench`: a bad flag is one argparse line naming it (exit 2), before any export or report."""

from __future__ import annotations

import pytest

from scripts.bench.cli import main


@pytest.mark.parametrize("flags, named", [
    (["--reps", "0"], "--reps"), (["--reps", "-3"], "--reps"), (["--threads", "-1"], "--threads"),
    (["--episodes", "0"], "--episodes"), (["--configs", ","], "--configs"), (["--configs", ""], "--configs"),
    (["--configs", "tiny,gpu"], "--configs"), (["--out", "<file>"], "--out"),
])
def test_bad_flag_named_before_any_work(flags, named, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written here (no reports/, no artifacts/)
    (tmp_path / "a_file").write_text("x")
    flags = [str(tmp_path / "a_file") if f == "<file>" else f for f in flags]
    with pytest.raises(SystemExit) as exc:
        main(flags)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert named in err[-1] and "Traceback" not in "\n".join(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
