"""`make train`: trains `smolvla_cls` with lerobot's own training loop, in two stages.

Stage 1 "main"  — flow matching of the main expert with the prefix CLS tokens in place (they are pure
                  read-outs, see masks.py), VLM and vision trained from scratch (tiny preset); delta
                  expert and CLS parameters frozen (no loss reaches them).
Stage 2 "delta" — the seed's delta objective: main expert and VLM frozen but its tail only obs-CLS reads
                  (`--cls-readout on`); delta expert, CLS tokens, both CLS projections and that tail
                  trained with denoising + vicreg_weight · VICReg. It starts from the
                  main stage's checkpoint, and loading a main-stage checkpoint re-copies the delta expert
                  from the *trained* main expert (SmolVLACLSPolicy._load_as_safetensor); resuming keeps it.
Each stage is a plain `lerobot.scripts.lerobot_train.train(cfg)` run with its own lerobot output folder;
`<output>/checkpoints` points at the last stage's checkpoints, so
`<output>/checkpoints/last/pretrained_model` is the final policy in lerobot's layout.
A finished stage is skipped on a re-run only if it was trained with the same settings; other settings (or an
interrupted stage without `--resume`) are refused before any work, naming the flags (train_settings.py).
Loss components of every step are recorded to `<output>/loss_<stage>.jsonl` (lerobot only sends them to
wandb; a resume cuts it back to the checkpoint's step) and plotted in the report.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from smolvla_cls.train_settings import check_rerun

STAGES = ("main", "delta")


@dataclass
class StagePlan:
    name: str
    steps: int
    lr: float
    warmup: int
    batch_size: int


def plan_stages(preset: str, quick: bool, steps: int | None,
                delta_steps_override: int | None = None, delta_lr: float | None = None) -> list[StagePlan]:
    """Step budgets per stage (defaults sized for ≤ 30 min on 2 CPU cores for the tiny preset)."""
    # tiny on 2 CPU cores, batch 32, 1 torch thread + 1 loader worker (measured): ~0.1 s per main step,
    # ~0.2 s per delta step. A fresh `make train` (10000 + 300 steps, augmented) took 21 min 14 s wall:
    # recording 58 s, main 1104 s, delta 60 s, report 38 s.
    # delta 1200 (was 300): the plan-only VICReg alignment is trained only here; on one main-stage checkpoint
    # consistency calibration AUROC was 0.82 after 300 steps, 0.88 at step 750 and 0.92 after 1500 (docs/01)
    main_steps, delta_steps = (300, 40) if quick else (10000, 1200)
    if steps is not None:  # total budget: 15/16 main, 1/16 delta (at least 1 step each)
        delta_steps = max(1, steps // 16)
        main_steps = max(1, steps - delta_steps)
    if delta_steps_override is not None:
        delta_steps = delta_steps_override
    batch = 32 if preset == "tiny" else 8
    lr = 1e-3 if preset == "tiny" else 1e-4
    # delta stage, tiny: 3e-3 — the CLS tokens and projections start from scratch here; measured with the same
    # 300 steps, plan_only consistency AUROC 0.87 vs 0.80 at 1e-3 (docs/01-model.md)
    delta_lr = (3e-3 if preset == "tiny" else 1e-4) if delta_lr is None else delta_lr
    return [StagePlan("main", main_steps, lr, min(100, main_steps // 10), batch),
            StagePlan("delta", delta_steps, delta_lr, min(30, delta_steps // 10), batch)]


def check_dataset(root: Path) -> dict:
    """Fail early, naming what is missing, instead of deep inside lerobot's loader."""
    info_path = root / "meta" / "info.json"
    if not root.exists():
        raise SystemExit(f"train: dataset root {root} does not exist (record it with `make dataset`)")
    if not info_path.exists():
        raise SystemExit(f"train: {info_path} is missing: {root} is not a LeRobotDataset")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SystemExit(f"train: {info_path} is unreadable ({exc}); re-record the dataset") from None
    if not isinstance(info, dict) or not isinstance(info.get("features", {}), dict):
        raise SystemExit(f"train: {info_path} is not a JSON object with a 'features' object; re-record the dataset")
    features = info.get("features", {})
    need = {"action": None, "observation.state": None}
    for key in need:
        if key not in features:
            raise SystemExit(f"train: dataset feature {key!r} is missing in {info_path}")
    if not any(k.startswith("observation.images.") for k in features):
        raise SystemExit(f"train: dataset has no camera feature 'observation.images.*' in {info_path}")
    for key in ("action", "observation.state"):
        shape = features[key].get("shape") if isinstance(features[key], dict) else None
        if not isinstance(shape, list) or len(shape) != 1:
            raise SystemExit(f"train: feature {key!r} in {info_path} must be a vector, got shape {shape}")
    from smolvla_cls.augmentation import simtask_colours

    try:  # a corrupt sidecar is named here, before the settings check and the augmentation read it
        simtask_colours(root)
    except ValueError as exc:
        raise SystemExit(f"train: {str(exc).removeprefix('augmentation: ')}") from None
    return info


