"""Cross-environment check, side one (`make test-lerobot-0.6` runs it in the lerobot 0.6 environment):
`python -m tests.cross_env_artifacts <dir>` reads `<dir>/train` (`make train`'s layout, trained there) and `<dir>/onnx` (exported
there) and writes `<dir>/reference.npz`: a fixed noise and the PyTorch chain's actions for it, computed with
lerobot 0.6. Side two, tests/test_cross_env_artifacts.py, runs in the main environment: the runtime must load
`<dir>/onnx` and reproduce these actions."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from export.graphs.checkpoint_loading import load_checkpoint
from tests.export_reference import pytorch_actions


def write_reference(folder: Path) -> Path:
    loaded = load_checkpoint(folder / "train" / "checkpoints" / "last" / "pretrained_model")
    cfg = loaded.policy.config
    noise = np.random.default_rng(11).standard_normal((1, cfg.chunk_size, cfg.max_action_dim)).astype(np.float32)
    out = folder / "reference.npz"
    np.savez(out, noise=noise, plain=pytorch_actions(loaded, folder / "onnx", noise, refine=False),
             refined=pytorch_actions(loaded, folder / "onnx", noise, refine=True))
    return out


if __name__ == "__main__":
    print(f"[cross_env_artifacts] wrote {write_reference(Path(sys.argv[1]))}")
