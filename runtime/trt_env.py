"""Is a real TensorRT and a GPU here? One-line answers, shared by the engine builder and the TensorRT backend.

`import tensorrt` alone is not proof: with only `tensorrt-stubs` installed (as on CI, for mypy) it imports
as an empty namespace package, so we also look for the library's `Builder` and `__version__`.
"""

from __future__ import annotations

import importlib
from typing import Any

from runtime.cuda_memory import CudaError, DeviceInfo, device_info
from runtime.trt_api import unsupported_version_reason


class TensorRTUnavailable(RuntimeError):
    """TensorRT, cuda-python or a GPU is missing on this machine."""


def tensorrt_missing_reason() -> str | None:
    """None when a usable TensorRT Python package (10.0 or newer) is importable, else what is wrong."""
    try:
        trt: Any = importlib.import_module("tensorrt")
    except ImportError as exc:
        return f"TensorRT is not installed (import tensorrt failed: {exc})"
    except OSError as exc:  # the wheel is there but libnvinfer is not
        return f"TensorRT is installed but its libraries do not load ({exc})"
    if not hasattr(trt, "Builder") or not isinstance(getattr(trt, "__version__", None), str):
        return "TensorRT is not installed (import tensorrt found only type stubs, no TensorRT library)"
    return unsupported_version_reason(trt.__version__)  # e.g. JetPack 6.0's 8.6: too old for the engines


def tensorrt_version() -> str:
    """The running TensorRT version string, e.g. '10.3.0.30' (raises TensorRTUnavailable)."""
    reason = tensorrt_missing_reason()
    if reason:
        raise TensorRTUnavailable(reason)
    return str(importlib.import_module("tensorrt").__version__)


def gpu() -> DeviceInfo:
    """The GPU TensorRT will run on (raises TensorRTUnavailable with the CUDA reason)."""
    try:
        return device_info(0)
    except CudaError as exc:
        raise TensorRTUnavailable(f"no usable CUDA GPU ({exc})") from None
