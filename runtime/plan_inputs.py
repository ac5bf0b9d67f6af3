"""The one encoding of a queued plan for the small graphs (delta expert, plan encoder), shared by the runtime
(`runtime.policy`) and the export-side gate calibration (`export.graphs.gate_calibration`), so the calibrated
thresholds are measured on exactly the inputs the robot feeds the graphs. Pure numpy.

After a resample the policy queues a chunk [T, A] and executes its first `n_action_steps` rows; with `k`
executed, the delta expert sees the whole rest `plan[k:]` (manifest `delta_input`), the plan encoder only the
rows still queued `plan[k:n_action_steps]` (manifest `act_cls.plan_input`).
"""

from __future__ import annotations

import numpy as np


def delta_input(plan: np.ndarray, chunk_size: int) -> np.ndarray:
    """Remaining plan [R, A] → delta-expert input [1, T, A]: shifted to index 0, tail repeats the last row."""
    r = plan.shape[0]
    out = np.empty((1, chunk_size, plan.shape[1]), dtype=np.float32)
    out[0, :r] = plan
    out[0, r:] = plan[-1]
    return out


def plan_encoder_input(remaining: np.ndarray, chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Remaining plan [R, A] (1 <= R <= T) → plan_encoder inputs: plan [1, T, A] with the R rows at the front
    and zeros after, plan_valid bool [1, T] = (index < R) (manifest act_cls.plan_input)."""
    r = remaining.shape[0]
    if not 1 <= r <= chunk_size:
        raise ValueError(f"remaining plan has {r} rows, expected 1..{chunk_size}")
    plan = np.zeros((1, chunk_size, remaining.shape[1]), dtype=np.float32)
    plan[0, :r] = remaining
    valid = np.zeros((1, chunk_size), dtype=bool)
    valid[0, :r] = True
    return plan, valid


def queued_rows(chunk: np.ndarray, executed: int, n_action_steps: int) -> np.ndarray:
    """Rows of a fresh chunk [T, A] still queued after `executed` of its actions ran: chunk[executed:n_action_steps]
    (what the policy's consistency gate encodes). `executed` must leave at least one row queued."""
    if not 0 <= executed < n_action_steps <= chunk.shape[0]:
        raise ValueError(f"executed={executed} must be in [0, n_action_steps={n_action_steps}) and "
                         f"n_action_steps <= chunk rows {chunk.shape[0]}")
    return chunk[executed:n_action_steps]
