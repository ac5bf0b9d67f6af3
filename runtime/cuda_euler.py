"""The one device kernel the TensorRT path needs: an in-place Euler step `x += dt·v; t = t_next`.

It lets the whole denoising loop stay on the GPU (and inside one CUDA graph) between main_expert
launches, instead of copying x_t / v_t to the host every step. Compiled at start-up with NVRTC (part of
the CUDA toolkit that JetPack ships) to this GPU's CUBIN; if that fails the backend falls back to a host-side
update and prints why, once.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from runtime.cuda_memory import CudaError, Stream

_SOURCE = rb"""
extern "C" __global__ void euler_step(float* x, const float* v, float* t, float dt, float t_next, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += dt * v[i];
    // The next main_expert call reads its time from the same buffer; t_next is passed exactly (1 - (i+1)/N)
    // rather than accumulated, and a CUDA graph bakes each launch's value in.
    if (i == 0) t[0] = t_next;
}
"""
_BLOCK = 128


def _bindings() -> tuple[Any, Any]:
    try:
        from cuda.bindings import driver, nvrtc
    except ImportError:
        try:
            from cuda import cuda as driver
            from cuda import nvrtc
        except ImportError as exc:
            raise CudaError("cuda-python driver/nvrtc bindings are not installed") from exc
    return driver, nvrtc


def _ok(result: Any, what: str) -> Any:
    err, *values = result
    if int(err) != 0:
        raise CudaError(f"{what} failed: {getattr(err, 'name', err)}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


def _nvrtc_version(nvrtc: Any) -> str:
    try:
        _, major, minor = nvrtc.nvrtcVersion()
        return f"{int(major)}.{int(minor)}"
    except Exception:  # noqa: BLE001 — only for the message
        return "?"


def _compile_cubin(nvrtc: Any, arch: str) -> bytes:
    """Compile euler_step to a CUBIN for exactly this GPU (sm_XY): no PTX JIT, so an NVRTC newer than the
    driver cannot produce an image the driver refuses (CUDA_ERROR_UNSUPPORTED_PTX_VERSION)."""
    prog = _ok(nvrtc.nvrtcCreateProgram(_SOURCE, b"euler_step.cu", 0, [], []), "nvrtcCreateProgram")
    try:
        err = nvrtc.nvrtcCompileProgram(prog, 1, [f"--gpu-architecture={arch}".encode()])[0]
        if int(err) != 0:
            size = _ok(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
            log = b" " * size
            nvrtc.nvrtcGetProgramLog(prog, log)
            text = log.decode(errors="replace").strip().replace("\n", " ")
            raise CudaError(f"NVRTC {_nvrtc_version(nvrtc)} cannot compile euler_step for {arch} ({text or err}); "
                            "a GPU newer than this cuda-python (e.g. Thor, sm_110) needs cuda-python 13")
        size = _ok(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        cubin = b" " * size
        _ok(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        return cubin
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


class EulerKernel:
    """NVRTC-compiled `euler_step`, launched on a given stream (capturable into a CUDA graph).

    Every way this can fail (no cuda-python, no libnvrtc — cuda-python 12.9/13 raise
    `cuda.pathfinder.DynamicLibNotFoundError` on first use —, an NVRTC that does not know the GPU, a driver
    that refuses the image) ends in one CudaError with the reason, which the backend prints once."""

    def __init__(self, compute_capability: tuple[int, int]) -> None:
        self._module: Any = None
        driver, nvrtc = _bindings()
        self._driver = driver
        arch = f"sm_{compute_capability[0]}{compute_capability[1]}"
        try:
            cubin = _compile_cubin(nvrtc, arch)
        except CudaError:
            raise
        except Exception as exc:
            raise CudaError(f"NVRTC is not usable ({type(exc).__name__}: {exc})") from exc
        # The runtime API has already made the primary context current, so the driver API can load into it.
        image = np.frombuffer(cubin, dtype=np.uint8)
        self._image = image  # the driver reads it during the call; keep it alive anyway
        self._module = _ok(driver.cuModuleLoadData(image.ctypes.data), f"cuModuleLoadData ({arch} CUBIN)")
        self._function = _ok(driver.cuModuleGetFunction(self._module, b"euler_step"), "cuModuleGetFunction")

    def launch(self, x_ptr: int, v_ptr: int, t_ptr: int, dt: float, t_next: float, n: int, stream: Stream) -> None:
        """Enqueue one step for `n` float32 elements."""
        args = (
            (x_ptr, v_ptr, t_ptr, dt, t_next, n),
            (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float, ctypes.c_float, ctypes.c_int),
        )
        grid = (n + _BLOCK - 1) // _BLOCK
        _ok(
            self._driver.cuLaunchKernel(
                self._function, grid, 1, 1, _BLOCK, 1, 1, 0, self._driver.CUstream(stream.handle), args, 0
            ),
            "cuLaunchKernel",
        )

    def close(self) -> None:
        if self._module is not None:
            self._driver.cuModuleUnload(self._module)
            self._module = None
