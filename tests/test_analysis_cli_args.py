"""The analysis command lines (closed-loop eval, CLS alignment, retrieval oracle, act-CLS wiring, plan overshoot)
refuse a bad flag value up front: exit status 2 and one line naming the flag, before a checkpoint is loaded.

Before, a negative --seed, a --json that is a folder or --n-action-steps 0 surfaced as a numpy / IsADirectoryError
traceback, the --json one only after every episode had run."""

from __future__ import annotations

import importlib

import pytest

import scripts.act_cls_wiring
import scripts.plan_overshoot
import smolvla_cls.alignment
import smolvla_cls.closed_loop_eval
import smolvla_cls.retrieval_oracle

# module -> the arguments it needs besides the bad one (a checkpoint that does not exist: never reached)
COMMANDS = {
    "smolvla_cls.closed_loop_eval": ["--checkpoint", "/nonexistent/ckpt"],
    "smolvla_cls.alignment": ["--checkpoint", "/nonexistent/ckpt"],
    "smolvla_cls.retrieval_oracle": [],
    "scripts.act_cls_wiring": ["--checkpoint", "a=/nonexistent/ckpt"],
    "scripts.plan_overshoot": ["--checkpoint", "/nonexistent/ckpt"],
}
# flag -> bad values; each command is tried with every flag it has
BAD = {
    "--seed": ["-1", "x"],
    "--noise-seed": ["-1"],
    "--episodes": ["0", "-3", "1.5"],
    "--n-action-steps": ["0", "-1"],
    "--threads": ["0", "-2"],
    "--chunk-size": ["0"],
    "--calib-episodes": ["-1"],
    "--drift": ["-1"],
    "--ceiling-samples": ["0"],
    "--sigmas": ["nan", "-0.1", "inf", ""],
    "--json": ["{folder}", "{file}/sub/out.json"],
}


def _has_flag(module: str, flag: str) -> bool:
    source = importlib.import_module(module).__loader__.get_source(module)
    return f'"{flag}"' in source


# only the flags each command has (a command without the flag is not a case, rather than a skip)
CASES = [(mod, flag, value) for mod in COMMANDS for flag, values in BAD.items() if _has_flag(mod, flag)
         for value in values]


@pytest.mark.parametrize(("module", "flag", "value"), CASES)
def test_bad_flag_is_one_line_naming_it(module, flag, value, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    value = value.format(folder=tmp_path, file=tmp_path / "f")
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exc:
        main([*COMMANDS[module], f"{flag}={value}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and flag in err[-1] and "Traceback" not in "\n".join(err)


def test_json_parent_folders_are_created(tmp_path, monkeypatch):
    """--json into a folder that does not exist yet is written there (not a FileNotFoundError at the end)."""
    target = tmp_path / "new" / "deeper" / "oracle.json"
    smolvla_cls.retrieval_oracle.main(["--episodes", "2", "--chunk-size", "2", "--sigmas", "0", "--json", str(target)])
    assert target.exists()


def test_n_action_steps_past_the_chunk_names_the_flag(tmp_path, capsys, monkeypatch):
    """An --n-action-steps larger than the checkpoint's chunk (known only once it is read): one line, the flag."""
    from smolvla_cls import torch_policy

    def refuse(*_args, **kwargs):
        raise ValueError(f"TorchPolicy: n_action_steps={kwargs['n_action_steps']}: expected 1..6")

    monkeypatch.setattr(torch_policy, "TorchPolicy", refuse)
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(SystemExit) as exc:
        smolvla_cls.closed_loop_eval.main(["--checkpoint", str(tmp_path / "ckpt"), "--n-action-steps", "7"])
    assert exc.value.code == 2
    assert "--n-action-steps=7: expected 1..6" in capsys.readouterr().err


assert scripts.act_cls_wiring and scripts.plan_overshoot and smolvla_cls.alignment  # imported: importable
