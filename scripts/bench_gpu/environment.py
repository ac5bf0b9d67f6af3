"""The run's environment: its metadata (device, versions, shapes) and the pinned non-torch wheels a bare GPU
machine needs (`--print-wheel-requirements`)."""

from __future__ import annotations

import platform
import sys
from typing import Any


def run_meta(args, plain) -> dict[str, Any]:
    """What this run ran on and with: preset, device, versions, chunk shape, repetitions, parameter count."""
    import importlib.metadata as md

    import torch

    cfg = plain.config
    cuda = args.device.startswith("cuda")
    return {
        "preset": args.preset, "device": args.device, "python": platform.python_version(), "torch": torch.__version__,
        "lerobot": md.version("lerobot"), "device_name": torch.cuda.get_device_name() if cuda else platform.processor(),
        "num_steps": cfg.num_steps, "chunk_size": cfg.chunk_size, "reps": args.reps, "warmup": args.warmup,
        "params": sum(p_.numel() for p_ in plain.parameters())}


_NOT_WHEELS = ("torch", "triton", "nvidia-", "cuda-", "smolvla-cls-edge", "setuptools", "pip")


def wheel_requirements() -> list[str]:
    """`name==version` of every distribution this script imports besides torch/CUDA (run where it works,
    e.g. the project venv): what a bare GPU machine needs as wheels (docs/08-benchmarks.md)."""
    import importlib.metadata as md

    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy  # noqa: F401

    import export.graphs.checkpoint_loading
    import export.graphs.graph_wrappers  # noqa: F401
    import scripts.bench.lerobot_side  # noqa: F401
    from smolvla_cls.modeling_smolvla_cls import SmolVLACLSPolicy  # noqa: F401

    dists = md.packages_distributions()
    names = {d for m in list(sys.modules) for d in dists.get(m.split(".")[0], [])}
    return sorted(f"{n}=={md.version(n)}" for n in names if not n.lower().startswith(_NOT_WHEELS))
