"""On-robot runtime for exported SmolVLA-CLS artifacts: numpy, `tokenizers` and one inference backend.

Never imports torch, lerobot, transformers, smolvla_cls or export; everything it needs comes from the
artifact folder (docs/10-artifact-contract.md). Entry points: `runtime.policy.EdgePolicy` and
`python -m runtime info`. Heavy submodules load lazily so `import runtime` stays cheap.
"""

from __future__ import annotations

__all__ = ["BackendError", "Counters", "EdgePolicy", "Manifest", "ManifestError", "ObservationError", "TickInfo"]

_EXPORTS = {
    "EdgePolicy": "runtime.policy", "TickInfo": "runtime.policy", "Counters": "runtime.policy",
    "Manifest": "runtime.manifest", "ManifestError": "runtime.manifest",
    "ObservationError": "runtime.observation", "BackendError": "runtime.backend",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
