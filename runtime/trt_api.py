"""Every TensorRT Python API difference the builder and the backend meet, in one place (10.3 JetPack 6 … 11.x).

Enum members are looked up by name, only when needed, so a build never touches a member its TensorRT lacks:
TensorRT 11 removed `BuilderFlag.FP16/BF16/INT8/OBEY_PRECISION_CONSTRAINTS/PREFER_PRECISION_CONSTRAINTS`,
`NetworkDefinitionCreationFlag.EXPLICIT_BATCH`, `ILayer.precision` / `set_output_type` and
`ICudaEngine.device_memory_size` (NVIDIA/TensorRT python/src/infer/pyCore.cpp, tags v10.3.0, v10.13.0, v11.0).
`tensorrt` is passed in, never imported here, so tests drive this module with fake modules of each version.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime.graph_io import DYNAMIC, LoadedTensor

# TensorRT DataType member -> numpy dtype the host side can hold (BF16/FP8/INT4 cannot cross the contract).
_HOST_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_,
                "INT8": np.int8, "UINT8": np.uint8}


# The oldest TensorRT the engines can be built and run with: int64 engine I/O (DataType.INT64) and strongly typed
# networks arrived in 9.0, ExecutionContextAllocationStrategy in 10.0 (pyFoundationalTypes.cpp / pyCore.cpp, tags
# v8.6.1, v9.1.0, v10.0.0). 8.6 (JetPack 6.0) would import the int64 token inputs as int32 (onnx-tensorrt 8.6-GA).
OLDEST_SUPPORTED = (10, 0)


class TensorRTApiError(RuntimeError):
    """The installed TensorRT lacks an API member this code needs (named, with the version)."""


def major_minor(version: str) -> tuple[int, int]:
    """'10.3.0.30' -> (10, 3); '11.x' -> (11, 0)."""
    parts = (version.split(".") + ["0"])[:2]
    try:
        return int(parts[0]), int(parts[1]) if parts[1].isdigit() else 0
    except ValueError:
        raise TensorRTApiError(f"cannot read the TensorRT version {version!r}") from None


def unsupported_version_reason(version: str) -> str | None:
    """None when this TensorRT version is new enough for the engines, else one line saying why and what to do."""
    try:
        key = major_minor(version)
    except TensorRTApiError as exc:
        return str(exc)
    if key >= OLDEST_SUPPORTED:
        return None
    oldest = ".".join(map(str, OLDEST_SUPPORTED))
    return (f"TensorRT {version} is older than {oldest}, the oldest the engines are built and run with (8.6 has no "
            "int64 engine inputs and no strongly typed networks); JetPack 6.0 ships 8.6, so upgrade to JetPack 6.1 "
            "or newer (TensorRT 10.3)")


def member(trt: Any, enum: str, name: str) -> Any:
    """`trt.<enum>.<name>`, or a TensorRTApiError naming the version that lacks it."""
    holder = getattr(trt, enum, None)
    value = getattr(holder, name, None) if holder is not None else None
    if value is None:
        raise TensorRTApiError(f"TensorRT {getattr(trt, '__version__', '?')} has no {enum}.{name}")
    return value


def network_flags(trt: Any, names: tuple[str, ...]) -> int:
    """The `create_network` bit mask for NetworkDefinitionCreationFlag member names."""
    flags = 0
    for name in names:
        flags |= 1 << int(member(trt, "NetworkDefinitionCreationFlag", name))
    return flags


def apply_builder_flags(trt: Any, config: Any, set_names: tuple[str, ...], clear_names: tuple[str, ...]) -> None:
    """Set / clear BuilderFlag members by name; only the members asked for are looked up."""
    for name in set_names:
        config.set_flag(member(trt, "BuilderFlag", name))
    for name in clear_names:
        config.clear_flag(member(trt, "BuilderFlag", name))


def host_dtype(trt: Any, dtype: Any, name: str) -> np.dtype[Any]:
    """numpy dtype for an engine I/O tensor, or TensorRTApiError naming the tensor and its TensorRT type."""
    for member_name, np_type in _HOST_DTYPES.items():
        if getattr(trt.DataType, member_name, None) == dtype:
            return np.dtype(np_type)
    raise TensorRTApiError(f"engine tensor {name!r} has dtype {getattr(dtype, 'name', dtype)}, which the host side "
                           "cannot hold; the contract keeps graph inputs/outputs in float32/int64/bool")


def device_memory_size(engine: Any) -> int | None:
    """Scratch bytes an execution context needs (`device_memory_size_v2`, 10.1+), None when not exposed."""
    size = getattr(engine, "device_memory_size_v2", None)
    return None if size is None else int(size)


def user_managed_context(trt: Any, engine: Any, ptr: int, size: int) -> Any:
    """An execution context on caller-owned scratch memory (10.1+: USER_MANAGED + set_device_memory(ptr, size))."""
    strategy = member(trt, "ExecutionContextAllocationStrategy", "USER_MANAGED")
    ctx = engine.create_execution_context(strategy)
    if ctx is not None:
        ctx.set_device_memory(ptr, size)
    return ctx


def dims(value: Any) -> tuple[int, ...]:
    """TensorRT Dims → tuple (Dims indexes but does not declare iteration)."""
    return tuple(int(value[i]) for i in range(len(value)))


def engine_io(trt: Any, engine: Any) -> list[LoadedTensor]:
    """An engine's I/O tensors: name, mode, dtype, shape (-1 dynamic) and, for a dynamic input, profile 0's min/max.

    Uses only ICudaEngine's tensor API: num_io_tensors, get_tensor_name / _mode / _dtype / _shape and
    get_tensor_profile_shape (pyCore.cpp, tags v8.6.1, v10.3.0, v10.13.0, v11.0).
    """
    kinds = {member(trt, "TensorIOMode", "INPUT"): "input", member(trt, "TensorIOMode", "OUTPUT"): "output"}
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = engine.get_tensor_mode(name)
        kind = kinds.get(mode, str(getattr(mode, "name", mode)).lower())
        shape = tuple(d if d >= 0 else DYNAMIC for d in dims(engine.get_tensor_shape(name)))
        dtype = engine.get_tensor_dtype(name)
        try:
            dtype_name = host_dtype(trt, dtype, name).name
        except TensorRTApiError:  # BF16, FP8, ...: named as TensorRT names it, refused by the manifest check
            dtype_name = str(getattr(dtype, "name", dtype))
        profile = None
        if kind == "input" and DYNAMIC in shape:
            low, _, high = engine.get_tensor_profile_shape(name, 0)
            profile = (dims(low), dims(high))
        out.append(LoadedTensor(name, kind, dtype_name, shape, profile))
    return out
