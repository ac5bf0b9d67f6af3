"""latency_breakdown.png: stacked median-ms bars per stage, LeRobot eager vs ours (fp32, int8, kept ticks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _kept(total: float, prefix: float, delta: float) -> dict[str, float]:
    """Stack a kept tick's measured total as prefix [+ delta] + rest, scaled down if the separately measured
    stage medians exceed the total (they come from other repetitions)."""
    scale = min(1.0, total / max(prefix + delta, 1e-9))
    return {"prefix": prefix * scale, "delta": delta * scale, "gate/other": max(0.0, total - (prefix + delta) * scale)}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfgs = list(report["configs"])
    fig, axes = plt.subplots(1, len(cfgs), figsize=(6.5 * len(cfgs), 4.8), squeeze=False)
    colors = {"prefix": "#4c72b0", "denoise loop": "#dd8452", "delta": "#55a868", "gate/other": "#8c8c8c"}
    for ax, cfg in zip(axes[0], cfgs, strict=True):
        lr, o = report["configs"][cfg]["lerobot"], report["configs"][cfg]["ort"]
        bars = {
            "LeRobot eager\npredict_action_chunk": {"prefix": lr["prefix"]["median_ms"],
                                                   "denoise loop": lr["denoise_loop"]["median_ms"]},
            "ours ORT\nfull resample": {"prefix": o["resample"]["prefix"]["median_ms"],
                                        "denoise loop": o["resample"]["denoise"]["median_ms"],
                                        "delta": o["resample"]["delta"]["median_ms"]},
            **({"ours ORT int8\nfull resample": {"prefix": o8["resample"]["prefix"]["median_ms"],
                                                "denoise loop": o8["resample"]["denoise"]["median_ms"],
                                                "delta": o8["resample"]["delta"]["median_ms"]}}
               if (o8 := report["configs"][cfg].get("ort_int8")) else {}),
            "ours ORT\nkept tick (drift)": _kept(o["gated_keep_drift"]["median_ms"], o["prefix"]["median_ms"], 0.0),
            "ours ORT\nkept tick (consist.)": _kept(o["gated_keep_consistency"]["median_ms"], o["prefix"]["median_ms"],
                                                    o["delta"]["median_ms"]),
        }
        x = np.arange(len(bars))
        bottom = np.zeros(len(bars))
        for stage, color in colors.items():
            vals = np.array([b.get(stage, 0.0) for b in bars.values()])
            ax.bar(x, vals, bottom=bottom, color=color, label=stage, width=0.6)
            bottom += vals
        for xi, top in zip(x, bottom, strict=True):
            ax.text(xi, top, f"{top:.0f} ms" if top >= 10 else f"{top:.2f} ms", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, list(bars), fontsize=8)
        ax.set_ylabel("median ms")
        ax.set_title(f"{cfg}: latency per stage (CPU)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
