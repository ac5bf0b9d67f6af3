"""The one small interface every inference backend (onnxruntime, TensorRT) implements.

The chain in `runtime.policy` only talks to this interface, so a backend is free to keep the prefix
K/V wherever it is cheapest (host arrays for onnxruntime-CPU, device buffers for TensorRT) — the
`PrefixState` handle is opaque to the chain; only `obs_cls` is always a host array (the gate needs it).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class PrefixState:
    """Result of one prefix pass: the obs-CLS embedding on the host, and a backend-owned K/V handle."""

    obs_cls: np.ndarray  # [1, NP, E] float32, host
    handle: Any  # backend-specific: host arrays, or device buffers that both experts bind directly


class BackendError(RuntimeError):
    """A graph failed to run (exception inside the backend, or a non-finite output)."""


class Backend(abc.ABC):
    """Runs the three exported graphs. Shapes and names follow docs/10-artifact-contract.md."""

    name: str = "abstract"

    @abc.abstractmethod
    def run_prefix(
        self, images: np.ndarray, lang_tokens: np.ndarray, lang_mask: np.ndarray, state: np.ndarray
    ) -> PrefixState:
        """images f32 [1,C,3,H,W] in [0,1]; lang_tokens i64 [1,L]; lang_mask bool [1,L]; state f32 [1,S]."""

    @abc.abstractmethod
    def run_main_expert(self, x_t: np.ndarray, t: float, prefix: PrefixState) -> np.ndarray:
        """One denoising velocity v_t [1,T,A] for x_t [1,T,A] at time t."""

    @abc.abstractmethod
    def run_delta_expert(self, actions: np.ndarray, prefix: PrefixState) -> tuple[np.ndarray, np.ndarray]:
        """(delta [1,T,A], act_cls [1,NS,E]) for a normalised plan [1,T,A]."""

    def run_plan_encoder(self, plan: np.ndarray, plan_valid: np.ndarray) -> np.ndarray:
        """act_cls [1,NS,E] of a normalised plan alone: the remaining rows at the front of plan [1,T,A],
        plan_valid bool [1,T] True for them (manifest act_cls.plan_input). No observation input."""
        raise BackendError(f"backend '{self.name}' does not run the plan_encoder graph (manifest format 3)")

    def denoise(self, noise: np.ndarray, num_steps: int, prefix: PrefixState) -> np.ndarray:
        """Euler integration from t=1 (noise) to t=0 (actions); backends may override (CUDA graphs)."""
        from runtime.backend_outputs import checked  # each velocity is checked: a custom backend may return anything

        x = noise.astype(np.float32, copy=True)
        dt = -1.0 / num_steps
        for i in range(num_steps):
            t = 1.0 + i * dt
            x = x + dt * checked("v_t", self.run_main_expert(x, t, prefix), x.shape)
        return x

    def close(self) -> None:
        """Release device memory / sessions. Safe to call twice."""
