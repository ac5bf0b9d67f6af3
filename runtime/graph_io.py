"""A loaded graph's I/O (onnxruntime session, TensorRT engine) checked against the manifest's graph spec.

Both backends and `make engine` refuse, in one line naming graph, tensor and field, a graph whose tensor names,
kinds (input/output), dtypes or static shapes differ from the manifest's. A dynamic axis passes when the
manifest's size lies in the input's optimisation profile (TensorRT; onnxruntime has no profile).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from runtime.backend import BackendError
from runtime.manifest import GraphSpec, TensorSpec

DYNAMIC = -1  # an axis sized only at run time (engine -1, ONNX symbolic dim, manifest symbol)


class GraphIOError(BackendError):
    """A loaded graph's I/O differs from the manifest's (or the manifest's graph entry is malformed)."""


@dataclass(frozen=True)
class LoadedTensor:
    """One I/O tensor as the loaded graph declares it."""

    name: str
    kind: str  # "input" | "output"
    dtype: str  # numpy name (float32, int64, bool, ...), else the runtime's own type name
    shape: tuple[int, ...]  # DYNAMIC for a run-time axis
    profile: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # dynamic input: (min, max) it accepts


def check_graph_io(spec: GraphSpec, loaded: Iterable[LoadedTensor], hint: str) -> None:
    """Refuse (GraphIOError naming graph, tensor and field) any difference from the manifest's I/O."""
    where = f"graph '{spec.name}'"
    have: dict[str, LoadedTensor] = {}
    for tensor in loaded:
        if tensor.name in have:
            raise GraphIOError(f"{where} declares tensor '{tensor.name}' twice; {hint}")
        have[tensor.name] = tensor
    want = [("input", s) for s in spec.inputs] + [("output", s) for s in spec.outputs]
    extra = sorted(set(have) - {s.name for _, s in want})
    if extra:
        raise GraphIOError(f"{where} has {have[extra[0]].kind} '{extra[0]}', which the manifest does not list; {hint}")
    for kind, s in want:
        got = have.get(s.name)
        if got is None:
            raise GraphIOError(f"{where} has no {kind} '{s.name}', which the manifest lists; {hint}")
        if got.kind != kind:
            raise GraphIOError(f"{where} tensor '{s.name}' is an {got.kind}, manifest says {kind}; {hint}")
        if got.dtype != s.dtype:
            raise GraphIOError(f"{where} {kind} '{s.name}' has dtype {got.dtype}, manifest says {s.dtype}; {hint}")
        _check_shape(f"{where} {kind} '{s.name}'", s.shape, got, hint)


def _check_shape(what: str, want: tuple[int, ...], tensor: LoadedTensor, hint: str) -> None:
    have = tensor.shape
    if len(have) != len(want) or any(DYNAMIC not in (a, b) and a != b for a, b in zip(have, want)):
        raise GraphIOError(f"{what} has shape {list(have)}, manifest says {list(want)}; {hint}")
    if tensor.profile is None or DYNAMIC in want:
        return
    low, high = tensor.profile
    if not (len(low) == len(high) == len(want) and all(lo <= d <= hi for lo, d, hi in zip(low, want, high))):
        raise GraphIOError(f"{what} has shape {list(have)} with profile {list(low)}..{list(high)}, which excludes "
                           f"the manifest's {list(want)}; {hint}")


def manifest_graph(manifest: Mapping[str, Any], graph: str) -> GraphSpec:
    """`graphs.<graph>` of a manifest dict as a GraphSpec (symbolic axes → DYNAMIC); GraphIOError naming the key."""
    graphs = manifest.get("graphs")
    entry = graphs.get(graph) if isinstance(graphs, Mapping) else None
    if not isinstance(entry, Mapping):
        raise GraphIOError(f"manifest has no graphs.{graph} entry")

    def tensors(kind: str) -> tuple[TensorSpec, ...]:
        specs = entry.get(kind)
        if not isinstance(specs, list):
            raise GraphIOError(f"manifest graphs.{graph}.{kind} is not a list")
        out = []
        for i, s in enumerate(specs):
            if not (isinstance(s, Mapping) and isinstance(s.get("name"), str) and isinstance(s.get("dtype"), str)
                    and isinstance(s.get("shape"), list)):
                raise GraphIOError(f"manifest graphs.{graph}.{kind}[{i}] needs a name, a shape list and a dtype")
            shape = tuple(d if isinstance(d, int) and not isinstance(d, bool) and d > 0 else DYNAMIC
                          for d in s["shape"])
            out.append(TensorSpec(s["name"], shape, s["dtype"]))
        return tuple(out)

    data_file = entry.get("data_file")
    return GraphSpec(graph, str(entry.get("file")), data_file if isinstance(data_file, str) else None,
                     tensors("inputs"), tensors("outputs"))
