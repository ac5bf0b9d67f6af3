"""Reference actions for an exported folder: the PyTorch chain (prefix -> Euler steps -> optional delta
refine, the export's own graph wrappers) and the edge runtime, on the same observation and noise.
Shared by tests/test_export.py and the cross-environment check (tests/cross_env_artifacts.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from export.graphs.graph_wrappers import DeltaExpertGraph, MainExpertGraph, PrefixGraph
from export.graphs.normalization import NORM_EPS

OBS_SEED = 3


def observation() -> dict:
    from simtask import ReachEnv, TaskConfig

    return ReachEnv(TaskConfig()).reset(seed=OBS_SEED)


def pytorch_actions(loaded, out: Path, noise: np.ndarray, refine: bool) -> np.ndarray:
    """The chunk [T, A] PyTorch computes for `observation()`, un-normalised and clipped to the manifest's
    action bounds as the runtime's safety layer does."""
    from transformers import AutoTokenizer

    cfg, model = loaded.policy.config, loaded.policy.model
    obs = observation()
    tok = AutoTokenizer.from_pretrained(cfg.vlm_model_name)
    enc = tok(obs["task"] + "\n", padding="max_length", max_length=cfg.tokenizer_max_length, return_tensors="pt")
    st = loaded.stats["observation.state"]
    state = np.zeros((1, cfg.max_state_dim), np.float32)
    state[0, :2] = (obs["observation.state"] - st["mean"]) / (st["std"] + NORM_EPS)
    image = torch.from_numpy(obs["observation.images.top"]).permute(2, 0, 1).float()[None, None] / 255.0
    with torch.no_grad():
        k, v, pad, _ = PrefixGraph(model)(image, enc["input_ids"], enc["attention_mask"].bool(), torch.from_numpy(state))
        x = torch.from_numpy(noise)
        for i in range(cfg.num_steps):
            t = torch.tensor([1.0 - i / cfg.num_steps])
            x = x - MainExpertGraph(model)(x, t, k, v, pad) / cfg.num_steps
        if refine:
            x = x + DeltaExpertGraph(model)(x, k, v, pad)[0]
    act = loaded.stats["action"]
    bounds = json.loads((Path(out) / "manifest.json").read_text())["action_bounds"]
    return np.clip(x[0, :, :2].numpy() * act["std"] + act["mean"], bounds["low"], bounds["high"])


def runtime_actions(out: Path, noise: np.ndarray, refine: bool, ticks: int = 3) -> np.ndarray:
    """The first `ticks` actions [ticks, A] the edge runtime (onnxruntime) emits for `observation()`."""
    from runtime.policy import EdgePolicy

    obs = observation()
    policy = EdgePolicy(out, backend="onnxruntime", gate="interval:8", refine=refine)
    policy.next_noise = noise
    return np.stack([policy.step(obs) for _ in range(ticks)])
