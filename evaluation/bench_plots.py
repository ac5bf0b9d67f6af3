"""Plots of the gate benchmark: success vs resamples per gate family (one panel per episode kind), and a gate
timeline (distance vs threshold over ticks) for one relevant and one irrelevant change."""

from __future__ import annotations

from pathlib import Path

from evaluation.plots import _STYLE, _pyplot

FAMILIES = ("always", "default", "interval", "random", "state", "pixel", "drift", "consistency", "jump", "drift+consistency",
            "pixel+cap", "drift+cap", "consistency+cap", "jump+cap")
RESAMPLE_TICKS = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 40, 60)  # labelled x ticks of the symlog resamples axis
_OWN_STYLE = {"pixel": ("tab:red", "P"), "jump": ("tab:olive", "d"), "default": ("magenta", "X")}  # families evaluation.plots has no style for


def _style(family: str) -> tuple[str, str]:
    base = family.removesuffix("+cap")  # a capped gate: its family's colour and marker, dashed line
    return _OWN_STYLE.get(base) or _STYLE.get(base, ("tab:cyan", "o"))


def success_vs_resamples(report: dict, path: str | Path) -> str | None:
    """Per kind: success rate against full resamples per episode, one line per family (refined runs hollow and
    dotted, plan-age-capped gates dashed in their family's colour)."""
    plt = _pyplot()
    if plt is None:
        return None
    from matplotlib.ticker import NullFormatter  # matplotlib is there once _pyplot() returned it

    kinds = report["config"]["kinds"]
    cols = 4
    rows = (len(kinds) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax, kind in zip(axes.flat, kinds):
        for fam in FAMILIES:
            for refine in (False, True):
                rs = [r for r in report["policies"] if r["family"] == fam and r["refine"] == refine
                      and kind in r["per_kind"]]
                if not rs:
                    continue
                colour, marker = _style(fam)
                pts = sorted((r["per_kind"][kind]["resamples"]["mean"], r["per_kind"][kind]["success_rate"])
                             for r in rs)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=colour,
                        linestyle=":" if refine else ("--" if fam.endswith("+cap") else "-"), markerfacecolor="white" if refine else colour,
                        label=fam + (" +refine" if refine else ""), markersize=10 if fam in ("always", "default") else 6)
        ax.set_title(kind, fontsize=10)
        ax.set_xscale("symlog", linthresh=1.0)
        lo, hi = ax.get_xlim()  # label the ticks inside the data's range: most gates sit between 2 and 20
        ticks = [t for t in RESAMPLE_TICKS if lo <= t <= hi]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_xlim(lo, hi)
        ax.xaxis.set_minor_formatter(NullFormatter())
        lows = [r["per_kind"][kind]["success_rate"] for r in report["policies"] if kind in r["per_kind"]]
        ax.set_ylim(max(-0.03, min(lows, default=0.0) - 0.05), 1.02)  # zoomed on the spread: differences show
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("full resamples per episode", fontsize=8)
        ax.set_ylabel("success rate", fontsize=8)
    for ax in list(axes.flat)[len(kinds):]:
        ax.set_axis_off()
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower right", fontsize=8, ncol=2)
    fig.suptitle("gate benchmark: success vs resamples (each point one threshold / interval)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _uncapped(name: str) -> str:
    """`drift+cap:p95/6` → `drift:p95`: a capped gate's distance mixes ticks with its change part's, so the
    timeline shows the change part alone."""
    fam, _, label = name.partition(":")
    return f"{fam.removesuffix('+cap')}:{label.split('/')[0]}" if fam.endswith("+cap") else name


def _timeline_gates(report: dict) -> list[dict]:
    """The headline CLS gate, the pixel gate the headline compares it with (uncapped), then jump and drift at
    p95 if not yet shown; at most four."""
    h = report.get("headline") or {}
    names = [_uncapped(h[k]["name"]) for k in ("cls", "pixel") if h.get(k)]
    names += [r["name"] for fam in ("jump", "drift") for r in report["policies"]
              if r["family"] == fam and r["label"] == "p95" and not r["refine"]]
    seen, out = set(), []
    for n in names:
        r = next((p for p in report["policies"] if p["name"] == n), None)
        if r is not None and n not in seen and r["traces"]:
            seen.add(n)
            out.append(r)
    return out[:4]


def timeline_series(ticks: list[dict]) -> tuple[list[dict], bool]:
    """The distances of one traced episode, one series per gate part ((reason, threshold): an `any:` gate reports
    the part that fired or came closest). One part: raw distances against its threshold (scaled False); several:
    distance / the part's own threshold, so every part fires above 1 (scaled True)."""
    parts: dict[tuple[str, float | None], dict] = {}
    for t in ticks:
        if t["distance"] is None:
            continue
        s = parts.setdefault((t["reason"], t["threshold"]), {"part": t["reason"], "threshold": t["threshold"],
                                                             "ticks": [], "values": []})
        s["ticks"].append(t["tick"])
        s["values"].append(t["distance"])
    series = list(parts.values())
    scaled = len(series) > 1
    if scaled:
        for s in series:
            s["values"] = [v / s["threshold"] if s["threshold"] else v for v in s["values"]]
    return series, scaled


def timeline(report: dict, path: str | Path) -> str | None:
    """Rows: gates; columns: the traced relevant and irrelevant episodes. Distance where the gate checked, its
    threshold (an `any:` gate: distance / threshold per part), resamples (gate vs empty queue) and the changes
    (solid: relevant, dashed: irrelevant)."""
    plt = _pyplot()
    gates = _timeline_gates(report)
    if plt is None or not gates:
        return None
    kinds = [k for k in ("jump", "distractor") if k in gates[0]["traces"]]
    fig, axes = plt.subplots(len(gates), len(kinds), figsize=(6.5 * len(kinds), 2.8 * len(gates)), squeeze=False)
    for row, r in zip(axes, gates):
        for ax, kind in zip(row, kinds):
            tr = r["traces"][kind]
            series, scaled = timeline_series(tr["ticks"])
            for s, colour in zip(series, ("tab:blue", "tab:purple", "tab:brown", "tab:gray")):
                what = f"{s['part']} / {s['threshold']:.3g}" if scaled and s["threshold"] else "gate distance"
                ax.plot(s["ticks"], s["values"], ".-", color=colour, label=what)
            thr = 1.0 if scaled else next((s["threshold"] for s in series if s["threshold"] is not None), None)
            if thr is not None:
                ax.axhline(thr, color="tab:red", linestyle="--", linewidth=1,
                           label="threshold (each part's)" if scaled else f"threshold {thr:.3g}")
            top = max([v for s in series for v in s["values"]] + [thr or 0.0, 1e-6])
            gated = [t["tick"] for t in tr["ticks"] if t["resampled"] and t["reason"] not in ("queue_empty", "pending")]
            forced = [t["tick"] for t in tr["ticks"] if t["resampled"] and t["reason"] in ("queue_empty", "pending")]
            ax.scatter(gated, [top * 1.1] * len(gated), marker="v", color="tab:green", label="resample (gate)")
            ax.scatter(forced, [top * 1.1] * len(forced), marker="v", facecolors="none", edgecolors="0.4",
                       label="resample (queue empty)")
            for c in tr["changes"]:
                ax.axvline(c["tick"], color="magenta" if c["relevant"] else "tab:orange",
                           linestyle="-" if c["relevant"] else "--", linewidth=1.5, label=c["type"])
            ax.set_ylim(0, top * 1.2)
            ax.set_title(f"{r['name']} — {kind} (seed {tr['seed']}, {'success' if tr['success'] else 'failure'})",
                         fontsize=9)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=6, loc="upper left")
            ax.set_ylabel("distance / threshold" if scaled else "distance")
    for ax in axes[-1]:
        ax.set_xlabel("tick")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
