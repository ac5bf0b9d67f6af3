"""Fake cuda-python packages in the 12.x and 13.x layouts, backed by host memory, for the TensorRT-path tests.

12.x (12.6–12.9) has `cuda.bindings.{runtime,driver,nvrtc}` plus the deprecated `cuda.cudart` / `cuda.cuda` /
`cuda.nvrtc` aliases; 13.x has only `cuda.bindings.*` (the aliases were removed). "Device" buffers are host
buffers, streams run work at once unless capturing, a captured graph replays the recorded work, and the Euler
kernel is emulated. `nvrtc_missing` makes every NVRTC call raise like cuda-python 12.9/13 without libnvrtc
(`cuda.pathfinder.DynamicLibNotFoundError`, a RuntimeError); `refuse_image` makes the driver refuse the module.
"""

from __future__ import annotations

import ctypes
import enum
import types
from collections.abc import Callable
from typing import Any

import numpy as np

KNOWN_ARCHS = {"12.x": {"sm_72", "sm_87", "sm_89", "sm_90", "sm_100", "sm_120"},
               "13.x": {"sm_75", "sm_87", "sm_89", "sm_90", "sm_100", "sm_110", "sm_120"}}


class DynamicLibNotFoundError(RuntimeError):
    """What cuda.pathfinder raises when libnvrtc.so cannot be found."""


