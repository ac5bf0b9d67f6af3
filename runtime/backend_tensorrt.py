"""TensorRT backend: the four engines on one stream, prefix K/V kept on the GPU, the Euler loop in a CUDA graph.

Device buffers are allocated once, one per tensor name: `prefix_k` / `prefix_v` / `prefix_pad` written by the
prefix engine are the very buffers both experts read, so nothing goes back to the host between graphs.
Host copies happen only for the prefix inputs, obs_cls, the initial noise and the actions out. The
execution contexts share one scratch allocation (they never run at the same time), which matters on an
8 GB Orin Nano. Each engine's I/O must be the manifest's (runtime.graph_io), checked before any device memory
is allocated. TensorRT and cuda-python are imported when the backend is built, never by `import runtime`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime.backend import Backend, BackendError, PrefixState
from runtime.fingerprint import EngineFingerprint, graph_hashes
from runtime.graph_io import DYNAMIC, LoadedTensor, check_graph_io, manifest_graph
from runtime.manifest import GRAPH_NAMES, read_manifest_json
from runtime.trt_api import dims, engine_io

if TYPE_CHECKING:
    import tensorrt as trt

    from runtime.cuda_euler import EulerKernel
    from runtime.cuda_memory import CudaGraph, DeviceBuffer, Stream

GRAPHS = GRAPH_NAMES  # prefix, main_expert, delta_expert, plan_encoder
REBUILD_HINT = "rebuild the engines from this artifact folder with `make engine`"


@dataclass(frozen=True)
class _DevicePrefix:
    """PrefixState.handle: which prefix pass the device K/V buffers currently hold."""

    generation: int


@dataclass(frozen=True)
class _Tensor:
    """One engine I/O tensor and the device buffer bound to it."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    buffer: DeviceBuffer


def _numpy_dtype(dtype: trt.DataType, name: str) -> np.dtype[Any]:
    import tensorrt as trt

    from runtime.trt_api import TensorRTApiError, host_dtype

    try:
        return host_dtype(trt, dtype, name)
    except TensorRTApiError as exc:
        raise BackendError(str(exc)) from None


