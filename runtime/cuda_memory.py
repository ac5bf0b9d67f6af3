"""Tiny wrapper over cuda-python's runtime API: device info, device buffers, streams, CUDA graphs.

Only the TensorRT path uses it, and only through lazy imports, so `import runtime` works without CUDA.
cuda-python moved the runtime module in 12.6 (`cuda.bindings.runtime`); the old `cuda.cudart` is the
fallback. Every call returns `(err, *values)`; `_ok` turns a non-zero err into a CudaError.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np


class CudaError(RuntimeError):
    """A CUDA runtime call failed, or cuda-python / a GPU is not available."""


@functools.lru_cache(maxsize=1)
def cudart() -> Any:
    """The cuda-python runtime module (new location first)."""
    try:
        from cuda.bindings import runtime as module
    except ImportError:
        try:
            from cuda import cudart as module
        except ImportError as exc:
            raise CudaError(
                "cuda-python is not installed (pip install cuda-python matching the device's CUDA)"
            ) from exc
    return module


def _ok(result: Any, what: str) -> Any:
    """Unpack a cuda-python `(err, *values)` tuple; return the value (or tuple of values)."""
    rt = cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        name = rt.cudaGetErrorName(err)[1]
        label = name.decode() if isinstance(name, bytes) else str(name)
        raise CudaError(f"{what} failed: {label}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class DeviceInfo:
    """What the engine fingerprint records about a GPU."""

    name: str
    compute_capability: tuple[int, int]
    total_memory_bytes: int


def device_info(device: int = 0) -> DeviceInfo:
    """Name / compute capability of `device` (raises CudaError when there is no usable GPU)."""
    props = _ok(cudart().cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    raw = props.name
    name = raw.split(b"\0", 1)[0].decode() if isinstance(raw, bytes) else str(raw)
    return DeviceInfo(
        name=name.strip(),
        compute_capability=(int(props.major), int(props.minor)),
        total_memory_bytes=int(props.totalGlobalMem),
    )


class Stream:
    """A non-blocking CUDA stream (the legacy default stream cannot be captured into a graph)."""

    def __init__(self) -> None:
        rt = cudart()
        self._stream: Any = _ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreate")

    @property
    def raw(self) -> Any:
        return self._stream

    @property
    def handle(self) -> int:
        """The stream as an int, the form TensorRT's execute_async_v3 takes."""
        return int(self._stream)

    def synchronize(self) -> None:
        _ok(cudart().cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def close(self) -> None:
        if self._stream is not None:
            _ok(cudart().cudaStreamDestroy(self._stream), "cudaStreamDestroy")
            self._stream = None


class DeviceBuffer:
    """One device allocation, made once and reused for every call (no per-inference cudaMalloc)."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        # cudaMalloc(0) returns a null pointer; TensorRT wants a valid address even for empty tensors.
        self.ptr: int = int(_ok(cudart().cudaMalloc(max(self.nbytes, 1)), "cudaMalloc"))

    def copy_from_host(self, array: np.ndarray, stream: Stream) -> None:
        """Async host→device copy; `array` must stay alive until the stream is synchronised."""
        if array.nbytes != self.nbytes or not array.flags.c_contiguous:
            raise CudaError(
                f"host array of {array.nbytes} bytes (contiguous={array.flags.c_contiguous}) "
                f"does not fit a {self.nbytes}-byte device buffer"
            )
        rt = cudart()
        _ok(
            rt.cudaMemcpyAsync(
                self.ptr, array.ctypes.data, self.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.raw
            ),
            "cudaMemcpyAsync H2D",
        )

    def copy_to_host(self, array: np.ndarray, stream: Stream) -> None:
        """Async device→host copy into a preallocated contiguous array."""
        if array.nbytes != self.nbytes or not array.flags.c_contiguous:
            raise CudaError(f"host array of {array.nbytes} bytes does not fit a {self.nbytes}-byte buffer")
        rt = cudart()
        _ok(
            rt.cudaMemcpyAsync(
                array.ctypes.data, self.ptr, self.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.raw
            ),
            "cudaMemcpyAsync D2H",
        )

    def free(self) -> None:
        if self.ptr:
            _ok(cudart().cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


class CudaGraph:
    """Record the work enqueued on a stream once, replay it with one launch."""

    def __init__(self) -> None:
        self._graph: Any = None
        self._exec: Any = None

    def begin(self, stream: Stream) -> None:
        rt = cudart()
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _ok(rt.cudaStreamBeginCapture(stream.raw, mode), "cudaStreamBeginCapture")

    def end(self, stream: Stream) -> None:
        """Finish capture and instantiate; on failure the stream is left out of capture mode."""
        rt = cudart()
        self._graph = _ok(rt.cudaStreamEndCapture(stream.raw), "cudaStreamEndCapture")
        self._exec = _ok(rt.cudaGraphInstantiate(self._graph, 0), "cudaGraphInstantiate")

    def launch(self, stream: Stream) -> None:
        _ok(cudart().cudaGraphLaunch(self._exec, stream.raw), "cudaGraphLaunch")

    def close(self) -> None:
        rt = cudart()
        if self._exec is not None:
            _ok(rt.cudaGraphExecDestroy(self._exec), "cudaGraphExecDestroy")
            self._exec = None
        if self._graph is not None:
            _ok(rt.cudaGraphDestroy(self._graph), "cudaGraphDestroy")
            self._graph = None