def warn_long_instructions(root: Path, preset: str) -> None:
    """Training truncates instructions past the language length and the runtime refuses them: say so first."""
    from transformers import AutoTokenizer

    from smolvla_cls.instruction_length import warn_overlong
    from smolvla_cls.presets import POLICY_OVERRIDES, materialize_preset

    tokenizer = AutoTokenizer.from_pretrained(str(materialize_preset(preset)))
    warn_overlong("train", root, tokenizer, POLICY_OVERRIDES[preset]["tokenizer_max_length"])


def policy_config(preset: str, stage: str, device: str, chunk: int, act_cls_wiring: str = "plan_only",
                  cls_readout: bool = True):
    from smolvla_cls.configuration_smolvla_cls import SmolVLACLSConfig
    from smolvla_cls.presets import POLICY_OVERRIDES

    return SmolVLACLSConfig(
        vlm_preset=preset, **POLICY_OVERRIDES[preset], device=device, push_to_hub=False,
        chunk_size=chunk, n_action_steps=chunk, num_steps=10,
        train_expert_only=(stage == "delta"), freeze_vision_encoder=(stage == "delta"),
        train_delta_expert=(stage == "delta"), use_cls_head=True, act_cls_wiring=act_cls_wiring,
        train_cls_readout=cls_readout,
    )


def _recording_update(update_policy, handle, first_step: int, elapsed: float = 0.0):
    """Wrap lerobot's `update_policy` to append each step's loss components to an open JSONL file, with the
    stage's wall time so far (`elapsed_s`: `elapsed` seconds of earlier, interrupted runs plus this one's)."""
    step, started = [first_step], time.time()

    def wrapped(*args, **kwargs):
        tracker, output = update_policy(*args, **kwargs)
        step[0] += 1
        record = {"step": step[0], **{k: float(v) for k, v in (output or {}).items() if isinstance(v, (int, float))},
                  "elapsed_s": round(elapsed + time.time() - started, 3)}
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        return tracker, output

    return wrapped


def _prepared_dataset(dataset, args, stage: str = "main"):
    """What lerobot's loop trains on: fast chunk look-ups, then augmentation (per `--augment`)."""
    from smolvla_cls.chunk_queries import enable_fast_chunk_queries

    return _augmented(enable_fast_chunk_queries(dataset), args, stage)


def _augmented(dataset, args, stage: str = "main"):
    """Symmetry augmentation (smolvla_cls/augmentation.py) per `--augment`: auto = on for simtask recordings."""
    from smolvla_cls.augmentation import enable, simtask_colours
    from smolvla_cls.dataset_recording import SIDECAR

    relabel = [f for f, on in (("--pad-hold", getattr(args, "pad_hold", False)),
                                ("--mask-after-jump", getattr(args, "mask_after_jump", False))) if on]
    if args.augment == "off":
        if relabel:
            raise SystemExit(f"train: {' '.join(relabel)} rides on the simtask augmentation; drop --augment off")
        return dataset
    colours = simtask_colours(args.dataset_root)
    if colours is None:
        if getattr(args, "irrelevant_augment", 0.0) > 0 and stage == "main":
            print(f"[train] --irrelevant-augment {args.irrelevant_augment}: ignored, it needs a simtask recording "
                  f"(the changes ride on the symmetry augmentation)")
        if relabel:
            raise SystemExit(f"train: {' '.join(relabel)} needs a simtask recording (its hold is a zero displacement "
                             "and its sidecar names the jump ticks)")
        if args.augment == "on":
            raise SystemExit(f"train: --augment on needs a simtask recording ({Path(args.dataset_root) / SIDECAR} "
                             "is missing); real-robot data has no such symmetry")
        return dataset
    # irrelevant image changes only in the stages named: in the main stage they make the VLM's features (and so
    # obs-CLS) ignore light and noise; the delta stage's VICReg pairs stay clean frames (docs/01 measured both)
    p = args.irrelevant_augment if stage in args.irrelevant_augment_stages.split(",") else 0.0
    print(f"[train] symmetry augmentation on ({len(colours)} colours); irrelevant image changes p={p} ({stage} stage)")
    hold = getattr(args, "pad_hold", False)
    if hold:
        print("[train] --pad-hold: chunk rows past an episode's end are supervised as a hold (zero displacement)")
    events = None
    if getattr(args, "mask_after_jump", False):
        events = jump_ticks(Path(args.dataset_root))
        print(f"[train] --mask-after-jump: rows after a target jump are unsupervised in {len(events)} episodes' chunks")
    return enable(dataset, colours, p, pad_hold=hold, event_ticks=events)


