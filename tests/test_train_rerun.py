"""Re-running `smolvla_cls.train` into an existing --output-dir: a finished stage is skipped only when its recorded
settings are the requested ones; other settings, an interrupted stage without --resume, nothing to resume, or a delta
stage left over from a main stage trained again are refused up front, in one line naming the flags. No training
here: the stage folders are laid out by hand and `run_stage` is replaced by a recorder."""

from __future__ import annotations

from pathlib import Path

import pytest

from smolvla_cls import train


def _lay_out(out: Path, stage: str, done: bool = True, checkpoint: bool = True) -> None:
    stage_dir = out / f"stage_{stage}"
    stage_dir.mkdir(parents=True)
    if checkpoint:
        (stage_dir / "checkpoints" / "last" / "pretrained_model").mkdir(parents=True)
    if done:
        (stage_dir / "DONE").write_text("{}")


def _earlier_run(out: Path, argv: list[str], monkeypatch, **layout) -> None:
    """An earlier run with these flags: what the real `run_stage` records, then the stage folders by hand."""
    from smolvla_cls.train_settings import stage_settings, write_settings

    ran = []

    def record(plan, args, out_dir, init, info):
        write_settings(out_dir, plan.name, stage_settings(plan, args))
        ran.append(plan.name)
        return out_dir

    monkeypatch.setattr(train, "run_stage", record)
    assert train.main(argv) == 0
    for stage in ran:
        _lay_out(out, stage, **layout)
    (out / "checkpoints").unlink()


@pytest.fixture
def stubbed(monkeypatch):
    """No dataset and no tokenizer needed: the re-run check comes before both matter."""
    monkeypatch.setattr(train, "check_dataset", lambda root: {})
    monkeypatch.setattr(train, "warn_long_instructions", lambda root, preset: None)
    from smolvla_cls import augmentation

    # a simtask recording (its sidecar names the colours), whether or not data/reach was recorded here
    monkeypatch.setattr(augmentation, "simtask_colours", lambda root: ("red", "green", "blue"))
    return monkeypatch


def test_the_same_training_spelled_differently_is_skipped(tmp_path, stubbed):
    """Settings are compared as train.py resolves them: `--augment auto` is `on` for a simtask recording."""
    out = tmp_path / "out"
    _earlier_run(out, _argv(out), stubbed)
    assert _rerun(_argv(out, "--augment", "on"), stubbed) == ["main", "delta"]  # both skip inside run_stage


def test_irrelevant_changes_do_not_count_without_the_augmentation_they_ride_on(tmp_path, stubbed):
    from smolvla_cls import augmentation

    stubbed.setattr(augmentation, "simtask_colours", lambda root: None)  # real-robot data: augmentation off
    out = tmp_path / "out"
    _earlier_run(out, _argv(out), stubbed)
    assert _rerun(_argv(out, "--irrelevant-augment", "0.2"), stubbed) == ["main", "delta"]
    with pytest.raises(SystemExit, match=r"--chunk-size 10 → 5"):
        _rerun(_argv(out, "--chunk-size", "5"), stubbed)


def _rerun(argv: list[str], monkeypatch) -> list[str]:
    """train.main with `run_stage` recording which stages it was asked for (it skips finished ones itself)."""
    ran: list[str] = []
    monkeypatch.setattr(train, "run_stage", lambda plan, args, out, init, info: ran.append(plan.name) or out)
    assert train.main(argv) == 0
    return ran


def _argv(out: Path, *extra: str) -> list[str]:
    return ["--dataset-root", "data/reach", "--output-dir", str(out), "--no-report", *extra]


