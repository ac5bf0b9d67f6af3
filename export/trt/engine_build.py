"""Build one TensorRT engine per graph with the TensorRT Python API (the only module here that calls the builder).

Decisions (precision flags, shape profiles, trtexec line, fingerprint) come from the pure modules
`export.trt.engine_plan` / `export.trt.engine_precision`; this module turns them into TensorRT objects, runs the
build with a progress monitor and a shared timing cache, and writes `<graph>.plan` + fingerprint.
`tensorrt` is imported inside the functions so the module imports on machines without it.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.trt.engine_plan import (
    TIMING_CACHE_NAME,
    BuildOptions,
    GraphJob,
    assemble_fingerprint,
    tensorrt_major,
    trtexec_command,
)
from export.trt.engine_precision import (
    Fp32Nodes,
    PrecisionPlan,
    check_strongly_typed_dtypes,
    load_fp32_nodes,
    must_stay_fp32,
    plan_precision,
)
from runtime.cuda_memory import DeviceInfo
from runtime.fingerprint import EngineFingerprint
from runtime.graph_io import GraphIOError, check_graph_io
from runtime.trt_api import apply_builder_flags, engine_io, network_flags

if TYPE_CHECKING:
    import tensorrt as trt


class BuildError(RuntimeError):
    """TensorRT could not parse or build a graph."""


@dataclass(frozen=True)
class BuildResult:
    """One built engine and how to reproduce it."""

    fingerprint: EngineFingerprint
    plan_path: Path
    trtexec: str


def _make_logger(verbose: bool) -> trt.ILogger:
    import tensorrt as trt

    class _Logger(trt.ILogger):
        """Warnings and errors to stderr (INFO too with --verbose); TensorRT calls it from its own threads."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self._lock = threading.Lock()
            self._min = trt.ILogger.Severity.INFO if verbose else trt.ILogger.Severity.WARNING

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity <= self._min:  # lower value = more severe
                with self._lock:
                    print(f"[TensorRT {severity.name}] {msg}", file=sys.stderr, flush=True)

    return _Logger()


def _make_progress(graph: str) -> trt.IProgressMonitor:
    import tensorrt as trt

    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional on the device; fall back to one line per phase
        tqdm = None

    class _Progress(trt.IProgressMonitor):
        """Top-level builder phases as tqdm bars (or lines); nested phases are printed indented."""

        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()  # TensorRT may report from several threads
            self._depth: dict[str, int] = {}
            self._bars: dict[str, Any] = {}

        def phase_start(self, phase_name: str, parent_phase: str, num_steps: int) -> None:
            with self._lock:
                depth = self._depth.get(parent_phase, -1) + 1 if parent_phase else 0
                self._depth[phase_name] = depth
                if depth == 0 and tqdm is not None:
                    self._bars[phase_name] = tqdm(
                        total=num_steps, desc=f"{graph}: {phase_name}", leave=False, file=sys.stderr
                    )
                elif depth <= 1:
                    print(f"{graph}: {'  ' * depth}{phase_name} ({num_steps} steps)", file=sys.stderr, flush=True)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self._lock:
                bar = self._bars.get(phase_name)
                if bar is not None:
                    bar.update(1)
            return True  # never cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                self._depth.pop(phase_name, None)
                bar = self._bars.pop(phase_name, None)
                if bar is not None:
                    bar.close()

    return _Progress()


def _network_flags(plan: PrecisionPlan) -> int:
    import tensorrt as trt

    return network_flags(trt, plan.network_flags)


def _apply_builder_flags(config: trt.IBuilderConfig, plan: PrecisionPlan) -> None:
    """Only the flags the plan names are looked up: TensorRT 11 has no FP16/BF16/OBEY_PRECISION_CONSTRAINTS."""
    import tensorrt as trt

    apply_builder_flags(trt, config, plan.builder_flags, plan.cleared_builder_flags)


def _network_dtypes(network: trt.INetworkDefinition) -> set[str]:
    """Names of every tensor dtype in the parsed network (inputs and layer outputs)."""
    seen = {network.get_input(i).dtype.name for i in range(network.num_inputs)}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        seen.update(layer.get_output(j).dtype.name for j in range(layer.num_outputs))
    return seen


def _pin_fp32(network: trt.INetworkDefinition, fp32: Fp32Nodes) -> tuple[str, ...]:
    """Weakly typed fp16/bf16: constrain softmax / norm layers (and their fp32 outputs) to fp32."""
    import tensorrt as trt

    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not must_stay_fp32(layer.type.name, layer.name, fp32):
            continue
        outputs = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype == trt.DataType.FLOAT]
        if not outputs:  # shape / index / bool layers: nothing to keep in fp32
            continue
        layer.precision = trt.DataType.FLOAT
        for j in outputs:
            layer.set_output_type(j, trt.DataType.FLOAT)
        pinned.append(layer.name)
    return tuple(pinned)