class FakeCuda:
    """The fake GPU's state: allocations, streams under capture, compile options seen, images loaded."""

    def __init__(self, layout: str, cc: tuple[int, int], nvrtc_missing: bool, refuse_image: str | None) -> None:
        self.layout, self.cc, self.nvrtc_missing, self.refuse_image = layout, cc, nvrtc_missing, refuse_image
        self.buffers: dict[int, Any] = {}
        self.capturing: dict[int, list[Callable[[], Any]]] = {}
        self.compile_options: list[bytes] = []
        self.kernel_launches = 0
        self.graph_launches = 0
        self.modules = self._build()

    def enqueue(self, stream: int, work: Callable[[], Any]) -> None:
        if int(stream) in self.capturing:
            self.capturing[int(stream)].append(work)
        else:
            work()

    def fill(self, ptr: int, array: np.ndarray) -> None:
        ctypes.memmove(ptr, np.ascontiguousarray(array).ctypes.data, array.nbytes)

    def _build(self) -> dict[str, types.ModuleType]:
        fake = self
        ok = 0
        rt = types.ModuleType("cuda.bindings.runtime")
        rt.cudaError_t = enum.IntEnum("cudaError_t", [("cudaSuccess", 0), ("cudaErrorInvalidValue", 1)])  # type: ignore[attr-defined]
        rt.cudaGetErrorName = lambda err: (ok, getattr(err, "name", str(err)).encode())  # type: ignore[attr-defined]
        rt.cudaStreamNonBlocking = 1  # type: ignore[attr-defined]
        rt.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)  # type: ignore[attr-defined]
        rt.cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeThreadLocal=1)  # type: ignore[attr-defined]
        props = types.SimpleNamespace(name=b"Fake Orin\0\0\0", major=self.cc[0], minor=self.cc[1],
                                      totalGlobalMem=8 << 30)
        rt.cudaGetDeviceProperties = lambda device: (ok, props)  # type: ignore[attr-defined]
        counter = iter(range(1, 1 << 30))
        rt.cudaStreamCreateWithFlags = lambda flags: (ok, next(counter))  # type: ignore[attr-defined]
        rt.cudaStreamSynchronize = lambda stream: (ok,)  # type: ignore[attr-defined]
        rt.cudaStreamDestroy = lambda stream: (ok,)  # type: ignore[attr-defined]

        def malloc(n: int) -> tuple[int, int]:
            buf = ctypes.create_string_buffer(n)
            fake.buffers[ctypes.addressof(buf)] = buf
            return ok, ctypes.addressof(buf)

        def memcpy(dst: int, src: int, n: int, kind: int, stream: int) -> tuple[int]:
            fake.enqueue(stream, lambda: ctypes.memmove(dst, src, n))
            return (ok,)

        def begin(stream: int, mode: int) -> tuple[int]:
            fake.capturing[int(stream)] = []
            return (ok,)

        def launch(graph: list[Callable[[], Any]], stream: int) -> tuple[int]:
            fake.graph_launches += 1
            for work in graph:
                work()
            return (ok,)

        rt.cudaMalloc = malloc  # type: ignore[attr-defined]
        rt.cudaFree = lambda ptr: (fake.buffers.pop(ptr, None), ok)[1:]  # type: ignore[attr-defined]
        rt.cudaMemcpyAsync = memcpy  # type: ignore[attr-defined]
        rt.cudaStreamBeginCapture = begin  # type: ignore[attr-defined]
        rt.cudaStreamEndCapture = lambda stream: (ok, fake.capturing.pop(int(stream)))  # type: ignore[attr-defined]
        rt.cudaGraphInstantiate = lambda graph, flags: (ok, graph)  # type: ignore[attr-defined]
        rt.cudaGraphLaunch = launch  # type: ignore[attr-defined]
        rt.cudaGraphExecDestroy = lambda g: (ok,)  # type: ignore[attr-defined]
        rt.cudaGraphDestroy = lambda g: (ok,)  # type: ignore[attr-defined]

        nvrtc = types.ModuleType("cuda.bindings.nvrtc")
        nvrtc_result = enum.IntEnum("nvrtcResult", [("NVRTC_SUCCESS", 0), ("NVRTC_ERROR_INVALID_OPTION", 5)])
        version = (12, 6) if self.layout == "12.x" else (13, 0)

        def nvrtc_call(fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any) -> Any:
                if fake.nvrtc_missing:
                    raise DynamicLibNotFoundError('Failure finding "libnvrtc.so": no such file')
                return fn(*args)
            return call

        def compile_program(prog: int, n: int, options: list[bytes]) -> tuple[Any]:
            fake.compile_options.extend(options)
            arch = options[0].split(b"=")[1].decode()
            known = arch in KNOWN_ARCHS[fake.layout]
            return (nvrtc_result.NVRTC_SUCCESS if known else nvrtc_result.NVRTC_ERROR_INVALID_OPTION,)

        nvrtc.nvrtcVersion = nvrtc_call(lambda: (ok, *version))  # type: ignore[attr-defined]
        nvrtc.nvrtcCreateProgram = nvrtc_call(lambda *a: (nvrtc_result.NVRTC_SUCCESS, 7))  # type: ignore[attr-defined]
        nvrtc.nvrtcCompileProgram = nvrtc_call(compile_program)  # type: ignore[attr-defined]
        nvrtc.nvrtcGetProgramLogSize = nvrtc_call(lambda prog: (nvrtc_result.NVRTC_SUCCESS, 16))  # type: ignore[attr-defined]
        nvrtc.nvrtcGetProgramLog = nvrtc_call(lambda prog, buf: (nvrtc_result.NVRTC_SUCCESS,))  # type: ignore[attr-defined]
        for what in ("CUBIN", "PTX"):
            setattr(nvrtc, f"nvrtcGet{what}Size", nvrtc_call(lambda prog: (nvrtc_result.NVRTC_SUCCESS, 64)))
            setattr(nvrtc, f"nvrtcGet{what}", nvrtc_call(lambda prog, buf: (nvrtc_result.NVRTC_SUCCESS,)))
        nvrtc.nvrtcDestroyProgram = nvrtc_call(lambda prog: (nvrtc_result.NVRTC_SUCCESS,))  # type: ignore[attr-defined]

        driver = types.ModuleType("cuda.bindings.driver")
        cu_result = enum.IntEnum("CUresult", [("CUDA_SUCCESS", 0), ("CUDA_ERROR_UNSUPPORTED_PTX_VERSION", 222),
                                             ("CUDA_ERROR_NO_BINARY_FOR_GPU", 209)])
        driver.CUstream = int  # type: ignore[attr-defined]

        def load(image: int) -> tuple[Any, Any]:
            if fake.refuse_image:
                return getattr(cu_result, fake.refuse_image), None
            return cu_result.CUDA_SUCCESS, "module"

        def launch_kernel(func: Any, gx: int, gy: int, gz: int, bx: int, by: int, bz: int, shm: int, stream: int,
                          args: Any, extra: int) -> tuple[Any]:
            (x_ptr, v_ptr, t_ptr, dt, t_next, n), _ = args

            def step() -> None:
                fake.kernel_launches += 1
                x = np.ctypeslib.as_array((ctypes.c_float * n).from_address(x_ptr))
                v = np.ctypeslib.as_array((ctypes.c_float * n).from_address(v_ptr))
                x += np.float32(dt) * v
                ctypes.c_float.from_address(t_ptr).value = t_next

            fake.enqueue(stream, step)
            return (cu_result.CUDA_SUCCESS,)

        driver.cuModuleLoadData = load  # type: ignore[attr-defined]
        driver.cuModuleGetFunction = lambda module, name: (cu_result.CUDA_SUCCESS, "euler_step")  # type: ignore[attr-defined]
        driver.cuLaunchKernel = launch_kernel  # type: ignore[attr-defined]
        driver.cuModuleUnload = lambda module: (cu_result.CUDA_SUCCESS,)  # type: ignore[attr-defined]

        cuda = types.ModuleType("cuda")
        cuda.__path__ = []  # type: ignore[attr-defined]
        bindings = types.ModuleType("cuda.bindings")
        bindings.__path__ = []  # type: ignore[attr-defined]
        bindings.runtime, bindings.driver, bindings.nvrtc = rt, driver, nvrtc  # type: ignore[attr-defined]
        cuda.bindings = bindings  # type: ignore[attr-defined]
        modules = {"cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": rt,
                   "cuda.bindings.driver": driver, "cuda.bindings.nvrtc": nvrtc}
        if self.layout == "12.x":  # deprecated aliases, removed in 13
            cuda.cudart, cuda.cuda, cuda.nvrtc = rt, driver, nvrtc  # type: ignore[attr-defined]
            modules.update({"cuda.cudart": rt, "cuda.cuda": driver, "cuda.nvrtc": nvrtc})
        return modules


def install_cuda(monkeypatch: Any, layout: str = "12.x", cc: tuple[int, int] = (8, 7), nvrtc_missing: bool = False,
                 refuse_image: str | None = None) -> FakeCuda:
    """Put a fake cuda-python of `layout` into sys.modules (undone by monkeypatch) and return its state."""
    import sys

    from runtime import cuda_memory

    fake = FakeCuda(layout, cc, nvrtc_missing, refuse_image)
    for name in [m for m in sys.modules if m == "cuda" or m.startswith("cuda.")]:
        monkeypatch.delitem(sys.modules, name)
    for name, module in fake.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    cuda_memory.cudart.cache_clear()
    monkeypatch.setattr(cuda_memory, "cudart", _uncached(getattr(cuda_memory.cudart, "__wrapped__", cuda_memory.cudart)))
    return fake


def _uncached(fn: Callable[[], Any]) -> Any:
    """cudart() without the lru_cache, so each test sees its own fake (and the real one comes back after)."""
    wrapper: Any = fn
    wrapper.cache_clear = lambda: None
    return wrapper
