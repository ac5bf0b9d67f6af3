"""Training report written after `make train`: plots, closed-loop evaluation and CLS alignment.

`write_training_report(out_dir, checkpoint_dir, dataset_root, quick=False)` writes into `out_dir/report/`:
- `loss_main.png`   main flow-matching loss (raw and smoothed) from `out_dir/loss_main.jsonl`;
- `loss_delta.png`  delta loss and the VICReg invariance / variance / covariance terms (`loss_delta.jsonl`);
- `cls_pca.png`     PCA of obs-CLS and act-CLS embeddings of held-out frames, coloured by the instructed
                    target colour and by phase (early/late, before/after the jump);
- `report.json`, `report.md`: closed-loop success (unperturbed, perturbed, language-swapped, untrained
                    baseline) and the alignment metrics (see alignment.py); both only for a simtask recording.
Episode counts: 50 per condition, 10 with quick=True; `SMOLVLA_CLS_REPORT_EPISODES=N` overrides both
(tests use it to keep the smoke run short).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

EPISODES_ENV = "SMOLVLA_CLS_REPORT_EPISODES"
COLOR_OF = {"red": "tab:red", "green": "tab:green", "blue": "tab:blue", "yellow": "gold",
            "magenta": "m", "cyan": "c"}


def _log(msg: str) -> None:
    print(f"[report] {msg}", flush=True)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by an interrupted run
    return rows


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if len(y) < 3 or window < 2:
        return y
    window = min(window, len(y))
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, y[0]), y])
    return np.convolve(padded, kernel, mode="valid")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(rows: list[dict[str, Any]], keys: list[tuple[str, str]], title: str, path: Path) -> Path | None:
    """One panel per (key, label) present in `rows`; raw curve and a moving average."""
    present = [(k, lab) for k, lab in keys if any(k in r for r in rows)]
    if not present:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], present):
        pts = [(r.get("step", i + 1), r[key]) for i, r in enumerate(rows) if key in r]
        x = np.array([p[0] for p in pts], dtype=float)
        y = np.array([p[1] for p in pts], dtype=float)
        ax.plot(x, y, lw=0.6, alpha=0.35, color="tab:blue", label="per step")
        ax.plot(x, _smooth(y, max(1, len(y) // 30)), lw=1.6, color="tab:blue", label="moving average")
        if np.all(y > 0) and y.max() / max(y.min(), 1e-12) > 20:
            ax.set_yscale("log")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pca2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xc = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    var = s**2 / max((s**2).sum(), 1e-12)
    return xc @ vt[:2].T, var[:2]


def plot_cls_pca(obs: np.ndarray, act: np.ndarray, colors: list[str], phases: list[str], path: Path) -> Path:
    """2x2 grid: obs-CLS / act-CLS (rows) coloured by target colour / by phase (columns). A shared PCA
    basis fitted on both sets, so matched points of the two rows are comparable."""
    plt = _plt()
    both = np.concatenate([obs, act])
    both = both / np.maximum(np.linalg.norm(both, axis=1, keepdims=True), 1e-12)
    proj, var = _pca2(both)
    n = len(obs)
    phase_colors = {"early": "tab:cyan", "late": "tab:purple", "before jump": "tab:orange", "after jump": "tab:brown"}
    fig, axes = plt.subplots(2, 2, figsize=(8.5, 7.5))
    for row, (name, pts) in enumerate((("obs-CLS", proj[:n]), ("act-CLS", proj[n:]))):
        for col, (labels, palette, what) in enumerate(((colors, COLOR_OF, "instructed colour"),
                                                        (phases, phase_colors, "phase"))):
            ax = axes[row][col]
            for lab in sorted(set(labels)):
                idx = [i for i, v in enumerate(labels) if v == lab]
                ax.scatter(pts[idx, 0], pts[idx, 1], s=9, alpha=0.7, color=palette.get(lab, "grey"), label=lab)
            ax.set_title(f"{name} by {what}", fontsize=9)
            ax.set_xlabel(f"PC1 ({100 * var[0]:.0f} %)")
            ax.set_ylabel(f"PC2 ({100 * var[1]:.0f} %)" if len(var) > 1 else "PC2")
            ax.legend(fontsize=7, markerscale=1.5)
            ax.grid(alpha=0.3)
    fig.suptitle("CLS embeddings of held-out frames (L2-normalised, shared PCA basis)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _episodes(quick: bool) -> int:
    raw = os.environ.get(EPISODES_ENV)
    if raw is not None:
        try:
            n = int(raw)
        except ValueError:
            raise SystemExit(f"{EPISODES_ENV}={raw!r}: expected a positive integer") from None
        if n < 1:
            raise SystemExit(f"{EPISODES_ENV}={raw!r}: expected a positive integer")
        return n
    return 10 if quick else 50


def _markdown(report: dict[str, Any]) -> str:
    ev = report["closed_loop"]
    al = report.get("alignment")
    lines = [f"# Training report: {report['checkpoint']}", "",
             f"Dataset: `{report['dataset_root']}`; training wall time: {report.get('train_seconds_text', 'n/a')}.", "",
             "## Closed-loop success (PyTorch, simtask eval seeds)", ""]
    if not ev:
        lines += ["Skipped: the dataset is not a simtask recording (the evaluation runs the simulated reach task).", ""]
        return "\n".join(lines + ["## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]] + [""])
    lines += ["| condition | episodes | success | mean steps to success |", "|---|---|---|---|"]
    for key, label in (("unperturbed", "trained, unperturbed"), ("perturbed", "trained, target jump"),
                       ("swapped", "trained, swapped instruction (success on the intended disc)"),
                       ("untrained", "untrained, same config")):
        if key in ev:
            r = ev[key]
            ticks = r["mean_ticks_to_success"]
            lines.append(f"| {label} | {r['n_episodes']} | {r['success_rate']:.2f} | "
                         f"{'-' if ticks is None else f'{ticks:.1f}'} |")
    lines += ["", (f"A policy that ignores the instruction keeps its unperturbed score under the swap; one that "
                   f"follows it drops towards 0 on the intended disc (picking a disc at random would give "
                   f"{report['chance_random_disc']:.2f})."), ""]
    if al:
        lines += ["## CLS alignment on held-out frames", "",
                  f"{al['n_pairs']} held-out (frame, ground-truth chunk) pairs, one per fresh expert episode.", "",
                  "| metric | value | reference |", "|---|---|---|",
                  f"| retrieval top-1 (obs -> act) | {al['retrieval_top1']:.3f} | chance {al['chance_top1']:.4f} |",
                  f"| retrieval top-5 | {al['retrieval_top5']:.3f} | chance {al['chance_top5']:.4f} |",
                  f"| AUROC matched vs mismatched | {al['auroc_matched_vs_mismatched']:.3f} | chance 0.5 |",
                  (f"| min per-dim std obs / act | {al['obs_std_min']:.4f} / {al['act_std_min']:.4f} | "
                   f"collapse floor {al['collapse_std_floor']} |"),
                  (f"| effective rank obs / act | {al['obs_effective_rank']:.1f} / {al['act_effective_rank']:.1f} | "
                   f"of {al['dims']} dims |"), ""]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]] + [""]
    return "\n".join(lines)


def write_training_report(out_dir: str | Path, checkpoint_dir: str | Path, dataset_root: str | Path,
                          quick: bool = False) -> dict[str, Any]:
    """Plots + evaluation + alignment into `out_dir/report/`; returns the report dict."""
    out_dir, checkpoint_dir = Path(out_dir), Path(checkpoint_dir)
    report_dir = out_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    plots = []
    _log("plotting loss curves")
    main_rows = read_jsonl(out_dir / "loss_main.jsonl")
    delta_rows = read_jsonl(out_dir / "loss_delta.jsonl")
    p = plot_losses(main_rows, [("main_loss", "main flow-matching loss")], "stage main", report_dir / "loss_main.png")
    if p:
        plots.append(p.name)
    p = plot_losses(delta_rows, [("delta_loss", "delta loss (denoising + w·VICReg)"),
                                 ("vicreg_invariance", "VICReg invariance"), ("vicreg_variance", "VICReg variance"),
                                 ("vicreg_covariance", "VICReg covariance")], "stage delta", report_dir / "loss_delta.png")
    if p:
        plots.append(p.name)

    from smolvla_cls.alignment import alignment_report, format_metrics
    from smolvla_cls.closed_loop_eval import chance_level, evaluate_checkpoint
    from smolvla_cls.dataset_recording import SIDECAR
    from smolvla_cls.torch_policy import TorchPolicy

    n = _episodes(quick)
    closed: dict[str, Any] = {}
    metrics = None
    if not (Path(dataset_root) / SIDECAR).is_file():  # another robot's data: the simulated task cannot run it
        _log(f"{dataset_root} is not a simtask recording: closed-loop evaluation and CLS alignment skipped "
             "(both run the simulated reach task); loss plots only")
    else:
        policy = TorchPolicy(checkpoint_dir)
        for key, kwargs in (("unperturbed", {}), ("perturbed", {"perturb": True}),
                            ("swapped", {"swap_instruction": True})):
            _log(f"closed-loop eval: {key}, {n} episodes")
            closed[key] = evaluate_checkpoint(checkpoint_dir, episodes=n, policy=policy, label=key, **kwargs)
            _log(f"  {key}: success {closed[key]['success_rate']:.2f}")
        _log(f"closed-loop eval: untrained baseline, {n} episodes")
        closed["untrained"] = evaluate_checkpoint(checkpoint_dir, episodes=n, untrained=True, label="untrained")
        _log(f"  untrained: success {closed['untrained']['success_rate']:.2f}")

        n_pairs = max(8, min(256, 8 * n)) if quick else 256
        _log(f"CLS alignment on {n_pairs} held-out frames")
        metrics, obs, act, heldout = alignment_report(policy, n_episodes=n_pairs)
        _log("  " + format_metrics(metrics))
        plots.append(plot_cls_pca(obs, act, heldout.target_color, heldout.phase, report_dir / "cls_pca.png").name)

    train_seconds = {}
    for stage in ("main", "delta"):
        done = out_dir / f"stage_{stage}" / "DONE"
        if done.exists():
            try:
                train_seconds[stage] = json.loads(done.read_text()).get("seconds")
            except json.JSONDecodeError:
                pass
    report = {
        "checkpoint": str(checkpoint_dir), "dataset_root": str(dataset_root), "quick": quick,
        "episodes_per_condition": n, "chance_random_disc": chance_level(),
        "closed_loop": {k: {kk: vv for kk, vv in v.items() if kk != "episodes"} | {"episodes": v["episodes"]}
                        for k, v in closed.items()},
        "alignment": metrics, "plots": plots, "train_seconds": train_seconds,
        "train_seconds_text": ", ".join(f"{k} {v:.0f} s" for k, v in train_seconds.items() if v is not None) or "n/a",
        "loss_final": {"main_loss": main_rows[-1].get("main_loss") if main_rows else None,
                       "delta_loss": delta_rows[-1].get("delta_loss") if delta_rows else None},
        "report_seconds": None,
    }
    report["report_seconds"] = time.time() - started
    (report_dir / "report.json").write_text(json.dumps(report, indent=1))
    (report_dir / "report.md").write_text(_markdown(report))
    _log(f"written {report_dir / 'report.md'} ({report['report_seconds']:.0f} s)")
    return report