def test_other_settings_are_refused_naming_each_flag(tmp_path, stubbed):
    """`--steps 4 --quick`, then `--steps 6 --chunk-size 5 --act-cls-wiring seed`: was "already done", old model kept."""
    out = tmp_path / "out"
    _earlier_run(out, _argv(out, "--steps", "4", "--quick"), stubbed)
    with pytest.raises(SystemExit) as exc:
        _rerun(_argv(out, "--steps", "6", "--chunk-size", "5", "--act-cls-wiring", "seed"), stubbed)
    message = str(exc.value.code)
    assert "stage main" in message and "--chunk-size 10 → 5" in message and "main-stage steps" in message
    assert "3 → 5" in message and "--output-dir" in message and "\n" not in message


def test_delta_only_difference_is_named(tmp_path, stubbed):
    out = tmp_path / "out"
    _earlier_run(out, _argv(out), stubbed)
    with pytest.raises(SystemExit, match=r"stage delta .*--act-cls-wiring plan_only → seed"):
        _rerun(_argv(out, "--act-cls-wiring", "seed"), stubbed)


def test_identical_settings_still_skip(tmp_path, stubbed):
    out = tmp_path / "out"
    _earlier_run(out, _argv(out, "--quick"), stubbed)
    assert _rerun(_argv(out, "--quick", "--device", "cuda", "--num-workers", "0"), stubbed) == ["main", "delta"]


def test_interrupted_stage_needs_resume(tmp_path, stubbed):
    out = tmp_path / "out"
    _earlier_run(out, _argv(out, "--stages", "main"), stubbed, done=False)
    with pytest.raises(SystemExit, match=r"stage main .*interrupted; pass --resume"):
        _rerun(_argv(out, "--stages", "main"), stubbed)
    assert _rerun(_argv(out, "--stages", "main", "--resume"), stubbed) == ["main"]


def test_resume_with_other_settings_is_refused(tmp_path, stubbed):
    """lerobot's resume continues from the saved train config: new settings would be silently ignored."""
    out = tmp_path / "out"
    _earlier_run(out, _argv(out, "--stages", "main"), stubbed, done=False)
    with pytest.raises(SystemExit, match=r"--seed 1000 → 7"):
        _rerun(_argv(out, "--stages", "main", "--resume", "--seed", "7"), stubbed)


def test_resume_with_nothing_to_resume_is_named(tmp_path, stubbed):
    out = tmp_path / "out"
    _earlier_run(out, _argv(out, "--stages", "main"), stubbed, done=False, checkpoint=False)
    with pytest.raises(SystemExit, match=r"--resume: .*before its first checkpoint"):
        _rerun(_argv(out, "--stages", "main", "--resume"), stubbed)


def test_stale_delta_stage_is_refused_when_main_trains_again(tmp_path, stubbed):
    out = tmp_path / "out"
    _earlier_run(out, _argv(out), stubbed)
    import shutil

    shutil.rmtree(out / "stage_main")  # as the refusal of other main-stage settings tells the user to
    with pytest.raises(SystemExit, match=r"stage_delta was trained from an earlier main stage"):
        _rerun(_argv(out, "--irrelevant-augment", "0.2"), stubbed)  # a main-stage-only change


def test_unrecorded_old_stage_is_kept_with_a_note(tmp_path, stubbed, capsys):
    out = tmp_path / "out"
    _lay_out(out, "main")
    _lay_out(out, "delta")
    assert _rerun(_argv(out), stubbed) == ["main", "delta"]
    assert "settings were not recorded" in capsys.readouterr().out


def test_unreadable_record_is_named(tmp_path, stubbed):
    out = tmp_path / "out"
    _lay_out(out, "main")
    (out / "stage_main.settings.json").write_text("{not json")
    with pytest.raises(SystemExit, match=r"stage_main.settings.json is unreadable"):
        _rerun(_argv(out), stubbed)


@pytest.mark.parametrize("device", ["foo", "cuda:x", ""])
def test_unknown_device_is_refused_before_any_work(tmp_path, device, capsys):
    with pytest.raises(SystemExit) as exc:
        train.main(["--dataset-root", str(tmp_path / "none"), "--output-dir", str(tmp_path / "out"),
                    "--device", device])
    assert exc.value.code == 2 and "--device" in capsys.readouterr().err


