"""Rasterise a scene to a uint8 HxWx3 image, and save a PNG strip of frames for documentation.

Pixel (row r, column c) covers the point x = (c + 0.5) / W, y = (r + 0.5) / H: x runs along the
columns, y down the rows. Discs are saturated colours on mid-grey; the agent is a black ring with a
white core so it is distinct from every disc colour and from the background.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from simtask.config import PALETTE, TaskConfig


@lru_cache(maxsize=8)
def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    centres = (np.arange(size, dtype=np.float64) + 0.5) / size
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    ys.setflags(write=False)
    xs.setflags(write=False)
    return xs, ys


def pixel_of(point: np.ndarray, size: int) -> tuple[int, int]:
    """(row, col) of the pixel that contains ``point`` = (x, y)."""
    x, y = float(point[0]), float(point[1])
    col = min(max(int(x * size), 0), size - 1)
    row = min(max(int(y * size), 0), size - 1)
    return row, col


def render_frame(
    cfg: TaskConfig,
    target_positions: np.ndarray,
    target_colors: Sequence[str],
    agent_position: np.ndarray,
) -> np.ndarray:
    """Image of the discs (in order) with the agent drawn on top."""
    size = cfg.image_size
    xs, ys = _pixel_centres(size)
    img = np.full((size, size, 3), cfg.background_gray, dtype=np.uint8)
    r2 = cfg.target_radius**2
    for pos, color in zip(target_positions, target_colors):
        mask = (xs - pos[0]) ** 2 + (ys - pos[1]) ** 2 <= r2
        img[mask] = PALETTE[color]
    d2 = (xs - agent_position[0]) ** 2 + (ys - agent_position[1]) ** 2
    img[d2 <= cfg.agent_radius**2] = (0, 0, 0)
    img[d2 <= cfg.agent_core_radius**2] = (255, 255, 255)
    return img


def save_frame_strip(
    frames: Sequence[np.ndarray],
    path: str | Path,
    titles: Sequence[str] | None = None,
    scale: float = 2.0,
) -> Path:
    """Save ``frames`` side by side as one PNG (for README pictures). Needs matplotlib."""
    if len(frames) == 0:
        raise ValueError("save_frame_strip: frames is empty")
    if titles is not None and len(titles) != len(frames):
        raise ValueError(f"save_frame_strip: titles has {len(titles)} entries for {len(frames)} frames")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(frames)
    fig, axes = plt.subplots(1, n, figsize=(scale * n, scale * 1.15), squeeze=False)
    for i, (ax, frame) in enumerate(zip(axes[0], frames)):
        ax.imshow(np.asarray(frame), interpolation="nearest")
        ax.set_axis_off()
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
