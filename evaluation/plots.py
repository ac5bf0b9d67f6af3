"""Plots for the gate evaluation. matplotlib is optional for the runtime: it is imported inside the
functions only, and every function returns None (after a warning) when it is not installed."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_STYLE = {  # family → (colour, marker)
    "always": ("black", "*"),
    "interval": ("tab:gray", "s"),
    "never": ("tab:brown", "X"),
    "drift": ("tab:blue", "o"),
    "consistency": ("tab:orange", "^"),
    "random": ("tab:green", "D"),
    "state": ("tab:purple", "v"),
    "drift+consistency": ("tab:cyan", "h"),
}


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed: plots skipped", stacklevel=3)
        return None
    return plt


def pareto_plot(results: Sequence[dict], path: str | Path, headline: dict | None = None) -> str | None:
    """(left) perturbed success vs full resamples per episode, one curve per gate family and check_every;
    (right) success vs wall time per tick. The headline gate is circled."""
    plt = _pyplot()
    if plt is None:
        return None
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in results:
        groups.setdefault((r["family"], r["check_every"]), []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for (fam, m), rs in sorted(groups.items()):
        colour, marker = _STYLE.get(fam, ("tab:red", "o"))
        for ax, xkey in zip(axes, ("resamples_per_episode", "ms_per_tick")):
            pts = sorted(((r["perturbed"][xkey], r["perturbed"]["success_rate"], r) for r in rs),
                         key=lambda q: (q[0], q[1]))
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            label = fam if m == 1 else f"{fam} (m={m})"
            ax.plot(xs, ys, marker=marker, color=colour, linestyle="-" if m == 1 else "--",
                    markersize=11 if fam == "always" else 6, label=label, alpha=0.9,
                    markerfacecolor=colour if m == 1 else "white")
            if fam == "interval" and ax is axes[0]:
                for x, y, r in pts:
                    ax.annotate(f"k={r['label'].split('(')[0]}", (x, y), textcoords="offset points", xytext=(4, -10),
                                fontsize=7, color=colour)
    g = (headline or {}).get("gate")
    if g:
        hr = next((r for r in results if r["name"] == g["name"]), None)
        if hr is not None:
            for ax, xkey in zip(axes, ("resamples_per_episode", "ms_per_tick")):
                ax.scatter([hr["perturbed"][xkey]], [hr["perturbed"]["success_rate"]], s=260, facecolors="none",
                           edgecolors="red", linewidths=2, zorder=5, label=f"headline: {g['name']}")
        budget = headline.get("budget_resamples_per_episode") if headline else None
        if budget:
            axes[0].axvline(budget, color="red", linestyle=":", linewidth=1, label="40 % of always")
    always = (headline or {}).get("always")
    if always:
        axes[0].axhline(always["success_rate"] - 0.05, color="black", linestyle=":", linewidth=1,
                        label="always − 5 pts")
    axes[0].set_xlabel("full resamples per episode (perturbed)")
    axes[0].set_xscale("symlog", linthresh=1.0)
    axes[1].set_xlabel("wall time per tick [ms] (perturbed)")
    for ax in axes:
        ax.set_ylabel("success rate (perturbed episodes)")
        ax.grid(True, alpha=0.3)
        ax.set_ylim(-0.03, 1.03)
    axes[0].set_title("success vs compute (Pareto view)")
    axes[1].set_title("success vs wall time")
    handles, labels = axes[0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    axes[0].legend(uniq.values(), uniq.keys(), fontsize=7, loc="upper right", ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def timeline_plot(panels: Sequence[dict], path: str | Path) -> str | None:
    """One panel per gate: gate distance vs tick (where the gate checked), the threshold, resample events
    (gate-decided vs forced by an empty queue), the perturbation tick, and the agent–goal distance."""
    plt = _pyplot()
    if plt is None or not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(13.5, 3.2 * len(panels)), sharex=True, squeeze=False)
    for ax, panel in zip(axes[:, 0], panels):
        ticks = panel["ticks"]
        t = [x["tick"] for x in ticks]
        dist = [x["distance"] if (x["distance"] is not None and x["reason"] not in ("interval", "random")) else None
                for x in ticks]
        checked_t = [ti for ti, dv in zip(t, dist) if dv is not None]
        checked_d = [dv for dv in dist if dv is not None]
        ax.plot(checked_t, checked_d, marker=".", color="tab:blue", label="gate distance")
        thr = next((x["threshold"] for x in ticks if x["threshold"] is not None and x["reason"] not in ("random",)), None)
        if thr is not None and checked_d:
            ax.axhline(thr, color="tab:red", linestyle="--", linewidth=1, label=f"threshold {thr:.4g}")
        top = max(checked_d + ([thr] if thr is not None else []) + [1e-6])
        gated = [x["tick"] for x in ticks if x["resampled"] and x["reason"] not in ("queue_empty", "pending")]
        forced = [x["tick"] for x in ticks if x["resampled"] and x["reason"] in ("queue_empty", "pending")]
        ax.scatter(gated, [top * 1.08] * len(gated), marker="v", color="tab:green", zorder=4, label="resample (gate)")
        ax.scatter(forced, [top * 1.08] * len(forced), marker="v", facecolors="none", edgecolors="tab:gray", zorder=4,
                   label="resample (queue empty)")
        if panel.get("perturb_tick") is not None:
            ax.axvline(panel["perturb_tick"], color="magenta", linewidth=1.5, label="target jump")
        ax.set_ylabel("cosine distance" if panel.get("family") in ("drift", "consistency") else "distance")
        ax.set_ylim(0, top * 1.18)
        ax2 = ax.twinx()
        ax2.plot(t, [x["goal_distance"] for x in ticks], color="0.6", linewidth=1, label="agent–goal distance")
        ax2.set_ylabel("agent–goal distance", color="0.5")
        ax.set_title(f"{panel['name']} — episode seed {panel.get('seed')} ({'success' if panel.get('success') else 'failure'})",
                     fontsize=10)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left", bbox_to_anchor=(1.07, 1.0), borderaxespad=0.0)
        ax.grid(True, alpha=0.3)
    axes[-1, 0].set_xlabel("tick")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
