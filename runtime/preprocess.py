"""Numpy-only input/output transforms: image resize+pad, state normalisation, action unnormalisation.

The image path reproduces LeRobot's `resize_with_pad` (bilinear, align_corners=False, no antialias,
size = int(side / ratio), pad on the left/top) so exported graphs see the pixels they were trained on.
Resize index/weight tables are cached per input size; same-size images take an identity fast path.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from runtime.manifest import ImageSpec, NormStats


def to_chw_float(image: np.ndarray) -> np.ndarray:
    """uint8 HWC [0,255] → float32 CHW [0,1]; float CHW passes through as float32."""
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) * np.float32(1.0 / 255.0)
    return image.astype(np.float32, copy=False)


def resized_size(h: int, w: int, out_h: int, out_w: int) -> tuple[int, int]:
    """Target size of the keep-aspect resize, exactly as LeRobot computes it (floored, at least 1 px)."""
    ratio = max(w / out_w, h / out_h)
    return max(1, min(out_h, int(h / ratio))), max(1, min(out_w, int(w / ratio)))


@lru_cache(maxsize=64)
def _axis_table(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices i0, i1 and weight of i1 for a 1-D bilinear resize (half-pixel centres)."""
    scale = n_in / n_out
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = (src - i0).astype(np.float32)
    return i0, i1, w1


def resize_bilinear(chw: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize of float32 [C,H,W] (torch F.interpolate(mode='bilinear', align_corners=False))."""
    _, h, w = chw.shape
    if (h, w) == (out_h, out_w):
        return chw
    y0, y1, wy = _axis_table(h, out_h)
    x0, x1, wx = _axis_table(w, out_w)
    rows = chw[:, y0, :] * (1.0 - wy)[None, :, None] + chw[:, y1, :] * wy[None, :, None]
    return rows[:, :, x0] * (1.0 - wx)[None, None, :] + rows[:, :, x1] * wx[None, None, :]


def resize_pad(chw: np.ndarray, spec: ImageSpec, out: np.ndarray | None = None) -> np.ndarray:
    """float32 [3,h,w] → float32 [3,H,W] at the manifest size, aspect kept, padded on the manifest side."""
    H, W = spec.height, spec.width
    _, h, w = chw.shape
    if (h, w) == (H, W):  # identity fast path: nothing to resize or pad
        if out is None:
            return chw
        out[...] = chw
        return out
    if spec.resize == "none":
        raise ValueError(f"image is {h}x{w} but the manifest expects {H}x{W} and allows no resize")
    rh, rw = resized_size(h, w, H, W)
    resized = resize_bilinear(chw, rh, rw)
    if out is None:
        out = np.empty((chw.shape[0], H, W), dtype=np.float32)
    out.fill(spec.pad_value)
    if spec.pad_side == "left_top":
        out[:, H - rh:, W - rw:] = resized
    else:
        out[:, :rh, :rw] = resized
    return out


class StateNormalizer:
    """Raw state [state_dim] → normalised float32 [1, max_state_dim], zero-padded (LeRobot's formulas).

    Every mode is (x - sub) / div + add: mean_std (x - mean) / (std + eps) in LeRobot's op order (bit
    parity), min_max 2 (x - min) / span - 1, identity x.
    """

    def __init__(self, stats: NormStats, max_dim: int):
        self._buf = np.zeros((1, max_dim), dtype=np.float32)
        n = max_dim
        self._sub: np.ndarray = np.zeros(n, np.float32)
        self._div: np.ndarray = np.ones(n, np.float32)
        self._add = np.float32(0.0)
        if stats.mode == "mean_std":
            mean, std = _need(stats.mean, "mean"), _need(stats.std, "std")
            self._sub, self._div = mean, (std + np.float32(stats.eps)).astype(np.float32)
        elif stats.mode == "min_max":
            lo, span = _need(stats.min, "min"), _span(stats)
            self._sub, self._div, self._add = lo, (0.5 * span).astype(np.float32), np.float32(-1.0)

    def __call__(self, state: np.ndarray) -> np.ndarray:
        """Returns an internal buffer (reused every tick); copy it if you keep it past the next call."""
        x = state.astype(np.float32)
        n = x.shape[-1]
        self._buf[0, :n] = (x - self._sub[:n]) / self._div[:n] + self._add
        return self._buf


class ActionUnnormalizer:
    """Normalised actions [..., max_action_dim] → raw float32 [..., action_dim] (drops padding columns)."""

    def __init__(self, stats: NormStats, action_dim: int):
        self.action_dim = action_dim
        self._mul: np.ndarray = np.ones(action_dim, np.float32)
        self._add: np.ndarray = np.zeros(action_dim, np.float32)
        if stats.mode == "mean_std":  # LeRobot: normalise with (std + eps), unnormalise with std alone
            self._mul, self._add = _need(stats.std, "std"), _need(stats.mean, "mean")
        elif stats.mode == "min_max":  # [-1, 1] → [min, max]
            half = (0.5 * _span(stats)).astype(np.float32)
            self._mul, self._add = half, (_need(stats.min, "min") + half).astype(np.float32)

    def __call__(self, actions: np.ndarray) -> np.ndarray:
        return actions[..., : self.action_dim].astype(np.float32) * self._mul + self._add


def _need(arr: np.ndarray | None, name: str) -> np.ndarray:
    if arr is None:  # the manifest parser guarantees this; kept as a clear error for hand-built stats
        raise ValueError(f"normalisation stats lack '{name}'")
    return arr.astype(np.float32)


def _span(stats: NormStats) -> np.ndarray:
    """max - min, with eps where the two coincide (LeRobot's guard against dividing by zero)."""
    lo, hi = _need(stats.min, "min"), _need(stats.max, "max")
    return np.where(hi == lo, np.float32(stats.eps), hi - lo).astype(np.float32)