def jump_ticks(root: Path) -> dict[int, int]:
    """{episode_index: perturb_tick} of a simtask recording's perturbed episodes (from its sidecar), for jumps
    that happened before the episode's success (without `hold_until_perturb` a scene's tick may come later)."""
    from smolvla_cls.dataset_recording import read_sidecar

    side = read_sidecar(root) or {}
    return {int(e["episode_index"]): int(e["perturb_tick"]) for e in side.get("episodes", [])
            if e.get("perturb_tick") is not None and e["perturb_tick"] < (e.get("success_length") or e["length"])}


def checkpoint_step(stage_dir: Path) -> int:
    """The step of the stage's last checkpoint, where lerobot's resume continues (its training_step.json)."""
    from lerobot.utils.constants import TRAINING_STATE_DIR, TRAINING_STEP

    path = stage_dir / "checkpoints" / "last" / TRAINING_STATE_DIR / TRAINING_STEP
    try:
        step = json.loads(path.read_text())["step"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SystemExit(f"train: --resume: {path} is unreadable ({exc!r}); delete {stage_dir} to start "
                         "the stage again") from None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise SystemExit(f"train: --resume: {path} holds no step count ({step!r}); delete {stage_dir}")
    return step


def truncate_log(log_path: Path, step: int) -> float:
    """Keep the loss log's rows up to `step` (the later ones are trained again after a resume); returns the
    seconds the stage already ran (the last row's `elapsed_s`, discarded rows included: that time was spent)."""
    rows = []
    for line in log_path.read_text().splitlines() if log_path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a row cut short by the interruption
            continue
    rows = [r for r in rows if isinstance(r, dict) and isinstance(r.get("step"), int)]
    elapsed = max((float(r.get("elapsed_s", 0.0)) for r in rows), default=0.0)
    log_path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["step"] <= step))
    return elapsed