def _parse(parser: trt.OnnxParser, job: GraphJob) -> None:
    # parse_from_file (not parse(bytes)) so that external weights next to the ONNX (`.onnx.data`) are found.
    if not parser.parse_from_file(str(job.onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"{job.graph}: TensorRT could not parse {job.onnx_path}: {errors or 'no details'}")


def check_built_engine(job: GraphJob, blob: bytes, logger: trt.ILogger) -> None:
    """Deserialise a just-built plan and refuse it (BuildError) unless its I/O is the manifest's."""
    import tensorrt as trt

    engine = trt.Runtime(logger).deserialize_cuda_engine(blob)
    if engine is None:
        raise BuildError(f"{job.graph}: TensorRT could not deserialise the engine it just built")
    try:
        check_graph_io(job.io, engine_io(trt, engine), "the engine is not saved; the ONNX and manifest.json of "
                       "this folder disagree: re-export it with `make export`")
    except GraphIOError as exc:
        raise BuildError(str(exc)) from None


def build_engine(
    job: GraphJob,
    options: BuildOptions,
    device: DeviceInfo,
    timing_cache_path: Path | None,
    verbose: bool = False,
) -> BuildResult:
    """Parse, configure, build and serialise one graph; write the plan, fingerprint and trtexec line."""
    import tensorrt as trt

    plan = plan_precision(
        options.precision, options.strongly_typed, device.compute_capability, tensorrt_major(trt.__version__)
    )
    logger = _make_logger(verbose)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(plan))
    parser = trt.OnnxParser(network, logger)
    _parse(parser, job)

    pinned: tuple[str, ...] = ()
    if plan.strongly_typed:
        check_strongly_typed_dtypes(options.precision, job.graph, _network_dtypes(network))
    elif plan.pin_norms_fp32:  # layers carry their ONNX node's name; which nodes are norms, the graph says
        pinned = _pin_fp32(network, load_fp32_nodes(job.onnx_path))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    config.builder_optimization_level = options.opt_level
    _apply_builder_flags(config, plan)
    progress = _make_progress(job.graph)  # must outlive the build: TensorRT holds a raw reference
    config.progress_monitor = progress

    if job.profile:
        profile = builder.create_optimization_profile()
        for name, shapes in job.profile.items():
            profile.set_shape(name, trt.Dims(list(shapes.min)), trt.Dims(list(shapes.opt)), trt.Dims(list(shapes.max)))
        config.add_optimization_profile(profile)

    cache: trt.ITimingCache | None = None
    if timing_cache_path is not None:
        blob = timing_cache_path.read_bytes() if timing_cache_path.is_file() else b""
        cache = config.create_timing_cache(blob)
        if cache is None:  # a blob TensorRT cannot read (corrupt, another version's format): nullptr
            print(f"{job.graph}: timing cache {timing_cache_path} is unreadable; starting a new one", file=sys.stderr)
            cache = config.create_timing_cache(b"")
        if not config.set_timing_cache(cache, False):  # False: refuse a cache from another GPU
            print(
                f"{job.graph}: timing cache {timing_cache_path} does not fit this GPU; starting a new one",
                file=sys.stderr,
            )
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, False)

    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:  # the binding returns None on failure; the logger has printed why
        raise BuildError(f"{job.graph}: TensorRT failed to build the engine (see the [TensorRT ERROR] lines)")
    blob_out = memoryview(serialized).tobytes()
    del serialized, parser, network  # free the network before a second copy of the engine is loaded
    check_built_engine(job, blob_out, logger)

    job.plan_path.parent.mkdir(parents=True, exist_ok=True)
    job.plan_path.write_bytes(blob_out)
    if cache is not None and timing_cache_path is not None:
        timing_cache_path.write_bytes(memoryview(cache.serialize()).tobytes())
    fingerprint = assemble_fingerprint(
        job, options, blob_out, trt.__version__, device.name, device.compute_capability, seconds
    )
    fingerprint.write(job.fingerprint_path)
    line = trtexec_command(job, options, plan.trtexec_flags, pinned, timing_cache_path)
    job.plan_path.with_suffix(".trtexec.txt").write_text(line + "\n", encoding="utf-8")
    return BuildResult(fingerprint, job.plan_path, line)


def build_all(
    jobs: list[GraphJob], options: BuildOptions, device: DeviceInfo, out: Path, verbose: bool = False
) -> list[BuildResult]:
    """Build the jobs in order, sharing one timing cache file in `out`."""
    cache_path = out / TIMING_CACHE_NAME if options.timing_cache else None
    results = []
    for job in jobs:
        result = build_engine(job, options, device, cache_path, verbose)
        fp = result.fingerprint
        print(
            f"{job.graph}: {fp.engine_bytes / 2**20:.1f} MiB {fp.precision} engine in {fp.build_seconds:.1f} s "
            f"→ {result.plan_path}\n  equivalent: {result.trtexec}",
            flush=True,
        )
        results.append(result)
    return results
