"""The backend EdgePolicy runs on, from its name and options (or a Backend object passed through).

TensorRT is imported only when asked for (Jetson/GPU), after its engine folder's identity record was checked
(`runtime.engine_identity`). A backend option the backend does not take is a PolicyArgumentError naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime.backend import Backend
from runtime.engine_identity import read_fingerprints, verify_engine_record
from runtime.manifest import GRAPH_NAMES, Manifest
from runtime.policy_arguments import PolicyArgumentError


def make_backend(backend: str | Backend, manifest: Manifest, device: str, options: dict[str, Any],
                 verify: bool, trusted_keys: Sequence[Any]) -> Backend:
    if isinstance(backend, Backend):
        return backend
    try:
        if backend == "onnxruntime":
            from runtime.backend_onnxruntime import OnnxRuntimeBackend

            return OnnxRuntimeBackend(manifest.root, manifest, device=device, **{"verify": verify, **options})
        if backend == "tensorrt":
            from runtime.backend_tensorrt import TensorRTBackend  # Jetson/GPU only; imported on demand

            # engines live next to the ONNX folder by default (artifacts/onnx → artifacts/engines)
            engines = Path(options.pop("engines", manifest.root.parent / "engines"))
            # fingerprints pinned to this artifact digest (IdentityError otherwise); signed when keys are required.
            # Read once: the backend loads the very fingerprint bytes the record check saw, not the files again.
            prints = read_fingerprints(engines, GRAPH_NAMES)
            verify_engine_record(engines, manifest.digest, GRAPH_NAMES, trusted_keys, manifest.root, checked=prints)
            return TensorRTBackend(manifest.root, engines, manifest=manifest.raw, fingerprints=prints, **options)
    except TypeError as exc:  # an unknown or ill-typed option reached the backend's constructor
        raise PolicyArgumentError(f"backend_options {sorted(options)[:8]}: {str(exc)[:200]}") from None
    raise PolicyArgumentError(f"unknown backend {str(backend)[:40]!r}; choose 'onnxruntime' or 'tensorrt' "
                              "(or pass a Backend)")
