"""What defines a training stage, recorded next to it, and the up-front check of a re-run against it.

`train.py` skips a stage whose folder holds a finished checkpoint. Without a record of the settings that
produced it, a re-run into the same `--output-dir` with other settings (`make train-quick`, then `make train`)
printed "already done" and kept the old model. Each stage now writes `<out>/stage_<name>.settings.json` before
it trains; a re-run compares and refuses with one line naming every differing flag (old → new), so a skip only
ever means "the same training, already done". `--resume` is checked the same way: lerobot's resume continues
from the saved train config, so new settings would be ignored there too.
"""

from __future__ import annotations

import json
from pathlib import Path

# setting → the flag(s) a user changes it with (the message names these)
FLAGS = {
    "preset": "--preset", "dataset_root": "--dataset-root", "chunk_size": "--chunk-size", "seed": "--seed",
    "augment": "--augment", "pad_hold": "--pad-hold", "mask_after_jump": "--mask-after-jump",
    "irrelevant_augment": "--irrelevant-augment/--irrelevant-augment-stages",
    "act_cls_wiring": "--act-cls-wiring", "cls_readout": "--cls-readout",
}


def settings_path(out: Path, stage: str) -> Path:
    """Beside (not inside) the stage folder: lerobot refuses to start in an existing folder."""
    return out / f"stage_{stage}.settings.json"


def stage_settings(plan, args) -> dict:
    """The settings that decide what a stage trains (not how fast: device and loader workers are left out)."""
    from smolvla_cls.augmentation import simtask_colours

    # as train.py resolves them, not as typed: `--augment auto` on a simtask recording is `on`, and the irrelevant
    # changes ride on that augmentation (ignored without it)
    augment = args.augment != "off" and simtask_colours(args.dataset_root) is not None
    p = args.irrelevant_augment if augment and plan.name in args.irrelevant_augment_stages.split(",") else 0.0
    settings = {"steps": plan.steps, "lr": plan.lr, "preset": args.preset,
                "dataset_root": str(Path(args.dataset_root).resolve()), "chunk_size": args.chunk_size,
                "seed": args.seed, "augment": "on" if augment else "off", "pad_hold": bool(args.pad_hold),
                "mask_after_jump": bool(args.mask_after_jump), "irrelevant_augment": p}
    if plan.name == "delta":  # act-CLS wiring and the obs-CLS read-out change only the delta stage
        settings.update(act_cls_wiring=args.act_cls_wiring, cls_readout=args.cls_readout)
    return settings


def _flag(key: str, stage: str) -> str:
    if key == "steps":
        return f"{stage}-stage steps (--steps/--quick{'/--delta-steps' if stage == 'delta' else ''})"
    if key == "lr":
        return f"{stage}-stage learning rate ({'--delta-lr' if stage == 'delta' else '--preset'})"
    return FLAGS.get(key, key)


def differences(old: dict, new: dict, stage: str) -> list[str]:
    """'--flag old → new' for each setting that differs (a setting absent on one side counts as differing)."""
    return [f"{_flag(k, stage)} {old.get(k, '(unset)')} → {new.get(k, '(unset)')}"
            for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def read_settings(out: Path, stage: str) -> dict | None:
    """The recorded settings; None where the stage predates the record. An unreadable record is refused."""
    path = settings_path(out, stage)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SystemExit(f"train: {path} is unreadable ({exc}); delete {out / f'stage_{stage}'} and {path} "
                         "or pick a new --output-dir") from None
    if not isinstance(data, dict):
        raise SystemExit(f"train: {path} is not a settings object; delete {out / f'stage_{stage}'} and {path} "
                         "or pick a new --output-dir")
    return data


def write_settings(out: Path, stage: str, settings: dict) -> None:
    settings_path(out, stage).write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")


def check_rerun(out: Path, plans: list, args) -> dict[str, str]:
    """Before any work: what each stage to run will do ('train', 'resume', 'skip'), or one SystemExit line.

    Refused: a finished or interrupted stage recorded with other settings (names each differing flag, old → new);
    an interrupted stage without `--resume`, or with nothing to resume; a finished delta stage when the main
    stage it started from will be trained anew from scratch (it would be kept, trained from the old main stage)."""
    actions: dict[str, str] = {}
    for plan in plans:
        stage_dir = out / f"stage_{plan.name}"
        recorded = read_settings(out, plan.name)
        if recorded is not None and stage_dir.exists():
            diff = differences(recorded, stage_settings(plan, args), plan.name)
            if diff:
                raise SystemExit(
                    f"train: --output-dir {out} holds stage {plan.name} trained with other settings "
                    f"({'; '.join(diff)}); pick a new --output-dir or delete {stage_dir} to retrain it")
        done = (stage_dir / "DONE").exists() and (stage_dir / "checkpoints" / "last" / "pretrained_model").exists()
        if done:
            actions[plan.name] = "skip"
            if recorded is None:
                print(f"[train] stage {plan.name}: its settings were not recorded (trained before they were); "
                      "kept as it is without comparing them")
        elif not stage_dir.exists():
            actions[plan.name] = "train"
        elif not args.resume:
            raise SystemExit(f"train: stage {plan.name} in --output-dir {out} was interrupted; pass --resume to "
                             f"continue it, or delete {stage_dir} to start it again")
        elif not (stage_dir / "checkpoints" / "last").exists():
            raise SystemExit(f"train: --resume: stage {plan.name} in {out} stopped before its first checkpoint, "
                             f"nothing to resume; delete {stage_dir} to start it again")
        else:
            actions[plan.name] = "resume"
    delta_dir = out / "stage_delta"
    if actions.get("main") == "train" and (delta_dir / "DONE").exists():
        raise SystemExit(f"train: {delta_dir} was trained from an earlier main stage that is now trained again; "
                         f"delete {delta_dir} (or pick a new --output-dir)")
    return actions
