"""Plot of the latency table: success and seam jump / within-chunk step vs latency L, one line per mode."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from evaluation.plots import _pyplot

_COLORS = {"sync": "tab:gray", "async": "tab:red", "aligned": "tab:orange", "aligned+blend": "tab:green",
           "aligned+inpaint": "tab:blue", "aligned+reanchor": "tab:purple", "aligned+reanchor+blend": "tab:pink",
           "aligned+reanchor+slew": "black", "aligned+slew": "tab:brown"}  # every mode of latency_loop.MODES


def latency_plot(cells: Sequence[dict], gate: str, path: str | Path, title: str = "") -> str | None:
    """(left) success vs L, (right) mean seam jump / mean within-chunk step vs L; L = 0 is shared by all modes."""
    plt = _pyplot()
    if plt is None:
        return None
    mine = [c for c in cells if c["gate"] == gate]
    base = next((c["summary"] for c in mine if c["latency"] == 0), None)
    fig, (ax_s, ax_j) = plt.subplots(1, 2, figsize=(10, 3.8))
    for mode, color in _COLORS.items():
        rows = sorted((c["latency"], c["summary"]) for c in mine if c["mode"] == mode)
        if base is not None:
            rows = [(0, base), *rows]
        if len(rows) < 2:
            continue
        ax_s.plot([r[0] for r in rows], [r[1]["success_rate"] for r in rows], "o-", color=color, label=mode)
        jumps = [(L, s["seam_jump_mean"] / s["within_step_mean"]) for L, s in rows
                 if s["seam_jump_mean"] is not None and s["within_step_mean"]]
        if jumps:
            ax_j.plot(*zip(*jumps, strict=True), "o-", color=color, label=mode)
    ax_s.set(xlabel="inference latency L (ticks)", ylabel="success rate", title=f"{gate}: success")
    ax_j.axhline(2.0, color="black", lw=0.8, ls="--")
    ax_j.set(xlabel="inference latency L (ticks)", ylabel="seam jump / within-chunk step",
             title=f"{gate}: seam jump (target ≤ 2)")
    ax_s.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
