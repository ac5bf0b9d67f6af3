"""Fake `tensorrt` modules that expose exactly one version's API surface (10.3, 10.13, 11.x; and 8.6, which
JetPack 6.0 ships and this project refuses), so a use of a member a version lacks fails here, not on a robot.

Enum members and the attributes that differ are taken from NVIDIA/TensorRT python/src/infer/pyCore.cpp and
pyFoundationalTypes.cpp at tags v8.6.1, v10.3.0, v10.13.0 and v11.0 (8.6's parser: onnx/onnx-tensorrt 8.6-GA). The fake parser reads the ONNX with `onnx`
(one fake layer per node, typed from shape inference); a built "plan" is JSON of the network's I/O (dynamic
axes -1) and its optimisation profile, and executing a context fills every output with `OUTPUT_VALUE` (through
the fake CUDA of tests/fake_cuda.py). A plan's optional "output_shapes" are what a context resolves its dynamic
outputs to; `set_input_shape` refuses shapes outside the profile and the inputs named in `REFUSED_INPUT_SHAPES`.
"""

from __future__ import annotations

import enum
import json
import types
from typing import Any

import numpy as np
import onnx

OUTPUT_VALUE = 0.5
TIMING_CACHE_BLOB = b"cache"  # what a fake timing cache serialises to (and reads back)
REFUSED_INPUT_SHAPES: set[str] = set()  # inputs whose set_input_shape returns False whatever the shape

_BUILDER_FLAGS_10 = ["FP16", "BF16", "INT8", "DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32",
                     "SPARSE_WEIGHTS", "SAFETY_SCOPE", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS",
                     "DIRECT_IO", "REJECT_EMPTY_ALGORITHMS", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "FP8",
                     "ERROR_ON_TIMING_CACHE_MISS", "DISABLE_COMPILATION_CACHE", "WEIGHTLESS", "STRIP_PLAN",
                     "REFIT_IDENTICAL", "WEIGHT_STREAMING", "INT4", "REFIT_INDIVIDUAL"]
_BUILDER_FLAGS_1013 = [*_BUILDER_FLAGS_10, "EDITABLE_TIMING_CACHE", "STRICT_NANS", "MONITOR_MEMORY", "FP4",
                       "DISTRIBUTIVE_INDEPENDENCE"]
_REMOVED_IN_11 = {"FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                  "PREFER_PRECISION_CONSTRAINTS", "REJECT_EMPTY_ALGORITHMS", "WEIGHTLESS"}
SURFACES: dict[str, dict[str, Any]] = {
    "10.3": {"version": "10.3.0.30", "builder_flags": _BUILDER_FLAGS_10,
             "network_flags": ["EXPLICIT_BATCH", "STRONGLY_TYPED"],
             "dtypes": ["FLOAT", "HALF", "BF16", "INT8", "INT32", "INT64", "BOOL", "UINT8", "FP8", "INT4"],
             "layer_precision": True},
    "10.13": {"version": "10.13.0.35", "builder_flags": _BUILDER_FLAGS_1013,
              "network_flags": ["EXPLICIT_BATCH", "STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS",
                                "PREFER_JIT_PYTHON_PLUGINS"],
              "dtypes": ["FLOAT", "HALF", "BF16", "INT8", "INT32", "INT64", "BOOL", "UINT8", "FP8", "INT4", "FP4",
                         "E8M0"],
              "layer_precision": True},
    "11.x": {"version": "11.0.0.14", "builder_flags": [f for f in _BUILDER_FLAGS_1013 if f not in _REMOVED_IN_11],
             "network_flags": ["STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS", "PREFER_JIT_PYTHON_PLUGINS"],
             "dtypes": ["FLOAT", "HALF", "BF16", "INT8", "INT32", "INT64", "BOOL", "UINT8", "FP8", "INT4", "FP4",
                        "E8M0"],
             "layer_precision": False},
}
# TensorRT 8.6 (JetPack 6.0), only to check that it is refused: v8.6.1 pyCore.cpp BuilderFlag (l. 1069-1091),
# NetworkDefinitionCreationFlag (l. 1235-1240); pyFoundationalTypes.cpp DataType (l. 175-182: no INT64, no BF16).
# No IProgressMonitor, no ExecutionContextAllocationStrategy, no device_memory_size_v2 / set_device_memory.
UNSUPPORTED_SURFACES: dict[str, dict[str, Any]] = {
    "8.6": {"version": "8.6.2.3",
            "builder_flags": ["FP16", "INT8", "DEBUG", "GPU_FALLBACK", "STRICT_TYPES", "REFIT", "DISABLE_TIMING_CACHE",
                              "TF32", "SPARSE_WEIGHTS", "SAFETY_SCOPE", "OBEY_PRECISION_CONSTRAINTS",
                              "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO", "REJECT_EMPTY_ALGORITHMS",
                              "ENABLE_TACTIC_HEURISTIC", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "FP8"],
            "network_flags": ["EXPLICIT_BATCH", "EXPLICIT_PRECISION"],
            "dtypes": ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8"],
            "layer_precision": True, "api8": True},
}
_ONNX_TO_TRT = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF", onnx.TensorProto.BFLOAT16: "BF16",
                onnx.TensorProto.INT32: "INT32", onnx.TensorProto.INT64: "INT64", onnx.TensorProto.BOOL: "BOOL",
                onnx.TensorProto.INT8: "INT8", onnx.TensorProto.UINT8: "UINT8"}
