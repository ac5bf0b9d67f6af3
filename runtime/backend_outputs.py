"""Backend outputs checked at the policy boundary: type, shape, dtype and finiteness of what reaches the chain.

The onnxruntime backend already checks its own outputs, but TensorRT and custom backends may hand back a short
plan, a resized `obs_cls`, a list or a float64 array. Each such case is a `BackendError` naming the output,
which the policy reports as a fault and answers with a safe action. So is a CLS output whose token mean has no
length (all zeros: a backend gone silent), which would read as a constant cosine distance and never fire a gate.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime.backend import BackendError, PrefixState
from runtime.gate import embed


def checked(name: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    """`value` as a float32 host array of exactly `shape`, all finite; BackendError naming `name` otherwise."""
    if not isinstance(value, np.ndarray) or isinstance(value, np.ma.MaskedArray):
        raise BackendError(f"backend output '{name}' must be a numpy array, got {type(value).__name__}")
    if value.shape != shape:
        raise BackendError(f"backend output '{name}' has shape {value.shape}, expected {shape}")
    if value.dtype.kind != "f":
        raise BackendError(f"backend output '{name}' has dtype {value.dtype}, expected float32")
    if not np.isfinite(value).all():
        raise BackendError(f"backend output '{name}' is non-finite")
    return value if value.dtype == np.float32 else value.astype(np.float32)


def checked_embedding(name: str, value: Any, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """`checked` CLS tokens and their unit embedding (`gate.embed`), computed once: the check needs it (the tokens
    must have a direction) and the gate uses it; BackendError naming `name` when it has none."""
    out = checked(name, value, shape)
    try:
        return out, embed(out)
    except ValueError as exc:
        raise BackendError(f"backend output '{name}': {exc}") from None


def checked_prefix(prefix: Any, obs_cls_shape: tuple[int, ...]) -> tuple[PrefixState, np.ndarray]:
    """The prefix pass checked, and the unit embedding of its obs-CLS."""
    if not isinstance(prefix, PrefixState):
        raise BackendError(f"backend run_prefix must return a PrefixState, got {type(prefix).__name__}")
    prefix.obs_cls, obs_emb = checked_embedding("obs_cls", prefix.obs_cls, obs_cls_shape)
    return prefix, obs_emb


def checked_delta(out: Any, plan_shape: tuple[int, ...], act_cls_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(delta, unit embedding of act_cls) of a delta-expert pass, checked."""
    if not isinstance(out, tuple) or len(out) != 2:
        raise BackendError(f"backend run_delta_expert must return (delta, act_cls), got {type(out).__name__}")
    return checked("delta", out[0], plan_shape), checked_embedding("act_cls", out[1], act_cls_shape)[1]
