"""Last line before the actuator: every emitted action is finite and inside the manifest's action bounds.

Rules (in order):
- a non-finite action is never emitted: it is replaced by the fallback action;
- a finite action outside `action_bounds` (which already include the export-time margin) is clipped
  into the bounds (`out_of_bounds="clip"`, default) or replaced by the fallback (`"fallback"`);
- fallback `"stop"` is the manifest's `safety.stop_action` (zero displacement when the manifest defines none),
  clipped into bounds; `"hold"` is `hold_or_stop`: the stop action on `stop_dims` (displacement / velocity
  dimensions, where a repeat keeps moving), the last action this guard let through on the others (position
  targets) — and None (send nothing: the robot holds) when a position dimension has no such target yet, never a
  jump to the stop pose. Without `stop_dims` (no action names) every dimension holds once an action passed and,
  before, every dimension counts as moving (the stop action), as for the robot loop's safe stop.
Every replacement is reported to the caller so it shows up in TickInfo and the counters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.manifest import Bounds

FALLBACKS = ("hold", "stop")
NO_ACTION = "no action available"  # the reason given when the chain had nothing to emit (no plan queued)
OUT_OF_BOUNDS = ("clip", "fallback")


def hold_or_stop(stop: np.ndarray, last: np.ndarray | None, moving: np.ndarray) -> np.ndarray | None:
    """Per dimension: the stop action where `moving` (displacement / velocity), `last` elsewhere (position
    targets); None when some position dimension has no `last` (nothing may be sent, never the stop pose)."""
    if bool(np.all(moving)):
        return np.array(stop, dtype=np.float32, copy=True)
    if last is None:
        return None
    out = np.array(last, dtype=np.float32, copy=True).reshape(-1)
    out[moving] = np.asarray(stop, dtype=np.float32).reshape(-1)[moving]
    return out


@dataclass
class GuardResult:
    action: np.ndarray | None  # float32 [action_dim], finite, inside bounds; None: nothing safe to send (hold)
    clipped: bool  # a finite out-of-bounds action was clipped
    fallback: bool  # the fallback action was emitted instead of the policy's
    reason: str | None  # why the action was altered (None when it passed untouched)


class ActionGuard:
    """Stateful (remembers the last safe action); call `reset()` at each episode start."""

    def __init__(self, bounds: Bounds, stop_action: np.ndarray | None = None, fallback: str = "hold",
                 out_of_bounds: str = "clip", stop_dims: np.ndarray | None = None):
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
        if out_of_bounds not in OUT_OF_BOUNDS:
            raise ValueError(f"out_of_bounds must be one of {OUT_OF_BOUNDS}, got {out_of_bounds!r}")
        self.low = bounds.low.astype(np.float32)
        self.high = bounds.high.astype(np.float32)
        stop = np.zeros_like(self.low) if stop_action is None else np.asarray(stop_action, dtype=np.float32)
        self.stop_action = np.clip(stop, self.low, self.high)
        self.fallback_mode = fallback
        self.out_of_bounds = out_of_bounds
        self.stop_dims = None if stop_dims is None else np.asarray(stop_dims, dtype=bool).reshape(self.low.shape)
        self._last_safe: np.ndarray | None = None

    def reset(self) -> None:
        self._last_safe = None

    def fallback_action(self) -> np.ndarray | None:
        """The action sent in place of a bad one (module docstring); None: nothing may be sent this tick."""
        if self.fallback_mode == "stop":
            return self.stop_action.copy()
        if self.stop_dims is None:  # no action names: hold everything, or (nothing passed yet) all count as moving
            return self.stop_action.copy() if self._last_safe is None else self._last_safe.copy()
        return hold_or_stop(self.stop_action, self._last_safe, self.stop_dims)

    def check(self, action: np.ndarray | None) -> GuardResult:
        """Vet one raw-unit action; `None` means the chain produced nothing usable (emit the fallback)."""
        if action is None:
            return GuardResult(self.fallback_action(), False, True, NO_ACTION)
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        if a.shape != self.low.shape:
            return GuardResult(self.fallback_action(), False, True, f"action has shape {a.shape}, expected {self.low.shape}")
        if not np.isfinite(a).all():  # ndarray methods: this runs every tick
            return GuardResult(self.fallback_action(), False, True, "non-finite action")
        if (a < self.low).any() or (a > self.high).any():
            if self.out_of_bounds == "fallback":
                return GuardResult(self.fallback_action(), False, True, "action outside action_bounds")
            clipped = np.clip(a, self.low, self.high).astype(np.float32)
            self._last_safe = clipped.copy()
            return GuardResult(clipped, True, False, "action clipped into action_bounds")
        self._last_safe = a.copy()
        return GuardResult(a, False, False, None)
