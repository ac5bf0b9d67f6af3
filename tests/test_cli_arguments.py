"""Bad command-line values of the evaluation / bench / closed-loop / recording tools: refused before any work as one
line naming the flag, exit status 2 — not a traceback, a message naming an internal field, a failure after several
gates' episodes, or a zero-episode report with exit status 0. Long work is replaced by a function that fails the
test if it is reached."""

from __future__ import annotations

import argparse

import pytest

from evaluation import cli_args
from tests.fake_artifacts import cached_fake_artifacts


def _refused(capsys, main, argv, flag: str) -> str:
    """main(argv) exits 2 through argparse (or a SystemExit line); the message names `flag`; no traceback."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err + (exc.value.code if isinstance(exc.value.code, str) else "")
    assert exc.value.code == 2 or (isinstance(exc.value.code, str) and exc.value.code.startswith("error:")), exc.value
    assert flag in err and "Traceback" not in err, err
    return err


def _never(*args, **kwargs):
    raise AssertionError("long work started before the arguments were checked")


# ------------------------------------------------------------------------------------------------ the types
@pytest.mark.parametrize("fn, text, ok", [
    (cli_args.positive_int, "1", 1), (cli_args.positive_int, "0", None), (cli_args.positive_int, "x", None),
    (cli_args.non_negative_int, "0", 0), (cli_args.non_negative_int, "-1", None),
    (cli_args.positive_float, "0.5", 0.5), (cli_args.positive_float, "0", None), (cli_args.positive_float, "nan", None),
    (cli_args.non_negative_float, "0", 0.0), (cli_args.non_negative_float, "-0.1", None),
    (cli_args.non_negative_float, "inf", None), (cli_args.episode_max_steps, "60", 60),
    (cli_args.episode_max_steps, "20", None), (cli_args.episode_max_steps, "0", None),
])
def test_types(fn, text, ok):
    if ok is None:
        with pytest.raises(argparse.ArgumentTypeError):
            fn(text)
    else:
        assert fn(text) == ok


def test_output_paths(tmp_path):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    for bad in (str(tmp_path), str(a_file / "x.json")):
        with pytest.raises(argparse.ArgumentTypeError):
            cli_args.output_file(bad)
    for bad in (str(a_file), str(a_file / "sub")):
        with pytest.raises(argparse.ArgumentTypeError):
            cli_args.output_dir(bad)
    assert cli_args.output_file(str(tmp_path / "new" / "r.json")).name == "r.json"
    assert cli_args.output_dir(str(tmp_path / "new" / "sub")).name == "sub"


# ------------------------------------------------------------------------------------------------ soak
@pytest.mark.parametrize("argv, flag", [(["--max-minutes", "0"], "--max-minutes"),
                                        (["--max-minutes", "-1"], "--max-minutes"),
                                        (["--threads", "-1"], "--threads"), (["--check-every", "0"], "--check-every")])
def test_soak_flags(argv, flag, capsys, monkeypatch):
    from evaluation import soak

    monkeypatch.setattr(soak, "soak", _never)
    _refused(capsys, soak.main, ["--artifacts", "nowhere", *argv], flag)


def test_soak_out_folder_is_refused_before_the_run(tmp_path, capsys, monkeypatch):
    from evaluation import soak

    monkeypatch.setattr(soak, "soak", _never)
    _refused(capsys, soak.main, ["--out", str(tmp_path)], "--out")


def test_soak_library_refuses_no_time(tmp_path):
    from evaluation.soak import soak

    with pytest.raises(ValueError, match="max_seconds"):
        soak(cached_fake_artifacts(), ticks=5, max_seconds=0.0, progress=False)


# ------------------------------------------------------------------------------------------------ gate_eval
@pytest.mark.parametrize("argv, flag", [(["--check-every", "1", "0"], "--check-every"), (["--threads", "-1"], "--threads"),
                                        (["--episodes", "0"], "--episodes"), (["--max-steps", "0"], "--max-steps"),
                                        (["--seed", "-1"], "--seed"), (["--seed", str(2**63)], "--seed")])
def test_gate_eval_flags_before_any_gate(argv, flag, tmp_path, capsys, monkeypatch):
    from evaluation import gate_eval

    monkeypatch.setattr(gate_eval, "run_gate_eval", _never)
    _refused(capsys, gate_eval.main, ["--out", str(tmp_path / "r"), *argv], flag)


def test_gate_eval_out_that_is_a_file(tmp_path, capsys, monkeypatch):
    from evaluation import gate_eval

    monkeypatch.setattr(gate_eval, "run_gate_eval", _never)
    (tmp_path / "f").write_text("x")
    _refused(capsys, gate_eval.main, ["--out", str(tmp_path / "f")], "--out")


@pytest.mark.parametrize("tool", ["gate_eval", "gate_bench"])
@pytest.mark.parametrize("content", [None, "not json", "[1, 2]", "{}"])
def test_rerender_of_a_bad_file_is_one_line(tool, content, tmp_path, capsys):
    import importlib

    main = importlib.import_module(f"evaluation.{tool}").main
    path = tmp_path / "report.json"
    if content is not None:
        path.write_text(content)
    err = _refused(capsys, main, ["--rerender", str(path), "--no-plots"], "--rerender")
    assert str(path) in err


# ------------------------------------------------------------------------------------------------ gate_bench
@pytest.mark.parametrize("argv, flag", [(["--slack", "-5"], "--slack"), (["--threads", "-1"], "--threads"),
                                        (["--caps", "0"], "--caps"), (["--intervals", "0"], "--intervals"),
                                        (["--calibration-episodes", "0"], "--calibration-episodes"),
                                        (["--seed", str(2**63)], "--seed")])
def test_gate_bench_flags(argv, flag, tmp_path, capsys, monkeypatch):
    from evaluation import gate_bench

    monkeypatch.setattr(gate_bench, "run_gate_bench", _never)
    err = _refused(capsys, gate_bench.main, ["--out", str(tmp_path / "r"), *argv], flag)
    assert "BenchEnv" not in err


@pytest.mark.parametrize("tool", ["gate_eval", "gate_bench"])
@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_a_folder_without_artifacts_is_one_line_naming_the_flag(tool, folder, tmp_path, capsys):
    """Exit status 2, one line naming --artifacts, and no empty report folder left behind."""
    import importlib

    (tmp_path / "empty").mkdir()
    main = importlib.import_module(f"evaluation.{tool}").main
    rc = main(["--artifacts", str(tmp_path / folder), "--out", str(tmp_path / "r"), "--quick", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith(f"error: --artifacts {tmp_path / folder}: "), err
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------------ latency
@pytest.mark.parametrize("argv, flag", [(["--episodes", "0"], "--episodes"), (["--max-steps", "0"], "--max-steps"),
                                        (["--max-steps", "25"], "--max-steps"), (["--threads", "-1"], "--threads"),
                                        (["--react-width", "4", "--seam-width", "3"], "--react-width")])
def test_latency_flags(argv, flag, tmp_path, capsys, monkeypatch):
    from evaluation import latency

    monkeypatch.setattr(latency, "run", _never)
    err = _refused(capsys, latency.main, ["--out", str(tmp_path / "r"), *argv], flag)
    assert "TaskConfig" not in err


def test_latency_zero_episodes_writes_no_report(tmp_path, capsys):
    from evaluation.latency import main

    with pytest.raises(SystemExit):
        main(["--artifacts", str(cached_fake_artifacts()), "--out", str(tmp_path / "r"), "--episodes", "0",
              "--latencies", "0", "--gates", "always"])
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------------ evaluation run
@pytest.mark.parametrize("argv, flag", [(["--episodes", "0"], "--episodes"), (["--warmup", "-1"], "--warmup"),
                                        (["--warmup", "5000"], "--warmup: expected an integer in [0, 1000]"),
                                        (["--check-every", "0"], "--check-every")])
def test_run_flags(argv, flag, capsys, monkeypatch):
    from evaluation import episodes

    monkeypatch.setattr(episodes, "_run", _never)
    err = _refused(capsys, episodes.main, ["run", *argv], flag)
    assert "evaluate_policy" not in err and "n_episodes" not in err


def test_run_policy_argument_errors_name_the_flag(capsys):
    from evaluation.episodes import main

    rc = main(["run", "--artifacts", str(cached_fake_artifacts()), "--check-every", "100000", "--episodes", "1",
               "--warmup", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "--check-every must be" in err and "check_every" not in err


# ------------------------------------------------------------------------------------------------ bench_gpu
@pytest.mark.parametrize("argv, flag", [(["--device", "foo"], "--device"), (["--reps", "0"], "--reps"),
                                        (["--warmup", "-1"], "--warmup")])
def test_bench_gpu_flags(argv, flag, tmp_path, capsys, monkeypatch):
    from scripts.bench_gpu import cli

    monkeypatch.setattr(cli, "build_models", _never)
    _refused(capsys, cli.main, ["--out", str(tmp_path / "r"), *argv], flag)


# ------------------------------------------------------------------------------------------------ closed loop
@pytest.mark.parametrize("argv, flag", [([], "--artifacts"), (["--episodes", "0"], "--episodes"),
                                        (["--fps", "0"], "--fps"), (["--out", "."], "--out")])
def test_closed_loop_flags(argv, flag, tmp_path, capsys):
    from robot_adapters.closed_loop import main

    (tmp_path / "empty").mkdir()
    _refused(capsys, main, ["--artifacts", str(tmp_path / "empty"), *argv], flag)


# ------------------------------------------------------------------------------------------------ recording
@pytest.mark.parametrize("below", [False, True])
def test_recording_root_that_is_a_file(below, tmp_path, capsys):
    from smolvla_cls.dataset_recording import main

    a_file = tmp_path / "f"
    a_file.write_text("x")
    _refused(capsys, main, ["--root", str(a_file / "ds" if below else a_file), "--episodes", "1", "--quiet"], "--root")
