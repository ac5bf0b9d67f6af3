"""An indexed view of one ONNX graph (producers, consumers, constant values, static shapes) and the node-list
edits every rewrite of `export.int8.graph_optimization` shares, dead-node elimination included."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

# Constants larger than this (elements) are neither loaded nor evaluated when looking for all-zero operands.
MAX_CONST_ELEMENTS = 1 << 24
# Ops the constant evaluator may run: shape/broadcast/elementwise ops whose semantics are the same in every
# opset the exporter emits (>= 13).
_FOLDABLE = frozenset({"Add", "Sub", "Mul", "Div", "Neg", "Where", "Cast", "Expand", "Unsqueeze", "Squeeze",
                       "Reshape", "Not", "And", "Or", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
                       "ConstantOfShape", "Constant", "Concat", "Identity", "Transpose", "Max", "Min", "Clip"})


def node_key(node: onnx.NodeProto) -> tuple[str, ...]:
    """A node's identity: its output names (unique in a valid graph; protobuf wrappers are not stable objects)."""
    return tuple(node.output)


def same_node(a: onnx.NodeProto | None, b: onnx.NodeProto) -> bool:
    return a is not None and node_key(a) == node_key(b)


def is_standard(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


class GraphIndex:
    """Producers, consumers, initializers and inferred static shapes of one graph (rebuilt after each rewrite)."""

    def __init__(self, model: onnx.ModelProto, base_dir: str | None, shapes: dict[str, tuple[int, ...]]):
        self.model, self.graph, self.base_dir, self.shapes = model, model.graph, base_dir, shapes
        self.producer: dict[str, onnx.NodeProto] = {o: n for n in self.graph.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.graph.node:
            # A control-flow node (If / Loop / Scan) also reads the outer names its bodies use: count it as a
            # consumer of each, so no rewrite treats such a tensor as single-use or drops its producer.
            for name in dict.fromkeys([*n.input, *sorted(subgraph_reads(n))]):
                if name:
                    self.consumers.setdefault(name, []).append(n)
        self.inits = {i.name: i for i in self.graph.initializer}
        self.graph_outputs = {o.name for o in self.graph.output}
        self._const: dict[str, np.ndarray | None] = {}

    def single_consumer(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.graph_outputs else None

    def const(self, name: str) -> np.ndarray | None:
        """The value of `name` when it is a constant (initializer, Constant node, or small constant subgraph)."""
        if name in self._const:
            return self._const[name]
        self._const[name] = None  # also guards against cycles
        value = self._const_uncached(name)
        self._const[name] = value
        return value

    def _const_uncached(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            init = self.inits[name]
            if math.prod(init.dims) > MAX_CONST_ELEMENTS:
                return None
            return numpy_helper.to_array(init, self.base_dir or "")
        node = self.producer.get(name)
        if node is None or not is_standard(node) or node.op_type not in _FOLDABLE:
            return None
        shape = self.shapes.get(name)
        if shape is not None and math.prod(shape) > MAX_CONST_ELEMENTS:
            return None
        args = {}
        for i in node.input:
            if not i:
                continue
            v = self.const(i)
            if v is None:
                return None
            args[i] = v
        from onnx.reference import ReferenceEvaluator

        try:
            outs = list(ReferenceEvaluator(node).run(None, args))
        except Exception:  # noqa: BLE001 — anything the evaluator cannot do is simply not a constant
            return None
        values = dict(zip(node.output, (np.asarray(v) for v in outs)))
        for o, v in values.items():
            if o and o != name:
                self._const[o] = v
        return values.get(name)

    def scalar(self, name: str) -> float | None:
        v = self.const(name)
        if v is None or v.size != 1 or v.dtype.kind != "f":
            return None
        return float(v.reshape(()))


def static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Fully static tensor shapes from onnx shape inference (value_info, inputs, outputs, initializers)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # noqa: BLE001 — no shapes: the shape-dependent rewrites simply do not fire
        inferred = model
    out: dict[str, tuple[int, ...]] = {}
    g = inferred.graph
    for vi in [*g.value_info, *g.input, *g.output]:
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if all(d >= 0 for d in dims):
            out[vi.name] = tuple(dims)
    for init in model.graph.initializer:
        out[init.name] = tuple(init.dims)
    return out


def replace_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Point every reader of `old` at `new`, inside If / Loop / Scan bodies too (unless a body defines `old`)."""
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name == old:
                n.input[i] = new
        for body in _bodies(n):
            if old not in _defined_in(body):
                replace_uses(body, old, new)


def _bodies(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [g for a in node.attribute for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))]


def _defined_in(body: onnx.GraphProto) -> set[str]:
    """Names a body defines itself (its inputs, initializers, node outputs), which shadow outer ones."""
    return {*(i.name for i in body.input), *(i.name for i in body.initializer), *(o for n in body.node for o in n.output)}


def rebuild(graph: onnx.GraphProto, dead: set[tuple[str, ...]],
            at: dict[tuple[str, ...], onnx.NodeProto] | None = None) -> None:
    """Drop the nodes whose key is in `dead`; a node in `at` takes the place of the dead node keyed by it."""
    at = at or {}
    keep = []
    for n in graph.node:
        if node_key(n) in dead:
            if node_key(n) in at:
                keep.append(at[node_key(n)])
            continue
        keep.append(n)
    del graph.node[:]
    graph.node.extend(keep)


def other_input(node: onnx.NodeProto, name: str) -> str | None:
    if len(node.input) != 2 or name not in node.input:
        return None
    return node.input[1] if node.input[0] == name else node.input[0]


def subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Outer names the bodies of a control-flow node read (names a body defines itself are not outer)."""
    names: set[str] = set()
    for g in _bodies(node):
        used: set[str] = set()
        for n in g.node:
            used.update(i for i in n.input if i)
            used.update(subgraph_reads(n))
        used.update(o.name for o in g.output)
        names |= used - _defined_in(g)
    return names


def eliminate_dead_nodes(idx: GraphIndex) -> int:
    """Remove nodes nothing reads (transitively) and initializers no node reads; returns nodes removed."""
    graph = idx.graph
    needed = {o.name for o in graph.output}
    keep: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed.update(i for i in node.input if i)
            needed.update(subgraph_reads(node))
    removed = len(graph.node) - len(keep)
    if removed:
        del graph.node[:]
        graph.node.extend(reversed(keep))
    unused = [i for i in graph.initializer if i.name not in needed]
    for i in unused:
        graph.initializer.remove(i)
    return removed
