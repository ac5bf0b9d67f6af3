"""Chunk seams: make a fresh chunk continue the plan that is still executing while it was computed.

Under asynchronous execution a chunk planned from the observation of tick k arrives d ticks later; the
robot executed d actions of the old plan meanwhile. Without care the new chunk's first executed action
jumps away from the old plan (lerobot #4223, #4454). Two fixes, compared with `none`:
- `inpaint` (the inpainting form of real-time chunking): at every Euler step the first rows of x_t are
  pulled toward the flow-matching interpolation of the old plan, `t·noise + (1−t)·old` — fully for the d
  rows that execute during inference, with weights decaying to 0 over the next `width` rows. It needs no
  autograd and runs the exported main-expert graph as is (`InpaintingBackend` wraps any backend).
- `blend`: after denoising, cross-fade the new chunk from the old plan over `width` rows after the seam.
Both act only when d >= 1: with no delay nothing of the old plan runs during inference, and pulling a chunk
the gate asked for (the world changed) toward the old plan would only slow the reaction. For the same reason a
resample triggered by a change (`world_changed`: a drift/consistency/jump/state/pixel distance over its
threshold, or a new instruction) pulls only the d rows that execute anyway (width 0): the executing plan is known to be wrong
beyond them. A refill (queue running out, `always`/`interval`/`random` firing) keeps the full seam.
Flow-matching convention of SmolVLA (and `Backend.denoise`): x_t = t·noise + (1−t)·actions, t from 1 to 0.
"""

from __future__ import annotations

import numpy as np

from runtime.backend import Backend, PrefixState

SEAM_MODES = ("none", "blend", "inpaint")


def check_seam_mode(mode: str) -> str:
    if mode not in SEAM_MODES:
        raise ValueError(f"seam must be one of {SEAM_MODES}, got {mode!r}")
    return mode


# gates whose firing means the observation moved away from the plan's (pixel: the camera image; its reason
# `pixel_shape_changed`, a resolution that cannot be compared, is not evidence of a change and stays a refill)
CHANGE_GATES = ("drift", "consistency", "jump", "state", "pixel")


def world_changed(reason: str, distance: float | None, threshold: float | None) -> bool:
    """True when a gate decision (reason, distance, threshold) says the executing plan is out of date."""
    if reason == "instruction_changed":
        return True
    return reason in CHANGE_GATES and distance is not None and threshold is not None and distance > threshold


def overlap_weights(rows: int, hard: int, overlap: int) -> np.ndarray:
    """Per-row pull toward the old plan [rows]: 1 for the first `hard` rows, then linear decay to 0 by row
    `overlap` (where the old plan ends), 0 beyond."""
    w = np.zeros(rows, dtype=np.float32)
    hard = max(0, min(hard, overlap, rows))
    w[:hard] = 1.0
    soft = max(0, min(overlap, rows) - hard)
    if soft:
        w[hard:hard + soft] = np.linspace(1.0, 0.0, soft + 2, dtype=np.float32)[1:-1]
    return w


def blend(new: np.ndarray, old: np.ndarray, start: int, width: int) -> np.ndarray:
    """New chunk [T, A] with rows start..start+width cross-faded from the old plan (rows aligned to the
    same ticks; rows before `start` are the old plan's, they execute during inference)."""
    out = np.array(new, dtype=np.float32, copy=True)
    n = min(len(old), len(out))
    start = min(max(start, 0), n)
    out[:start] = old[:start]
    alpha = overlap_weights(n - start, 0, min(width, n - start))
    out[start:n] = alpha[:, None] * old[start:n] + (1.0 - alpha[:, None]) * out[start:n]
    return out


class InpaintingBackend(Backend):
    """Delegates to `inner`; `denoise` pulls x_t toward a one-shot prior set with `set_prior` (consumed by
    the next denoise, so a stale prior never leaks into a later chunk)."""

    def __init__(self, inner: Backend):
        self.inner = inner
        self.name = f"inpaint+{inner.name}"
        self._prior: tuple[np.ndarray, np.ndarray] | None = None
        self.inpainted = 0  # denoise runs that used a prior (for tests and reports)

    def set_prior(self, old_plan: np.ndarray | None, delay: int, width: int = 3) -> None:
        """`old_plan` [R, A]: normalised rows of the executing plan from the planning tick on; `delay`: ticks
        (rows) executed before the new chunk can take over; `width`: soft rows after them."""
        if old_plan is None or len(old_plan) == 0 or delay < 1:
            self._prior = None
            return
        rows = len(old_plan)
        self._prior = (np.asarray(old_plan, dtype=np.float32), overlap_weights(rows, delay, min(rows, delay + width)))

    def denoise(self, noise: np.ndarray, num_steps: int, prefix: PrefixState) -> np.ndarray:
        prior, self._prior = self._prior, None
        if prior is None:
            return self.inner.denoise(noise, num_steps, prefix)
        old, w = prior
        x = noise.astype(np.float32, copy=True)
        n = min(len(old), x.shape[1])
        wcol = w[:n, None]
        dt = -1.0 / num_steps
        for i in range(num_steps):
            t = 1.0 + i * dt
            guide = t * noise[0, :n] + (1.0 - t) * old[:n]
            x[0, :n] = wcol * guide + (1.0 - wcol) * x[0, :n]
            x = x + dt * self.inner.run_main_expert(x, t, prefix)
        x[0, :n] = wcol * old[:n] + (1.0 - wcol) * x[0, :n]  # t = 0: the guide is the old plan itself
        self.inpainted += 1
        return x

    def run_prefix(self, images, lang_tokens, lang_mask, state) -> PrefixState:
        return self.inner.run_prefix(images, lang_tokens, lang_mask, state)

    def run_main_expert(self, x_t: np.ndarray, t: float, prefix: PrefixState) -> np.ndarray:
        return self.inner.run_main_expert(x_t, t, prefix)

    def run_delta_expert(self, actions: np.ndarray, prefix: PrefixState) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.run_delta_expert(actions, prefix)

    def run_plan_encoder(self, plan: np.ndarray, plan_valid: np.ndarray) -> np.ndarray:
        return self.inner.run_plan_encoder(plan, plan_valid)

    def close(self) -> None:
        self.inner.close()
