"""A graph for onnxruntime as verified bytes in process memory: what the session runs is what was hashed.

Given a graph path, onnxruntime memory-maps the graph's external-data file (`<graph>.onnx.data`, which export
writes for graphs over 256 MB): a later in-place write to that file (`cp`/`scp` deploying over a running folder)
silently changes the running session's weights, and a truncation kills the process with SIGBUS. So the backend
reads the .onnx and the .data once, checks both against the manifest's size and SHA-256, and builds the session
from those bytes; onnxruntime opens neither file:
- large top-level initializers (the weights) become OrtValues viewing the verified .data buffer, handed over with
  `SessionOptions.add_external_initializers` (in every onnxruntime the runtime supports); the buffer stays
  referenced for the session's life, since onnxruntime may use it without a copy;
- every other external tensor (small ones, which shape inference must read while the graph is resolved, before
  injected initializers exist, and tensors in attributes or subgraphs) is copied into the graph proto itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from runtime.artifact_files import ArtifactFileError, confined_path, external_tensors
from runtime.backend import BackendError
from runtime.fingerprint import sha256_bytes
from runtime.manifest import GraphSpec, ManifestError

INLINE_BYTES = 64 << 10  # external tensors up to this size go into the proto (shapes, scales, biases)


@dataclass(frozen=True)
class GraphBytes:
    """What one onnxruntime session is built from: the model bytes and its injected initializers (if any)."""

    model: bytes
    initializer_names: tuple[str, ...]
    initializers: tuple[ort.OrtValue, ...]  # views of the verified .data buffer: keep alive with the session

    def add_to(self, opts: ort.SessionOptions) -> ort.SessionOptions:
        """Add the injected initializers to `opts` (use a fresh SessionOptions per session: they accumulate)."""
        if self.initializer_names:
            opts.add_external_initializers(list(self.initializer_names), list(self.initializers))
        return opts


def read_artifact(root: Path, name: str, record: Mapping[str, Any] | None) -> bytes:
    """The bytes of one listed file, read once; with a `record`, refused unless its size and SHA-256 match it."""
    try:
        data = confined_path(root, name).read_bytes()
    except ArtifactFileError as exc:
        raise ManifestError(str(exc)) from None
    except OSError as exc:
        raise ManifestError(f"artifact file '{name}' cannot be read ({exc.strerror})") from None
    if record is not None and (len(data) != record["bytes"] or sha256_bytes(data) != record["sha256"]):
        raise ManifestError(f"artifact file '{name}' changed after the manifest check (size or SHA-256 differs): "
                            "refused; re-export the artifacts with `make export`")
    return data


def load_graph_bytes(root: Path, spec: GraphSpec, files: Mapping[str, Mapping[str, Any]], verify: bool) -> GraphBytes:
    """Read (and with `verify`, check) the graph's .onnx and .data; the session needs no file afterwards."""
    model = read_artifact(root, spec.file, files[spec.file] if verify else None)
    if not spec.data_file:
        return GraphBytes(model, (), ())
    return in_memory_graph(spec, model, read_artifact(root, spec.data_file, files[spec.data_file] if verify else None))


def in_memory_graph(spec: GraphSpec, model_bytes: bytes, data: bytes) -> GraphBytes:
    """The graph with every external tensor taken from `data` (inlined or injected, see the module docstring);
    BackendError naming the tensor when one lies outside the data file or does not fit its shape and dtype."""
    import onnx

    try:
        model = onnx.load_model_from_string(model_bytes)
    except Exception as exc:  # noqa: BLE001 — protobuf's DecodeError, onnx's own errors
        raise BackendError(f"graph '{spec.name}': '{spec.file}' is not a readable ONNX model ({str(exc)[:200]})") from None
    names: list[str] = []
    values: list[ort.OrtValue] = []
    inlined = False
    for tensor, top_level in external_tensors(model.graph):
        where = f"graph '{spec.name}': external tensor '{tensor.name[:120]}'"
        dtype, raw = _tensor_bytes(onnx, tensor, data, where, spec.data_file or "")
        if top_level and len(raw) > INLINE_BYTES:
            names.append(tensor.name)
            values.append(_ortvalue(dtype, raw, tensor))
        else:
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = raw.tobytes()
            inlined = True
    return GraphBytes(model.SerializeToString() if inlined else model_bytes, tuple(names), tuple(values))


def _tensor_bytes(onnx: Any, tensor: Any, data: bytes, where: str, data_file: str) -> tuple[np.dtype, np.ndarray]:
    """The tensor's numpy dtype and its bytes in `data` (a uint8 view, no copy), after checking they fit."""
    info = {e.key: e.value for e in tensor.external_data}
    if info.get("location") != data_file:
        raise BackendError(f"{where} reads '{str(info.get('location'))[:120]}', not the graph's data_file "
                           f"'{data_file}': refused")
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
        offset = int(info.get("offset", 0))
        expected = math.prod(tensor.dims) * dtype.itemsize
        length = int(info.get("length", expected))
    except (KeyError, ValueError, TypeError) as exc:
        raise BackendError(f"{where} has an unreadable dtype, offset or length ({exc})") from None
    packed = {getattr(onnx.TensorProto, n, -1) for n in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")}
    if dtype.kind not in "biufV" or tensor.data_type in packed or length != expected or offset < 0 \
            or offset + length > len(data):
        raise BackendError(f"{where}: {length} bytes at offset {offset} of '{data_file}' ({len(data)} bytes) do not "
                           f"hold its shape {list(tensor.dims)} of {dtype}; re-export the artifacts with `make export`")
    return dtype, np.frombuffer(data, np.uint8, count=length, offset=offset)


def _ortvalue(dtype: np.dtype, raw: np.ndarray, tensor: Any) -> ort.OrtValue:
    """An OrtValue viewing `raw` as the tensor (copied only when misaligned for its dtype)."""
    native = dtype.kind in "biuf"  # else an ml_dtypes type (bfloat16, float8): handed over as unsigned ints
    array = raw.view(dtype if native else np.dtype(f"u{dtype.itemsize}")).reshape(tuple(tensor.dims))
    if not array.flags.aligned:
        array = array.copy()
    if native:
        return ort.OrtValue.ortvalue_from_numpy(array)
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array, tensor.data_type)