def run_stage(plan: StagePlan, args, out_dir: Path, init_from: Path | None, info: dict) -> Path:
    """One lerobot training run; returns its last pretrained_model folder."""
    from lerobot.configs.default import DatasetConfig, WandBConfig
    from lerobot.configs.train import TrainPipelineConfig
    from lerobot.scripts import lerobot_train

    import smolvla_cls.modeling_smolvla_cls  # noqa: F401  (policy class for lerobot's lookup)
    from smolvla_cls.lerobot_compat import datasets_transformed, train_config_kwargs
    from smolvla_cls.train_settings import stage_settings, write_settings

    stage_dir = out_dir / f"stage_{plan.name}"
    last = stage_dir / "checkpoints" / "last" / "pretrained_model"
    if last.exists() and (stage_dir / "DONE").exists():  # main() has checked its settings are these
        print(f"[train] stage {plan.name}: already done ({last})")
        return last
    write_settings(out_dir, plan.name, stage_settings(plan, args))  # before training: --resume checks it too
    policy = policy_config(args.preset, plan.name, args.device, args.chunk_size, args.act_cls_wiring,
                           args.cls_readout == "on")
    policy.optimizer_lr = plan.lr
    policy.scheduler_warmup_steps = plan.warmup
    policy.scheduler_decay_steps = plan.steps
    policy.scheduler_decay_lr = plan.lr * 0.05
    policy.optimizer_grad_clip_norm = 1.0
    if init_from is not None:
        policy.pretrained_path = init_from
    resume = args.resume and (stage_dir / "checkpoints" / "last").exists()
    cfg = TrainPipelineConfig(
        dataset=DatasetConfig(repo_id=info.get("repo_id", "local/simtask_reach"), root=str(args.dataset_root)),
        policy=policy, output_dir=stage_dir, job_name=f"smolvla_cls_{plan.name}", seed=args.seed,
        steps=plan.steps, batch_size=plan.batch_size, num_workers=args.num_workers,
        log_freq=max(1, plan.steps // 20), save_freq=max(1, plan.steps // 2), **train_config_kwargs(0),
        wandb=WandBConfig(enable=False), resume=resume,
    )
    if resume:
        # lerobot's own resume: the saved train_config.json (optimizer, scheduler, step budget) + the
        # checkpoint's optimizer/scheduler state; validate() reads --config_path from the CLI args.
        saved = stage_dir / "checkpoints" / "last" / "pretrained_model"
        cfg = saved_train_config(saved)
        cfg.resume = True
        cfg.output_dir = stage_dir  # the run folder may have been moved since it was saved
        cfg.num_workers, cfg.policy.device = args.num_workers, policy.device  # how fast, not what: this run's
        sys.argv = [sys.argv[0], f"--config_path={saved / 'train_config.json'}"]
    else:
        sys.argv = [sys.argv[0]]  # lerobot's validate() re-reads CLI args: give it none of ours
    stage_dir.parent.mkdir(parents=True, exist_ok=True)
    original = lerobot_train.update_policy
    log_path = stage_dir.parent / f"loss_{plan.name}.jsonl"
    # lerobot resumes from the last checkpoint's step: rows logged after it are trained (and logged) again
    first = checkpoint_step(stage_dir) if resume else 0
    before = truncate_log(log_path, first) if resume else 0.0
    if not resume:
        log_path.unlink(missing_ok=True)
    started = time.time()
    prepared = functools.partial(_prepared_dataset, args=args, stage=plan.name)
    with log_path.open("a") as log, datasets_transformed(lerobot_train, prepared):
        lerobot_train.update_policy = _recording_update(original, log, first, before)
        try:
            lerobot_train.train(cfg)
        finally:
            lerobot_train.update_policy = original
    took = time.time() - started  # seconds: the whole stage, time before an interruption included
    (stage_dir / "DONE").write_text(json.dumps({"seconds": before + took, "seconds_this_run": took,
                                                "steps": plan.steps, "resumed_from_step": first if resume else None}))
    print(f"[train] stage {plan.name}: {plan.steps} steps in {took:.0f} s" + (f" (+{before:.0f} s before)" * resume))
    return last


def saved_train_config(saved: Path):  # -> TrainPipelineConfig
    """lerobot's saved train config of a stage to resume; one `train: --resume:` line when this lerobot cannot
    parse it (a stage started under another release: 0.4.4 and 0.6 save different fields)."""
    import draccus.utils
    import lerobot
    from lerobot.configs.train import TrainPipelineConfig

    try:
        return TrainPipelineConfig.from_pretrained(str(saved))
    except draccus.utils.DecodingError as exc:
        problem = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise SystemExit(f"train: --resume: {saved / 'train_config.json'} does not parse under lerobot "
                         f"{lerobot.__version__} ({problem}): the stage was started under another lerobot release; "
                         "resume it with that release, or retrain the stage (without --resume)") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset-root", type=Path, default=Path("data/reach"))
    parser.add_argument("--preset", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/train/default"))
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or xpu (cuda falls back to cpu "
                        "where there is none)")
    parser.add_argument("--steps", type=int, default=None, help="total optimiser steps over both stages")
    parser.add_argument("--quick", action="store_true", help="same pipeline, few steps (smoke/demo)")
    parser.add_argument("--delta-steps", type=int, default=None,
                        help="steps of the delta stage (overrides the default 1200 / the --steps split)")
    parser.add_argument("--delta-lr", type=float, default=None, help="peak learning rate of the delta stage")
    parser.add_argument("--chunk-size", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--resume", action="store_true", help="continue interrupted stages (lerobot resume)")
    parser.add_argument("--stages", default="main,delta")
    parser.add_argument("--augment", choices=("auto", "on", "off"), default="auto",
                        help="task-symmetry augmentation (auto: on for simtask recordings, off otherwise)")
    parser.add_argument("--act-cls-wiring", choices=("seed", "plan_only"), default="plan_only",
                        help="which pass produces act-CLS (smolvla_cls/plan_pass.py); seed = the seed's wiring")
    parser.add_argument("--cls-readout", choices=("on", "off"), default="on",
                        help="delta stage: also train the VLM tail only obs-CLS reads (docs/01); off = before issue 20")
    parser.add_argument("--irrelevant-augment", type=float, default=0.5, metavar="P",
                        help="probability of a brightness / colour / noise-burst change per training image "
                             "(simtask/image_changes.py TRAINING ranges; needs the symmetry augmentation on; "
                             "0 turns it off)")
    parser.add_argument("--irrelevant-augment-stages", default="main", metavar="STAGES",
                        help="comma-separated stages that see the irrelevant changes (default main: docs/01)")
    parser.add_argument("--pad-hold", action="store_true",
                        help="supervise chunk rows past an episode's end as a hold (zero displacement; simtask "
                             "recordings only) instead of masking them: chunk tails learn to stop at the goal")
    parser.add_argument("--mask-after-jump", action="store_true",
                        help="leave a chunk's rows after a target jump the frame could not see unsupervised (simtask "
                             "recordings only): frames waiting at the goal stop learning a move toward a random place")
    parser.add_argument("--no-report", action="store_true", help="skip plots and evaluation after training")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 2:
        parser.error(f"--steps={args.steps}: expected >= 2 (one per stage)")
    if not 0.0 <= args.irrelevant_augment <= 1.0:
        parser.error(f"--irrelevant-augment={args.irrelevant_augment}: expected a probability in [0, 1]")
    bad = [s for s in args.irrelevant_augment_stages.split(",") if s not in STAGES]
    if bad or not args.irrelevant_augment_stages:
        parser.error(f"--irrelevant-augment-stages={args.irrelevant_augment_stages!r}: expected stages from {STAGES}")
    if args.delta_steps is not None and args.delta_steps < 1:
        parser.error(f"--delta-steps={args.delta_steps}: expected >= 1")
    if args.delta_lr is not None and not (math.isfinite(args.delta_lr) and args.delta_lr > 0):
        parser.error(f"--delta-lr={args.delta_lr}: expected a finite learning rate > 0")
    relabel = [f for f, on in (("--pad-hold", args.pad_hold), ("--mask-after-jump", args.mask_after_jump)) if on]
    if args.augment == "off" and relabel:
        parser.error(f"{' '.join(relabel)} rides on the simtask augmentation; drop --augment off")
    if args.chunk_size < 1:
        parser.error(f"--chunk-size={args.chunk_size}: expected >= 1")
    if args.num_workers < 0:
        parser.error(f"--num-workers={args.num_workers}: expected >= 0")
    if not 0 <= args.seed < 2**32:
        parser.error(f"--seed={args.seed}: expected an integer in [0, 2**32)")
    stages = [s for s in args.stages.split(",") if s]
    for s in stages:
        if s not in STAGES:
            parser.error(f"--stages: unknown stage {s!r} (expected {STAGES})")
    if not stages:
        parser.error(f"--stages={args.stages!r}: expected one or more of {','.join(STAGES)}")
    if not re.fullmatch(r"cpu|mps|xpu|cuda(:\d+)?", args.device):
        parser.error(f"--device={args.device!r}: expected cpu, cuda, cuda:N, mps or xpu")
    existing = next(p for p in (args.output_dir, *args.output_dir.absolute().parents) if p.exists())
    if not existing.is_dir():
        parser.error(f"--output-dir={args.output_dir}: {existing} is a file, not a folder; pick another --output-dir")
    if not os.access(existing, os.W_OK):
        parser.error(f"--output-dir={args.output_dir}: {existing} is not writable; pick another --output-dir")
    link = args.output_dir / "checkpoints"  # replaced by a link to the last stage's checkpoints once trained
    if link.is_dir() and not link.is_symlink():
        parser.error(f"--output-dir={args.output_dir}: {link} is a folder (not this command's link to the last "
                     "stage's checkpoints, e.g. a plain lerobot-train run); pick another --output-dir or move it")
    main_done = args.output_dir / "stage_main" / "checkpoints" / "last" / "pretrained_model"
    if "delta" in stages and "main" not in stages and not main_done.exists():
        # the delta stage freezes the VLM and main expert: from random weights it would train on noise
        parser.error(f"--stages delta needs the main stage's checkpoint {main_done} (run --stages main first)")
    info = check_dataset(args.dataset_root)
    plans = [p for p in plan_stages(args.preset, args.quick, args.steps, args.delta_steps, args.delta_lr)
             if p.name in stages]
    check_rerun(args.output_dir, plans, args)  # a re-run with other settings is refused here, not skipped
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warn_long_instructions(args.dataset_root, args.preset)
    import torch

    # Leave one core per loader worker: on 2 cores, 2 torch threads + 1 worker oversubscribe the CPU and
    # OpenMP's spinning threads made steps up to 20x slower (measured 7 s vs 0.3 s per step under load).
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - max(1, args.num_workers)))
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    init = main_done if "main" not in stages else None  # delta alone continues from the main stage on disk
    ran = []
    for plan in plans:
        init = run_stage(plan, args, out, init, info)
        ran.append(plan.name)
    link = out / "checkpoints"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(Path(f"stage_{ran[-1]}") / "checkpoints")  # the stage that ran last (always main → delta)
    final = out / "checkpoints" / "last" / "pretrained_model"
    print(f"[train] final policy: {final}")
    if not args.no_report:
        from smolvla_cls.train_report import write_training_report

        write_training_report(out, final, args.dataset_root, quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