@pytest.mark.parametrize("below", [False, True])
def test_output_dir_that_is_a_file_is_refused(tmp_path, below, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(SystemExit) as exc:
        train.main(["--dataset-root", str(tmp_path / "none"),
                    "--output-dir", str(a_file / "sub" if below else a_file)])
    assert exc.value.code == 2 and "--output-dir" in capsys.readouterr().err


def test_a_checkpoints_folder_in_the_output_dir_is_refused_before_any_work(tmp_path, stubbed, capsys):
    """`<out>/checkpoints` becomes a link to the last stage's checkpoints after training: a real folder there (a
    plain lerobot-train run) made it fail with IsADirectoryError after both stages had trained."""
    out = tmp_path / "out"
    (out / "checkpoints" / "last").mkdir(parents=True)
    ran = []
    stubbed.setattr(train, "run_stage", lambda plan, *a: ran.append(plan.name))
    with pytest.raises(SystemExit) as exc:
        train.main(_argv(out))
    assert exc.value.code == 2 and not ran
    err = capsys.readouterr().err
    assert "--output-dir" in err and "checkpoints is a folder" in err
    assert (out / "checkpoints" / "last").is_dir()  # left as it was


def _record(root: Path, seed: int) -> None:
    import subprocess
    import sys

    rec = subprocess.run([sys.executable, "-m", "smolvla_cls.dataset_recording", "--root", str(root), "--episodes", "2",
                          "--seed", str(seed), "--quiet", "--force"], capture_output=True, text=True, timeout=120,
                         check=False)
    assert rec.returncode == 0, rec.stderr[-2000:]


def test_a_dataset_re_recorded_at_the_same_root_is_refused(tmp_path, stubbed):
    """Only the root was recorded: other episodes at the same path counted as "already done" (old model kept)."""
    data, out = tmp_path / "reach", tmp_path / "out"
    _record(data, seed=5)
    _earlier_run(out, _argv(out, "--dataset-root", str(data)), stubbed)
    assert _rerun(_argv(out, "--dataset-root", str(data)), stubbed) == ["main", "delta"]  # same content: skipped
    _record(data, seed=6)
    with pytest.raises(SystemExit) as exc:
        _rerun(_argv(out, "--dataset-root", str(data)), stubbed)
    message = str(exc.value.code)
    assert "stage main" in message and "--dataset-root content" in message and "\n" not in message, message


def test_a_record_without_the_dataset_content_still_skips(tmp_path, stubbed, capsys):
    """Stages recorded before the content was: compared on everything else, with a note."""
    import json

    out = tmp_path / "out"
    _earlier_run(out, _argv(out), stubbed)
    for stage in ("main", "delta"):
        path = out / f"stage_{stage}.settings.json"
        path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "dataset"}))
    assert _rerun(_argv(out), stubbed) == ["main", "delta"]
    assert "dataset content was not recorded" in capsys.readouterr().out


def test_delta_alone_refuses_a_main_stage_trained_with_other_settings(tmp_path, stubbed):
    """`--stages delta --chunk-size 4` on a main stage trained with 10 trained happily and wrote a mixed config."""
    out = tmp_path / "out"
    _earlier_run(out, _argv(out, "--stages", "main"), stubbed)
    with pytest.raises(SystemExit) as exc:
        _rerun(_argv(out, "--stages", "delta", "--chunk-size", "4", "--pad-hold"), stubbed)
    message = str(exc.value.code)
    assert "--stages delta starts from the main stage" in message and "\n" not in message, message
    assert "--chunk-size 10 → 4" in message and "--pad-hold False → True" in message
    # how the main stage trained (steps, lr, seed) and per-stage image changes are not the delta stage's business
    assert _rerun(_argv(out, "--stages", "delta", "--seed", "7", "--steps", "100", "--irrelevant-augment", "0.1"),
                  stubbed) == ["delta"]
