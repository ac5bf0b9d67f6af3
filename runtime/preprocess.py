"""Numpy-only input/output transforms: image resize+pad, state normalisation, action unnormalisation.

The image path reproduces LeRobot's `resize_with_pad` (bilinear, align_corners=False, no antialias,
size = int(side / ratio), pad on the left/top) so exported graphs see the pixels they were trained on.
Resize index/weight tables are cached per input size; same-size images take an identity fast path.
`ImagePreprocessor` (the policy's per-tick path) computes the same pixels, bit for bit, in work buffers kept per
input size, so a tick allocates no full-frame temporaries (a 480x640 frame is ~3.7 MB as float32).
"""

from __future__ import annotations

from collections import OrderedDict
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


class _Workspace:
    """Work buffers and weights for one input size (h, w) → resized (rh, rw): allocated once, reused every tick."""

    def __init__(self, h: int, w: int, rh: int, rw: int):
        self.chw = np.empty((3, h, w), np.float32)
        self.y0, self.y1, wy = _axis_table(h, rh)
        self.x0, self.x1, wx = _axis_table(w, rw)
        self.wy0, self.wy1 = (1.0 - wy)[None, :, None], wy[None, :, None]  # the factors resize_bilinear uses
        self.wx0, self.wx1 = (1.0 - wx)[None, None, :], wx[None, None, :]
        self.rows_a, self.rows_b = np.empty((3, rh, w), np.float32), np.empty((3, rh, w), np.float32)
        self.cols_a, self.cols_b = np.empty((3, rh, rw), np.float32), np.empty((3, rh, rw), np.float32)


class ImagePreprocessor:
    """`resize_pad(to_chw_float(image), spec)` written into `out`, bit for bit, without per-call full-frame
    allocations: each input size keeps its work buffers (at most `max_sizes` sizes, least recently used
    dropped). Not thread-safe: one per policy, whose lock serialises the calls."""

    def __init__(self, spec: ImageSpec, max_sizes: int = 4):
        self.spec = spec
        self.max_sizes = max_sizes
        self._spaces: OrderedDict[tuple[int, int], _Workspace] = OrderedDict()

    def cached_sizes(self) -> int:
        return len(self._spaces)

    def __call__(self, image: np.ndarray, out: np.ndarray) -> np.ndarray:
        """uint8 HWC [h,w,3] or float CHW [3,h,w] → float32 [3,H,W] in `out` (returned)."""
        spec = self.spec
        H, W = spec.height, spec.width
        u8 = image.dtype == np.uint8
        h, w = image.shape[:2] if u8 else image.shape[1:]
        if (h, w) == (H, W):  # identity: convert straight into `out`
            _chw_into(image, out)
            return out
        if spec.resize == "none":
            raise ValueError(f"image is {h}x{w} but the manifest expects {H}x{W} and allows no resize")
        rh, rw = resized_size(h, w, H, W)
        ws = self._workspace(h, w, rh, rw)
        if u8 or image.dtype != np.float32:
            chw = _chw_into(image, ws.chw)
        else:
            chw = image
        top, left = (H - rh, W - rw) if spec.pad_side == "left_top" else (0, 0)
        dest = out[:, top:top + rh, left:left + rw]
        if (rh, rw) == (h, w):  # padding only (resize_bilinear's identity)
            dest[...] = chw
        else:  # resize_bilinear's formula, each product and sum into a kept buffer; the indices are in range, so
            # take's mode="clip" changes nothing (its default "raise" would copy through a temporary buffer)
            a, b = ws.rows_a, ws.rows_b
            np.multiply(chw.take(ws.y0, axis=1, out=a, mode="clip"), ws.wy0, out=a)
            np.multiply(chw.take(ws.y1, axis=1, out=b, mode="clip"), ws.wy1, out=b)
            rows = np.add(a, b, out=a)
            ca, cb = ws.cols_a, ws.cols_b
            np.multiply(rows.take(ws.x0, axis=2, out=ca, mode="clip"), ws.wx0, out=ca)
            np.multiply(rows.take(ws.x1, axis=2, out=cb, mode="clip"), ws.wx1, out=cb)
            np.add(ca, cb, out=dest)
        _fill_padding(out, spec.pad_value, top, left, rh, rw)
        return out

    def _workspace(self, h: int, w: int, rh: int, rw: int) -> _Workspace:
        ws = self._spaces.get((h, w))
        if ws is None:
            ws = self._spaces[(h, w)] = _Workspace(h, w, rh, rw)
            while len(self._spaces) > self.max_sizes:  # bounded: a stream of odd sizes cannot grow memory
                self._spaces.popitem(last=False)
        else:
            self._spaces.move_to_end((h, w))
        return ws


def _chw_into(image: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`to_chw_float(image)` written into `out`: the same float32 values (uint8 * float32(1/255); a float cast)."""
    if image.dtype == np.uint8:
        return np.multiply(image.transpose(2, 0, 1), np.float32(1.0 / 255.0), out=out)
    np.copyto(out, image, casting="unsafe")
    return out


def _fill_padding(out: np.ndarray, value: float, top: int, left: int, rh: int, rw: int) -> None:
    """`value` everywhere in `out` [3,H,W] but the content block [top:top+rh, left:left+rw]."""
    out[:, :top, :] = value
    out[:, top + rh:, :] = value
    out[:, top:top + rh, :left] = value
    out[:, top:top + rh, left + rw:] = value


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