class _Logger:
    """Factory for a TensorRT logger that forwards warnings and errors to stderr."""

    @staticmethod
    def make() -> trt.ILogger:
        import tensorrt as trt

        class _L(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
                if int(severity) <= int(trt.ILogger.Severity.WARNING):
                    print(f"[TensorRT {severity.name}] {msg}", file=sys.stderr, flush=True)

        return _L()


class TensorRTBackend(Backend):
    """Runs prefix / main_expert / delta_expert / plan_encoder engines built by `make engine` for this exact GPU + TensorRT."""

    name = "tensorrt"

    def __init__(
        self,
        artifacts: str | Path,
        engines: str | Path,
        manifest: dict[str, Any] | None = None,
        use_cuda_graph: bool = True,
        fingerprints: Mapping[str, bytes] | None = None,
    ) -> None:
        """`fingerprints`: each graph's fingerprint bytes as the engine record check read them (else read here)."""
        import tensorrt as trt

        from runtime.cuda_euler import EulerKernel
        from runtime.cuda_memory import CudaError, DeviceBuffer, Stream
        from runtime.trt_env import TensorRTUnavailable, gpu, tensorrt_missing_reason

        reason = tensorrt_missing_reason()
        if reason:
            raise TensorRTUnavailable(f"{reason}; use the onnxruntime backend on this machine")
        device = gpu()
        artifacts, engines = Path(artifacts), Path(engines)
        if manifest is None:
            manifest = read_manifest_json(artifacts / "manifest.json")
        self._manifest = manifest
        self._closed = False
        self._generation = 0
        self._use_cuda_graph = use_cuda_graph
        self._graphs: dict[int, CudaGraph] = {}
        self._graph_failed: set[int] = set()
        self._fingerprints = dict(fingerprints or {})

        self._logger = _Logger.make()  # must outlive the runtime and engines
        self._runtime = trt.Runtime(self._logger)
        self._engines: dict[str, trt.ICudaEngine] = {}
        self._io: dict[str, list[LoadedTensor]] = {}  # per graph, checked against the manifest
        for graph in GRAPHS:
            self._engines[graph] = self._load_engine(graph, engines, device.name, device.compute_capability)

        self._stream: Stream = Stream()
        self._tensors: dict[str, _Tensor] = {}
        self._scratch: DeviceBuffer | None = None
        self._contexts: dict[str, trt.IExecutionContext] = {}
        self._euler: EulerKernel | None = None
        try:
            for graph, engine in self._engines.items():
                spec = manifest_graph(self._manifest, graph)
                wanted = {s.name: s.shape for s in (*spec.inputs, *spec.outputs)}
                for tensor in self._io[graph]:
                    self._bind_buffer(graph, engine, tensor, wanted[tensor.name], DeviceBuffer)
            self._contexts = self._make_contexts(DeviceBuffer)
        except BaseException:
            self.close()  # a refused engine set keeps no GPU memory
            raise

        if all(self._tensors[n].dtype == np.float32 for n in ("x_t", "t", "v_t")):
            try:
                self._euler = EulerKernel(device.compute_capability)
            except CudaError as exc:  # EulerKernel turns every NVRTC / module-load failure into one CudaError
                print(
                    f"TensorRTBackend: no device Euler kernel ({exc}); the loop updates x on the host", file=sys.stderr
                )

    # ---------------------------------------------------------------- set-up

    def _load_engine(self, graph: str, engines: Path, gpu_name: str, cc: tuple[int, int]) -> trt.ICudaEngine:
        """Read the fingerprint, refuse a foreign/stale engine, deserialise the plan, refuse I/O the manifest lacks."""
        import tensorrt as trt

        spec = manifest_graph(self._manifest, graph)
        path = engines / f"{graph}.fingerprint.json"
        raw = self._fingerprints.get(graph)
        fingerprint = EngineFingerprint.from_bytes(EngineFingerprint.read_bytes(path) if raw is None else raw, str(path))
        onnx_sha, data_sha = graph_hashes(self._manifest["files"], spec.file, spec.data_file)
        fingerprint.check_against(onnx_sha, trt.__version__, gpu_name, cc, manifest_data_sha256=data_sha)
        plan = fingerprint.read_plan(engines / f"{graph}.plan")
        engine = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise BackendError(f"TensorRT could not deserialise {engines / (graph + '.plan')}")
        self._io[graph] = engine_io(trt, engine)
        check_graph_io(spec, self._io[graph], REBUILD_HINT)
        return engine

    def _bind_buffer(self, graph: str, engine: trt.ICudaEngine, tensor: LoadedTensor, wanted: tuple[int, ...],
                     buffer_cls: type[DeviceBuffer]) -> None:
        """One device buffer per tensor name, of the manifest's shape; a name shared by two engines must agree."""
        name = tensor.name
        shape = tuple(e if m == DYNAMIC else m for e, m in zip(tensor.shape, wanted))
        if DYNAMIC in shape:
            raise BackendError(f"{graph}: tensor {name!r} is dynamic in the engine and has no static shape in the "
                               "manifest")
        dtype = _numpy_dtype(engine.get_tensor_dtype(name), name)
        known = self._tensors.get(name)
        if known is not None:
            if (known.shape, known.dtype) != (shape, dtype):
                raise BackendError(
                    f"tensor {name!r} is {known.shape}/{known.dtype} in one engine and "
                    f"{shape}/{dtype} in {graph}; rebuild the engines from one export"
                )
            return
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self._tensors[name] = _Tensor(shape, dtype, buffer_cls(nbytes))

    def _make_contexts(self, buffer_cls: type[DeviceBuffer]) -> dict[str, trt.IExecutionContext]:
        """Contexts sharing one scratch allocation (TensorRT >= 10.1), all tensors bound once."""
        import tensorrt as trt

        from runtime.trt_api import device_memory_size, user_managed_context

        contexts: dict[str, trt.IExecutionContext] = {}
        sizes = [device_memory_size(engine) for engine in self._engines.values()]
        if all(size is not None for size in sizes):
            size = max(s for s in sizes if s is not None)
            self._scratch = buffer_cls(size)
            for graph, engine in self._engines.items():
                contexts[graph] = user_managed_context(trt, engine, self._scratch.ptr, size)
        else:  # a TensorRT without device_memory_size_v2: each context owns its activation memory
            contexts = {graph: engine.create_execution_context() for graph, engine in self._engines.items()}
        for graph in self._engines:
            ctx = contexts[graph]
            if ctx is None:
                raise BackendError(f"{graph}: could not create a TensorRT execution context (out of GPU memory?)")
            self._set_shapes(graph, ctx)
            for tensor in self._io[graph]:
                if not ctx.set_tensor_address(tensor.name, self._tensors[tensor.name].buffer.ptr):
                    raise BackendError(f"{graph}: could not bind tensor {tensor.name!r}")
        return contexts

    def _set_shapes(self, graph: str, ctx: trt.IExecutionContext) -> None:
        """Dynamic inputs get the manifest's shapes; the outputs they imply must be the buffers' shapes."""
        import tensorrt as trt

        dynamic = [t for t in self._io[graph] if DYNAMIC in t.shape]
        for tensor in (t for t in dynamic if t.kind == "input"):
            shape = self._tensors[tensor.name].shape
            if not ctx.set_input_shape(tensor.name, trt.Dims(list(shape))):
                raise BackendError(f"{graph}: TensorRT refused input shape {list(shape)} for {tensor.name!r} "
                                   f"(outside the engine's optimisation profile); {REBUILD_HINT}")
        for tensor in (t for t in dynamic if t.kind == "output"):
            shape, resolved = self._tensors[tensor.name].shape, dims(ctx.get_tensor_shape(tensor.name))
            if resolved != shape:
                raise BackendError(f"{graph}: output {tensor.name!r} comes out {list(resolved)} for the manifest's "
                                   f"input shapes, manifest says {list(shape)}; {REBUILD_HINT}")

    # ---------------------------------------------------------------- helpers

    def _put(self, name: str, value: np.ndarray) -> np.ndarray:
        """Queue a host→device copy; returns the staged array, which must live until the next sync."""
        spec = self._tensors[name]
        staged = np.ascontiguousarray(value, dtype=spec.dtype)
        if staged.shape != spec.shape:
            raise BackendError(f"{name}: expected shape {spec.shape}, got {staged.shape}")
        spec.buffer.copy_from_host(staged, self._stream)
        return staged

    def _get(self, name: str) -> np.ndarray:
        """Queue a device→host copy into a fresh array (valid after the next sync)."""
        spec = self._tensors[name]
        out = np.empty(spec.shape, dtype=spec.dtype)
        spec.buffer.copy_to_host(out, self._stream)
        return out

    def _execute(self, graph: str) -> None:
        if not self._contexts[graph].execute_async_v3(self._stream.handle):
            raise BackendError(f"{graph}: TensorRT execute_async_v3 failed")

    def _finish(self, **outputs: np.ndarray) -> None:
        """Wait for the stream, then reject non-finite results (the chain treats BackendError as a fault)."""
        self._stream.synchronize()
        for name, array in outputs.items():
            if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
                raise BackendError(f"non-finite values in {name}")

    def _check_prefix(self, prefix: PrefixState) -> None:
        """The K/V buffers hold only the latest prefix pass; refuse an older PrefixState instead of lying."""
        self._check_open()
        handle = prefix.handle
        if not isinstance(handle, _DevicePrefix) or handle.generation != self._generation:
            raise BackendError(
                "stale PrefixState: the TensorRT backend keeps only the latest prefix K/V on the GPU; "
                "run_prefix again before running the experts"
            )

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError("TensorRTBackend is closed")

    # ---------------------------------------------------------------- inspection (accuracy check, debugging)

    def read_tensor(self, name: str) -> np.ndarray:
        """Copy any engine tensor (e.g. `prefix_k`) to the host, as it is after the last run."""
        self._check_open()
        out = self._get(name)
        self._finish()
        return out

    def write_tensor(self, name: str, value: np.ndarray) -> None:
        """Overwrite a device tensor, e.g. load reference K/V to test one expert in isolation."""
        self._check_open()
        staged = self._put(name, value)
        self._finish()
        del staged

    # ---------------------------------------------------------------- Backend

    def run_prefix(
        self, images: np.ndarray, lang_tokens: np.ndarray, lang_mask: np.ndarray, state: np.ndarray
    ) -> PrefixState:
        self._check_open()
        self._generation += 1  # the K/V buffers change from the first write on: every earlier PrefixState is stale
        generation = self._generation
        staged = [
            self._put("images", images),
            self._put("lang_tokens", lang_tokens),
            self._put("lang_mask", lang_mask),
            self._put("state", state),
        ]
        self._execute("prefix")
        obs_cls = self._get("obs_cls")
        self._finish(obs_cls=obs_cls)
        del staged
        return PrefixState(obs_cls=obs_cls.astype(np.float32, copy=False), handle=_DevicePrefix(generation))

    def run_main_expert(self, x_t: np.ndarray, t: float, prefix: PrefixState) -> np.ndarray:
        self._check_prefix(prefix)
        staged = [self._put("x_t", x_t), self._put("t", np.array([t], dtype=np.float32))]
        self._execute("main_expert")
        v_t = self._get("v_t")
        self._finish(v_t=v_t)
        del staged
        return v_t.astype(np.float32, copy=False)

    def run_delta_expert(self, actions: np.ndarray, prefix: PrefixState) -> tuple[np.ndarray, np.ndarray]:
        self._check_prefix(prefix)
        staged = self._put("actions", actions)
        self._execute("delta_expert")
        delta, act_cls = self._get("delta"), self._get("act_cls")
        self._finish(delta=delta, act_cls=act_cls)
        del staged
        return delta.astype(np.float32, copy=False), act_cls.astype(np.float32, copy=False)

    def run_plan_encoder(self, plan: np.ndarray, plan_valid: np.ndarray) -> np.ndarray:
        self._check_open()  # no prefix: the plan encoder reads no K/V
        staged = [self._put("plan", plan), self._put("plan_valid", plan_valid)]
        self._execute("plan_encoder")
        act_cls = self._get("act_cls")
        self._finish(act_cls=act_cls)
        del staged
        return act_cls.astype(np.float32, copy=False)

    def denoise(self, noise: np.ndarray, num_steps: int, prefix: PrefixState) -> np.ndarray:
        """Euler loop on the device: replay a captured CUDA graph, or plain launches the first time / on failure."""
        self._check_prefix(prefix)
        if self._euler is None or num_steps < 1:
            return super().denoise(noise, num_steps, prefix)
        staged = [self._put("x_t", noise), self._put("t", np.ones(1, dtype=np.float32))]
        graph = self._graphs.get(num_steps)
        if graph is not None:
            graph.launch(self._stream)
        else:
            self._enqueue_loop(num_steps)  # also the warm-up TensorRT needs before capture
        x = self._get("x_t")
        self._finish(actions=x)
        del staged
        if graph is None and self._use_cuda_graph and num_steps not in self._graph_failed:
            self._capture(num_steps)
        return x.astype(np.float32, copy=False)

    def _enqueue_loop(self, num_steps: int) -> None:
        assert self._euler is not None
        x, v, t = (self._tensors[n].buffer for n in ("x_t", "v_t", "t"))
        n = x.nbytes // 4
        dt = -1.0 / num_steps
        for i in range(num_steps):
            self._execute("main_expert")
            self._euler.launch(x.ptr, v.ptr, t.ptr, dt, 1.0 - (i + 1) / num_steps, n, self._stream)

    def _capture(self, num_steps: int) -> None:
        """Record the loop into a CUDA graph for the next calls; on any failure keep plain launches."""
        from runtime.cuda_memory import CudaError, CudaGraph

        graph = CudaGraph()
        try:
            graph.begin(self._stream)
            try:
                self._enqueue_loop(num_steps)
            finally:
                graph.end(self._stream)  # always leave capture mode, even if an enqueue failed
            self._graphs[num_steps] = graph
        except (CudaError, BackendError) as exc:
            self._graph_failed.add(num_steps)
            print(f"TensorRTBackend: CUDA graph capture failed ({exc}); using plain launches", file=sys.stderr)
            try:
                graph.close()
            except CudaError:
                pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._stream.synchronize()
        finally:
            for graph in self._graphs.values():
                graph.close()
            self._graphs.clear()
            if self._euler is not None:
                self._euler.close()
            self._contexts.clear()  # contexts before engines before the memory they point at
            self._engines.clear()
            for spec in self._tensors.values():
                spec.buffer.free()
            if self._scratch is not None:
                self._scratch.free()
            self._stream.close()