_NP = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_}


class _ParseFailed(Exception):
    """A tensor type the fake parser's TensorRT has no DataType for."""


def _enum(name: str, members: list[str]) -> type[enum.IntEnum]:
    return enum.IntEnum(name, [(m, i) for i, m in enumerate(members)])  # type: ignore[return-value]


def make_tensorrt(surface: str, cuda: Any = None) -> types.ModuleType:
    """A `tensorrt` module with the API surface of one version; `cuda` is the fake CUDA the contexts run on."""
    spec = SURFACES[surface] if surface in SURFACES else UNSUPPORTED_SURFACES[surface]
    api8 = spec.get("api8", False)  # TensorRT 8.6: none of the 9.x/10.x additions below
    trt = types.ModuleType("tensorrt")
    trt.__version__ = spec["version"]  # type: ignore[attr-defined]
    trt.BuilderFlag = _enum("BuilderFlag", spec["builder_flags"])  # type: ignore[attr-defined]
    trt.NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag", spec["network_flags"])  # type: ignore[attr-defined]
    DataType = _enum("DataType", spec["dtypes"])
    trt.DataType = DataType  # type: ignore[attr-defined]
    trt.MemoryPoolType = _enum("MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM", "TACTIC_DRAM"])  # type: ignore[attr-defined]
    trt.TensorIOMode = _enum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"])  # type: ignore[attr-defined]
    if not api8:  # added in 10.0 (v10.0.0 pyCore.cpp l. 1106)
        trt.ExecutionContextAllocationStrategy = _enum(  # type: ignore[attr-defined]
            "ExecutionContextAllocationStrategy", ["STATIC", "ON_PROFILE_CHANGE", "USER_MANAGED"])
    LayerType = _enum("LayerType", ["ELEMENTWISE", "SOFTMAX", "NORMALIZATION", "MATRIX_MULTIPLY", "REDUCE", "OTHER"])

    class ILogger:
        Severity = _enum("Severity", ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"])

        def __init__(self) -> None:
            pass

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    class Dims(tuple):
        def __new__(cls, dims: Any = ()) -> Any:
            return super().__new__(cls, tuple(int(d) for d in dims))

    class Tensor:
        def __init__(self, name: str, dtype: Any, shape: tuple[int, ...]) -> None:
            self.name, self.dtype, self.shape = name, dtype, shape

    class Layer:
        def __init__(self, node: onnx.NodeProto, outputs: list[Tensor]) -> None:
            self.name, self._outputs = node.name, outputs
            self.type = {"Softmax": LayerType.SOFTMAX, "LayerNormalization": LayerType.NORMALIZATION,
                         "MatMul": LayerType.MATRIX_MULTIPLY, "ReduceMean": LayerType.REDUCE}.get(
                node.op_type, LayerType.OTHER)
            self.num_outputs = len(outputs)
            if spec["layer_precision"]:  # weak typing's per-layer precision: gone in TensorRT 11
                self.precision = DataType.FLOAT
                self.set_output_type = lambda j, dtype: setattr(self._outputs[j], "dtype", dtype)

        def get_output(self, j: int) -> Tensor:
            return self._outputs[j]

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags, self.inputs, self.outputs, self.layers = flags, [], [], []

        num_inputs = property(lambda self: len(self.inputs))
        num_layers = property(lambda self: len(self.layers))

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

        def get_layer(self, i: int) -> Layer:
            return self.layers[i]

    class OnnxParser:
        def __init__(self, network: Network, logger: ILogger) -> None:
            self.network, self.num_errors = network, 0

        def parse_from_file(self, path: str) -> bool:
            model = onnx.shape_inference.infer_shapes(onnx.load(path, load_external_data=False))
            g = model.graph
            infos = {v.name: v for v in (*g.value_info, *g.input, *g.output)}

            if api8 and not self.network.flags & 1:  # ModelImporter.cpp l. 531 (8.6-GA): explicit batch only
                self.num_errors = 1
                return False

            def tensor(name: str) -> Tensor:
                t = infos[name].type.tensor_type
                trt_name = _ONNX_TO_TRT.get(t.elem_type, "FLOAT")
                if trt_name == "INT64" and not hasattr(DataType, "INT64"):  # 8.6 casts INT64 down to INT32
                    trt_name = "INT32"
                if not hasattr(DataType, trt_name):  # BF16 on 8.6: "Unsupported ONNX data type"
                    raise _ParseFailed(name)
                dtype = getattr(DataType, trt_name)
                return Tensor(name, dtype, tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim))

            try:
                self.network.inputs = [tensor(v.name) for v in g.input]
                self.network.outputs = [tensor(v.name) for v in g.output]
                self.network.layers = [Layer(n, [tensor(o) for o in n.output if o in infos]) for n in g.node]
            except _ParseFailed:
                self.num_errors = 1
                return False
            return True

        def get_error(self, i: int) -> str:
            return "no error"

    class TimingCache:
        def serialize(self) -> bytes:
            return TIMING_CACHE_BLOB

    class Config:
        def __init__(self) -> None:
            self.flags: set[Any] = {trt.BuilderFlag.TF32}  # on by default (NvInfer.h, BuilderFlag::kTF32)
            self.pools: dict[Any, int] = {}
            self.builder_optimization_level = 3
            self.progress_monitor: Any = None
            self.profiles: list[Any] = []

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            self.pools[pool] = size

        def set_flag(self, flag: Any) -> None:
            assert isinstance(flag, trt.BuilderFlag), flag
            self.flags.add(flag)

        def clear_flag(self, flag: Any) -> None:
            assert isinstance(flag, trt.BuilderFlag), flag
            self.flags.discard(flag)

        def create_timing_cache(self, blob: bytes) -> TimingCache | None:
            # a blob TensorRT cannot read (corrupt, another version's format) gives nullptr: None in Python
            return TimingCache() if blob in (b"", TIMING_CACHE_BLOB) else None

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            if not isinstance(cache, TimingCache):  # pybind11 refuses None for a reference parameter
                raise TypeError("set_timing_cache(): incompatible function arguments")
            return True

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, list[list[int]]] = {}

        def set_shape(self, name: str, low: Any, opt: Any, high: Any) -> None:
            self.shapes[name] = [list(low), list(opt), list(high)]

    class Builder:
        last_config: Config | None = None

        def __init__(self, logger: ILogger) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0) -> Network:
            return Network(flags)

        def create_builder_config(self) -> Config:
            Builder.last_config = Config()
            return Builder.last_config

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            io = [(t.name, t.dtype.name, list(t.shape), "INPUT") for t in network.inputs]
            io += [(t.name, t.dtype.name, list(t.shape), "OUTPUT") for t in network.outputs]
            profile = config.profiles[0].shapes if config.profiles else {}
            return json.dumps({"io": io, "flags": network.flags, "profile": profile}).encode()

    class Context:
        def __init__(self, engine: Engine, strategy: Any) -> None:
            self.engine, self.strategy, self.addresses, self.device_memory = engine, strategy, {}, None
            self.input_shapes: dict[str, tuple[int, ...]] = {}

        if not api8:  # set_device_memory(memory, size): 10.1+ (v10.1.0 pyCore.cpp l. 1042)
            def set_device_memory(self, ptr: int, size: int) -> None:
                self.device_memory = (ptr, size)

        def set_input_shape(self, name: str, dims: Any) -> bool:
            spec = self.engine._spec(name)
            low, _, high = self.engine.get_tensor_profile_shape(name, 0)
            shape = tuple(dims)
            fits = len(shape) == len(low) and all(a <= d <= b for a, d, b in zip(low, shape, high))
            if spec[3] != "INPUT" or -1 not in spec[2] or not fits or name in REFUSED_INPUT_SHAPES:
                return False
            self.input_shapes[name] = shape
            return True

        def get_tensor_shape(self, name: str) -> Dims:
            spec = self.engine._spec(name)
            if spec[3] == "INPUT":
                return Dims(self.input_shapes.get(name, spec[2]))
            unset = any(-1 in s[2] and s[0] not in self.input_shapes for s in self.engine._inputs())
            return Dims(spec[2] if unset else self.engine.output_shapes.get(name, spec[2]))

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream: int) -> bool:
            outputs = [(self.addresses[n], tuple(self.get_tensor_shape(n)), d) for n, d, s, m in self.engine.io
                       if m == "OUTPUT"]
            if any(-1 in shape for _, shape, _ in outputs):  # a dynamic input has no shape yet
                return False
            cuda.enqueue(stream, lambda: [cuda.fill(ptr, np.full(shape, OUTPUT_VALUE, _NP[dt])) for ptr, shape, dt
                                          in outputs])
            return True

    class Engine:
        def __init__(self, plan: bytes) -> None:
            data = json.loads(plan)
            self.io, self.profile = data["io"], data.get("profile", {})
            self.output_shapes: dict[str, list[int]] = data.get("output_shapes", {})
            self.num_io_tensors = len(self.io)
            self.num_optimization_profiles = 1  # TensorRT's implicit profile when none was added
            if not api8:  # device_memory_size_v2: 10.1+ (v10.1.0 pyCore.cpp l. 1181)
                self.device_memory_size_v2 = 4096
            if surface != "11.x":
                self.device_memory_size = 4096

        def get_tensor_name(self, i: int) -> str:
            return self.io[i][0]

        def _spec(self, name: str) -> list[Any]:
            return next(s for s in self.io if s[0] == name)

        def get_tensor_shape(self, name: str) -> Dims:
            return Dims(self._spec(name)[2])

        def get_tensor_dtype(self, name: str) -> Any:
            return getattr(DataType, self._spec(name)[1])

        def get_tensor_mode(self, name: str) -> Any:
            return getattr(trt.TensorIOMode, self._spec(name)[3])

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
            spec = self._spec(name)
            if spec[3] != "INPUT" or profile_index >= self.num_optimization_profiles:
                return [Dims(), Dims(), Dims()]  # TensorRT logs an error and returns invalid Dims
            return [Dims(d) for d in self.profile.get(name, [spec[2]] * 3)]

        def _inputs(self) -> list[list[Any]]:
            return [s for s in self.io if s[3] == "INPUT"]

        def create_execution_context(self, strategy: Any = None) -> Context:
            return Context(self, strategy)

    class Runtime:
        def __init__(self, logger: ILogger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, plan: bytes) -> Engine:
            return Engine(plan)

    for cls in (ILogger, IProgressMonitor, Dims, Builder, OnnxParser, Runtime):
        if not (api8 and cls is IProgressMonitor):  # IProgressMonitor: 9.x+ (v9.1.0 pyCore.cpp l. 921)
            setattr(trt, cls.__name__, cls)
    return trt
