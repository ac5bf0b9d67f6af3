"""What defines a training stage, recorded next to it, and the up-front check of a re-run against it.

`train.py` skips a stage whose folder holds a finished checkpoint. Without a record of the settings that
produced it, a re-run into the same `--output-dir` with other settings (`make train-quick`, then `make train`)
printed "already done" and kept the old model. Each stage now writes `<out>/stage_<name>.settings.json` before
it trains; a re-run compares and refuses with one line naming every differing flag (old → new), so a skip only
ever means "the same training, already done". `--resume` is checked the same way: lerobot's resume continues
from the saved train config, so new settings would be ignored there too. The dataset counts by content (a hash of
its meta files), not only by root: a re-recording at the same root is other data. `--stages delta` also checks the
main stage it starts from (SHARED_WITH_MAIN).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

# setting → the flag(s) a user changes it with (the message names these)
FLAGS = {
    "preset": "--preset", "dataset_root": "--dataset-root", "chunk_size": "--chunk-size", "seed": "--seed",
    "dataset": "--dataset-root content (meta/info.json, stats.json, simtask_recording.json)",
    "augment": "--augment", "pad_hold": "--pad-hold", "mask_after_jump": "--mask-after-jump",
    "irrelevant_augment": "--irrelevant-augment/--irrelevant-augment-stages",
    "act_cls_wiring": "--act-cls-wiring", "cls_readout": "--cls-readout",
}


def settings_path(out: Path, stage: str) -> Path:
    """Beside (not inside) the stage folder: lerobot refuses to start in an existing folder."""
    return out / f"stage_{stage}.settings.json"


# Settings a stage started from the main stage on disk (`--stages delta`) must share with it: the architecture
# and chunk the main expert was trained with, the data (its normalisation stats go into the final checkpoint) and
# what its chunk labels mean. Not compared: steps, lr and seed (how the main stage trained) and the irrelevant
# image changes (per stage by design, --irrelevant-augment-stages).
SHARED_WITH_MAIN = ("preset", "chunk_size", "dataset_root", "dataset", "augment", "pad_hold", "mask_after_jump")
# what identifies a recording's content cheaply: a re-recording at the same root (other episodes, seed) changes them
CONTENT_FILES = ("meta/info.json", "meta/stats.json", "meta/simtask_recording.json")


def dataset_identity(root: Path) -> str:
    """A short hash of the dataset's CONTENT_FILES (an absent one counts as absent)."""
    digest = hashlib.sha256()
    for name in CONTENT_FILES:
        path = Path(root) / name
        try:
            data = path.read_bytes() if path.is_file() else b"(absent)"
        except OSError as exc:
            raise SystemExit(f"train: {path} is unreadable ({exc})") from None
        digest.update(name.encode() + b"\0" + data + b"\0")
    return digest.hexdigest()[:16]


def stage_settings(plan, args) -> dict:
    """The settings that decide what a stage trains (not how fast: device and loader workers are left out)."""
    from smolvla_cls.augmentation import simtask_colours

    # as train.py resolves them, not as typed: `--augment auto` on a simtask recording is `on`, and the irrelevant
    # changes ride on that augmentation (ignored without it)
    augment = args.augment != "off" and simtask_colours(args.dataset_root) is not None
    p = args.irrelevant_augment if augment and plan.name in args.irrelevant_augment_stages.split(",") else 0.0
    settings = {"steps": plan.steps, "lr": plan.lr, "preset": args.preset,
                "dataset_root": str(Path(args.dataset_root).resolve()), "dataset": dataset_identity(args.dataset_root),
                "chunk_size": args.chunk_size,
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
    if [p.name for p in plans] == ["delta"]:
        check_reused_main(out, args)
    for plan in plans:
        stage_dir = out / f"stage_{plan.name}"
        recorded = read_settings(out, plan.name)
        if recorded is not None and stage_dir.exists():
            diff = differences(recorded, _comparable(recorded, stage_settings(plan, args), plan.name), plan.name)
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


def _comparable(recorded: dict, new: dict, stage: str) -> dict:
    """`new` without the dataset content where the record predates it (compared by root only then, with a note)."""
    if "dataset" in recorded:
        return new
    print(f"[train] stage {stage}: its dataset content was not recorded (trained before it was); compared by "
          "--dataset-root only")
    return {k: v for k, v in new.items() if k != "dataset"}


def check_reused_main(out: Path, args) -> None:
    """`--stages delta` starts from the main stage on disk: refuse it if this run's SHARED_WITH_MAIN settings
    differ from the ones recorded for that stage (a delta stage with another chunk size trained happily on top)."""
    from types import SimpleNamespace

    recorded = read_settings(out, "main")
    if recorded is None:
        print("[train] the main stage's settings were not recorded (trained before they were); the delta stage "
              "starts from it without comparing them")
        return
    ours = _comparable(recorded, stage_settings(SimpleNamespace(name="main", steps=None, lr=None), args), "main")
    keys = [k for k in SHARED_WITH_MAIN if k in ours]
    diff = differences({k: recorded.get(k) for k in keys}, {k: ours[k] for k in keys}, "main")
    if diff:
        raise SystemExit(f"train: --stages delta starts from the main stage in --output-dir {out}, trained with other "
                         f"settings ({'; '.join(diff)}); pass its flags, or train both stages into a new --output-dir")
