"""CI smoke test of `make train`: record a tiny dataset, both lerobot stages for a few steps, the report
(quick mode, 1 episode per condition), and the early, named failures on bad dataset roots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smolvla_cls.train import main as train_main

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], timeout: int, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True, check=False,
                          timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    data, out = root / "reach", root / "train"
    rec = _run(["-m", "smolvla_cls.dataset_recording", "--root", str(data), "--episodes", "6", "--seed", "5"], 60)
    assert rec.returncode == 0, rec.stderr[-3000:]
    res = _run(["-m", "smolvla_cls.train", "--dataset-root", str(data), "--output-dir", str(out), "--steps", "4",
                "--quick", "--num-workers", "0"], 300, SMOLVLA_CLS_REPORT_EPISODES="1")
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    return out, res.stdout


def test_checkpoint_folder_in_lerobot_layout(trained):
    out, _ = trained
    final = out / "checkpoints" / "last" / "pretrained_model"
    for name in ("config.json", "model.safetensors", "train_config.json"):
        assert (final / name).exists(), name
    assert list(final.glob("policy_preprocessor*.json")) and list(final.glob("policy_postprocessor*.json"))
    config = json.loads((final / "config.json").read_text())
    assert config["type"] == "smolvla_cls" and config["train_delta_expert"] is True
    assert (out / "stage_main" / "DONE").exists() and (out / "stage_delta" / "DONE").exists()


def test_delta_stage_moves_only_the_vlm_tail(trained):
    """Between the main and the final checkpoint the VLM changes only where obs-CLS alone reads it (the
    final norm, the last layer's query/output/MLP: `train_cls_readout`); the main expert is untouched."""
    from safetensors.numpy import load_file

    out, _ = trained
    main = load_file(out / "stage_main" / "checkpoints" / "last" / "pretrained_model" / "model.safetensors")
    final = load_file(out / "checkpoints" / "last" / "pretrained_model" / "model.safetensors")
    changed = {k for k in main if not (main[k] == final[k]).all()}
    vlm = {k for k in changed if ".vlm." in k}
    tail = ("text_model.norm.", "self_attn.q_proj.", "self_attn.o_proj.", "mlp.", "post_attention_layernorm.")
    assert vlm and all(".text_model.layers.3." in k or ".text_model.norm." in k for k in vlm), sorted(vlm)
    assert all(any(t in k for t in tail) for k in vlm), sorted(vlm)
    assert not any("lm_expert" in k or k.startswith(("model.action_", "model.state_proj")) for k in changed)
    assert json.loads((out / "checkpoints" / "last" / "pretrained_model" / "config.json").read_text())["train_cls_readout"]


@pytest.mark.parametrize("flag", [None, "on", "off"])
def test_cls_readout_flag_reaches_the_config(flag, tmp_path, monkeypatch):
    """From the command line through the real `run_stage` to the stage's policy config (default on); the
    training itself is stopped where the config is built."""
    from smolvla_cls import train

    built = []

    class Built(Exception):
        pass

    def recording_config(*args, **kwargs):
        built.append(train_config(*args, **kwargs))
        raise Built

    train_config = train.policy_config
    monkeypatch.setattr(train, "check_dataset", lambda root: {})
    monkeypatch.setattr(train, "policy_config", recording_config)
    argv = ["--output-dir", str(tmp_path / "out"), "--no-report", "--stages", "delta"]
    (tmp_path / "out" / "stage_main" / "checkpoints" / "last" / "pretrained_model").mkdir(parents=True)
    with pytest.raises(Built):
        train.main(argv + ([] if flag is None else ["--cls-readout", flag]))
    assert [c.train_cls_readout for c in built] == [flag != "off"]
    assert built[0].train_delta_expert


def test_loss_logs_have_vicreg_components(trained):
    out, _ = trained
    main_rows = [json.loads(x) for x in (out / "loss_main.jsonl").read_text().splitlines()]
    delta_rows = [json.loads(x) for x in (out / "loss_delta.jsonl").read_text().splitlines()]
    assert len(main_rows) >= 1 and all("main_loss" in r for r in main_rows)
    assert len(delta_rows) >= 1
    for key in ("delta_loss", "vicreg_invariance", "vicreg_variance", "vicreg_covariance"):
        assert all(key in r for r in delta_rows), key


def test_symmetry_augmentation_follows_the_dataset(trained, tmp_path):
    """auto: on for a simtask recording (the smoke run), off for other data; `on` refuses other data."""
    from types import SimpleNamespace

    from smolvla_cls.train import _augmented

    _, stdout = trained
    assert "[train] symmetry augmentation on (3 colours)" in stdout
    (tmp_path / "meta").mkdir()
    sentinel = object()
    assert _augmented(sentinel, SimpleNamespace(augment="auto", dataset_root=tmp_path)) is sentinel
    assert _augmented(sentinel, SimpleNamespace(augment="off", dataset_root=tmp_path)) is sentinel
    with pytest.raises(SystemExit, match="simtask_recording.json is missing"):
        _augmented(sentinel, SimpleNamespace(augment="on", dataset_root=tmp_path))


def test_report_plots_and_numbers(trained):
    out, stdout = trained
    report_dir = out / "report"
    for name in ("loss_main.png", "loss_delta.png", "cls_pca.png", "report.md", "report.json"):
        assert (report_dir / name).stat().st_size > 0, name
    report = json.loads((report_dir / "report.json").read_text())
    assert set(report["closed_loop"]) == {"unperturbed", "perturbed", "swapped", "untrained"}
    assert all(r["n_episodes"] == 1 for r in report["closed_loop"].values())
    al = report["alignment"]
    assert 0.0 <= al["retrieval_top1"] <= 1.0 and al["chance_top1"] == 1.0 / al["n_pairs"]
    assert "[report]" in stdout


def test_missing_dataset_root_is_named(tmp_path):
    missing = tmp_path / "no_such_dataset"
    with pytest.raises(SystemExit, match="no_such_dataset.*does not exist"):
        train_main(["--dataset-root", str(missing), "--output-dir", str(tmp_path / "out"), "--no-report"])


def test_dataset_without_info_is_named(tmp_path):
    (tmp_path / "ds").mkdir()
    with pytest.raises(SystemExit, match="info.json is missing"):
        train_main(["--dataset-root", str(tmp_path / "ds"), "--output-dir", str(tmp_path / "out"), "--no-report"])


@pytest.mark.parametrize("drop", ["action", "observation.state", "observation.images.top"])
def test_dataset_lacking_a_feature_is_named(tmp_path, drop):
    features = {"action": {"dtype": "float32", "shape": [2]}, "observation.state": {"dtype": "float32", "shape": [2]},
                "observation.images.top": {"dtype": "image", "shape": [64, 64, 3]}}
    del features[drop]
    (tmp_path / "ds" / "meta").mkdir(parents=True)
    (tmp_path / "ds" / "meta" / "info.json").write_text(json.dumps({"features": features}))
    expected = "observation.images" if drop.startswith("observation.images") else drop
    with pytest.raises(SystemExit, match=expected):
        train_main(["--dataset-root", str(tmp_path / "ds"), "--output-dir", str(tmp_path / "out"), "--no-report"])


def test_interrupted_stage_resumes_from_its_last_checkpoint(trained, tmp_path):
    """Simulate a crash after the first checkpoint: `--resume` continues it with lerobot's resume."""
    import shutil

    src, _ = trained
    out = tmp_path / "out"
    shutil.copytree(src, out, symlinks=True)
    ckpts = out / "stage_main" / "checkpoints"
    steps = sorted(p.name for p in ckpts.iterdir() if p.name.isdigit())
    assert len(steps) >= 2, steps
    shutil.rmtree(ckpts / steps[-1])
    (ckpts / "last").unlink()
    (ckpts / "last").symlink_to(steps[0])
    (out / "stage_main" / "DONE").unlink()
    res = _run(["-m", "smolvla_cls.train", "--dataset-root", str(src.parent / "reach"), "--output-dir", str(out),
                "--steps", "4", "--stages", "main", "--no-report", "--num-workers", "0", "--resume"], 300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (ckpts / steps[-1] / "pretrained_model" / "model.safetensors").exists()
    assert (out / "stage_main" / "DONE").exists()


@settings(max_examples=40, deadline=None)
@given(quick=st.booleans(), steps=st.one_of(st.none(), st.integers(2, 50000)),
       delta=st.one_of(st.none(), st.integers(1, 5000)))
def test_plan_stages_budgets(quick, steps, delta):
    from smolvla_cls.train import plan_stages

    main, dl = plan_stages("tiny", quick, steps, delta)
    assert (main.name, dl.name) == ("main", "delta") and main.steps >= 1 and dl.steps >= 1
    if steps is not None:
        assert main.steps == max(1, steps - max(1, steps // 16))  # 15/16 of the budget goes to main
    if delta is not None:
        assert dl.steps == delta
    elif steps is None:
        assert dl.steps == (40 if quick else 1200)
    assert 0 <= dl.warmup <= dl.steps and 0 <= main.warmup <= main.steps
    assert (main.lr, dl.lr) == (1e-3, 3e-3)  # the delta stage trains CLS tokens/projections from scratch
    assert plan_stages("tiny", quick, steps, delta, delta_lr=5e-4)[1].lr == 5e-4


@pytest.mark.parametrize("argv", [["--irrelevant-augment-stages", "bogus"], ["--irrelevant-augment-stages", ""],
                                  ["--irrelevant-augment", "1.5"]])
def test_bad_irrelevant_augment_options_are_named(tmp_path, argv, capsys):
    with pytest.raises(SystemExit):
        train_main(["--dataset-root", str(tmp_path / "none"), "--output-dir", str(tmp_path / "out"), *argv])
    assert "--irrelevant-augment" in capsys.readouterr().err


@pytest.mark.parametrize("argv, flag", [
    (["--stages", ","], "--stages"), (["--stages", ""], "--stages"), (["--stages", "delta"], "--stages delta needs"),
    (["--delta-lr", "nan"], "--delta-lr"), (["--delta-lr", "-1"], "--delta-lr"), (["--delta-lr", "0"], "--delta-lr"),
    (["--chunk-size", "0"], "--chunk-size"), (["--num-workers", "-2"], "--num-workers"), (["--seed", "-1"], "--seed"),
    (["--augment", "off", "--pad-hold"], "--pad-hold"), (["--augment", "off", "--mask-after-jump"], "--mask-after-jump"),
])
def test_bad_training_flags_are_named_before_any_work(tmp_path, argv, flag, capsys):
    """Refused by name at once — not after the main stage, not as a trace, and --stages delta never from random weights."""
    with pytest.raises(SystemExit) as exc:
        train_main(["--dataset-root", str(tmp_path / "none"), "--output-dir", str(tmp_path / "out"), *argv])
    assert exc.value.code == 2 and flag in capsys.readouterr().err


def test_the_link_names_the_stage_that_ran_last(tmp_path, monkeypatch):
    """--stages delta,main still runs main then delta; `checkpoints` must point at delta (the final policy)."""
    from smolvla_cls import train

    monkeypatch.setattr(train, "check_dataset", lambda root: {})
    ran = []
    monkeypatch.setattr(train, "run_stage", lambda plan, args, out, init, info: ran.append(plan.name) or out)
    train.main(["--output-dir", str(tmp_path / "out"), "--no-report", "--stages", "delta,main"])
    assert ran == ["main", "delta"]
    assert (tmp_path / "out" / "checkpoints").readlink().as_posix() == "stage_delta/checkpoints"


def test_rerun_with_other_settings_keeps_nothing_silently(trained, tmp_path):
    """`make train-quick` then `make train` into one folder printed "already done" twice and kept the quick model:
    now refused in one line naming the flags (old → new); the same settings still skip."""
    import shutil

    src, _ = trained
    out = tmp_path / "out"
    shutil.copytree(src, out, symlinks=True)
    base = ["-m", "smolvla_cls.train", "--dataset-root", str(src.parent / "reach"), "--output-dir", str(out),
            "--no-report", "--num-workers", "0"]
    res = _run([*base, "--steps", "6", "--chunk-size", "5", "--act-cls-wiring", "seed"], 120)
    assert res.returncode == 1 and "already done" not in res.stdout, res.stdout[-2000:]
    assert res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "--chunk-size 10 → 5" in res.stderr and "--output-dir" in res.stderr
    same = _run([*base, "--steps", "4", "--quick"], 120)
    assert same.returncode == 0, same.stderr[-2000:]
    assert "stage main: already done" in same.stdout and "stage delta: already done" in same.stdout


@pytest.mark.parametrize(("name", "text", "problem"), [
    ("info.json", "{not json", "info.json is unreadable"), ("info.json", "[1, 2]", "info.json is not a JSON object"),
    ("simtask_recording.json", "{not json", "simtask_recording.json is unreadable"),
    ("simtask_recording.json", '{"identity": []}', "simtask_recording.json has no identity.task.colors"),
])
def test_corrupt_dataset_metadata_is_named_in_one_line(tmp_path, name, text, problem):
    """A raw JSONDecodeError trace (info.json) or "has no identity.task.colors" (a sidecar that is not JSON) before."""
    features = {"action": {"dtype": "float32", "shape": [2]}, "observation.state": {"dtype": "float32", "shape": [2]},
                "observation.images.top": {"dtype": "image", "shape": [64, 64, 3]}}
    (tmp_path / "ds" / "meta").mkdir(parents=True)
    (tmp_path / "ds" / "meta" / "info.json").write_text(json.dumps({"features": features}))
    (tmp_path / "ds" / "meta" / name).write_text(text)
    with pytest.raises(SystemExit) as exc:
        train_main(["--dataset-root", str(tmp_path / "ds"), "--output-dir", str(tmp_path / "out"), "--no-report"])
    message = str(exc.value.code)
    assert message.startswith("train: ") and problem in message and "\n" not in message, message


def test_lerobot_train_finds_the_policy_through_its_plugin_distribution(trained, tmp_path):
    """`lerobot-train --policy.path=<smolvla_cls checkpoint>` failed with "Couldn't find a choice class for
    'smolvla_cls'": nothing registered the type before draccus parsed the path. lerobot imports installed
    distributions named `lerobot_policy_*`; ours (plugins/, `make install`) is built and put on the path here."""
    import importlib.util
    import shutil

    import tomllib

    plugin = REPO / "plugins" / "lerobot_policy_smolvla_cls"
    project = tomllib.loads((plugin / "pyproject.toml").read_text())["project"]
    name = project["name"]
    assert name.startswith("lerobot_policy_") and (plugin / name / "__init__.py").exists()
    assert f"-e plugins/{name}" in (REPO / "scripts" / "ensure_env.sh").read_text()
    site = tmp_path / "site"
    if importlib.util.find_spec("setuptools"):  # as pip installs it (built from a copy: no build/ in the checkout)
        shutil.copytree(plugin, tmp_path / "plugin")
        pip = _run(["-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "--target",
                    str(site), str(tmp_path / "plugin")], 120)
        assert pip.returncode == 0, pip.stderr[-2000:]
    else:  # a venv without setuptools (lerobot 0.6 root): the metadata lerobot reads, next to the package
        (site / f"{name}-{project['version']}.dist-info").mkdir(parents=True)
        (site / f"{name}-{project['version']}.dist-info" / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {project['version']}\n")
        shutil.copytree(plugin / name, site / name)
    out, _ = trained
    res = _run(["-m", "lerobot.scripts.lerobot_train", f"--policy.path={out / 'checkpoints/last/pretrained_model'}",
                "--dataset.repo_id=local/simtask_reach", f"--dataset.root={out.parent / 'reach'}", "--steps=1",
                "--batch_size=2", "--num_workers=0", f"--output_dir={tmp_path / 'run'}", "--policy.push_to_hub=false",
                "--wandb.enable=false"], 180, PYTHONPATH=f"{site}{os.pathsep}{REPO}")
    assert res.returncode == 0, res.stderr[-3000:]
    saved = json.loads((tmp_path / "run" / "checkpoints" / "last" / "pretrained_model" / "config.json").read_text())
    assert saved["type"] == "smolvla_cls"
