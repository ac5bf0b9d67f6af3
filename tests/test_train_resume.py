"""`--resume` of an interrupted stage, for real on a 2-episode recording: the loss log restarts where lerobot does
(the last checkpoint's step), DONE counts the time before the interruption, and this run's loader workers and
device apply (lerobot's resume otherwise takes them from the saved train config)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from smolvla_cls import train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume") / "reach"
    rec = subprocess.run([sys.executable, "-m", "smolvla_cls.dataset_recording", "--root", str(root), "--episodes",
                          "2", "--seed", "5", "--quiet"], capture_output=True, text=True, timeout=120, check=False)
    assert rec.returncode == 0, rec.stderr[-2000:]
    return root


def _interrupted(dataset, out, monkeypatch, after: int) -> list[str]:
    """A main stage of 7 steps (checkpoints at 3, 6, 7) stopped by a KeyboardInterrupt after `after` steps."""
    from lerobot.scripts import lerobot_train

    argv = ["--dataset-root", str(dataset), "--output-dir", str(out), "--steps", "8", "--num-workers", "0",
            "--no-report", "--stages", "main"]
    original, calls = lerobot_train.update_policy, [0]

    def stop(*args, **kwargs):
        calls[0] += 1
        if calls[0] > after:
            raise KeyboardInterrupt("simulated interrupt")
        return original(*args, **kwargs)

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # run_stage hands lerobot its own argv
    with monkeypatch.context() as m:
        m.setattr(lerobot_train, "update_policy", stop)
        with pytest.raises(KeyboardInterrupt):
            train.main(argv)
    return argv


def test_resume_continues_the_loss_log_from_the_checkpoint(dataset, tmp_path, monkeypatch):
    """Interrupted after step 5, resumed from checkpoint 3: rows 1..7 once each (was 1..5 then 6..9)."""
    out = tmp_path / "out"
    argv = _interrupted(dataset, out, monkeypatch, after=5)
    log = out / "loss_main.jsonl"
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2, 3, 4, 5]
    before = json.loads(log.read_text().splitlines()[-1])["elapsed_s"]
    assert train.main([*argv, "--resume"]) == 0
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert all(r["elapsed_s"] > before for r in rows[3:])  # the resumed rows count the time before, too
    done = json.loads((out / "stage_main" / "DONE").read_text())
    assert done["steps"] == 7 and done["resumed_from_step"] == 3
    assert done["seconds"] >= done["seconds_this_run"] + before > before


def test_resume_applies_this_runs_workers_and_device(dataset, tmp_path, monkeypatch):
    """--num-workers and --device were silently replaced by the saved train config's."""
    from lerobot.configs import policies
    from lerobot.scripts import lerobot_train

    out = tmp_path / "out"
    argv = _interrupted(dataset, out, monkeypatch, after=4)
    monkeypatch.setattr(policies, "is_torch_device_available", lambda device: True)  # as on a machine with CUDA
    seen = []

    class Seen(Exception):
        pass

    def record(cfg):
        seen.append((cfg.num_workers, cfg.policy.device, cfg.resume))
        raise Seen

    monkeypatch.setattr(lerobot_train, "train", record)
    argv[argv.index("--num-workers") + 1] = "2"
    with pytest.raises(Seen):
        train.main([*argv, "--resume", "--device", "cuda"])
    assert seen == [(2, "cuda", True)]


def test_resuming_a_stage_started_under_the_other_lerobot_release_is_one_line(dataset, tmp_path, monkeypatch):
    """lerobot 0.4.4 saves `eval_freq`, 0.6 `env_eval_freq` (and more): resuming after an upgrade raised draccus's
    DecodingError from deep inside lerobot's config loader."""
    out = tmp_path / "out"
    argv = _interrupted(dataset, out, monkeypatch, after=4)
    saved = out / "stage_main" / "checkpoints" / "last" / "pretrained_model" / "train_config.json"
    config = json.loads(saved.read_text())
    this, other = ("eval_freq", "env_eval_freq") if "eval_freq" in config else ("env_eval_freq", "eval_freq")
    config[other] = config.pop(this)  # as the other release wrote it
    saved.write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exc:
        train.main([*argv, "--resume"])
    message = str(exc.value.code)
    assert message.startswith("train: --resume: ") and "\n" not in message, message
    assert str(saved) in message and other in message and "lerobot" in message
