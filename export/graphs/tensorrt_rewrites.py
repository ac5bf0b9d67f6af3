"""Exact rewrites that make an exported graph parse on every TensorRT we support, down to 10.3 (JetPack 6).

Applied by `make export` to every graph (and so inherited by the fp16/bf16 folders) and by the int8 path:
- `scatter_rows_to_concat`: the exporter writes `x[:d] = a; x[d:] = b` (rotary embeddings) as ScatterNDs;
  when their constant row blocks tile the data exactly they become one Concat;
- `drop_default_scatter_reduction`: any ScatterND left keeps its meaning without the explicit
  `reduction="none"` the dynamo exporter writes, which TensorRT's ONNX parser rejects before 10.9
  (onnx-tensorrt `ASSERT_NODE(!attrs.count("reduction"))`; TensorRT 10.9 changelog "Fixed support for opset
  18+ ScatterND");
- `float_cumsum_of_flags`: CumSum over an integer tensor of 0/1 flags (position ids from the attention mask)
  runs as a float32 CumSum between Casts — exact while the axis is shorter than 2^24 — because integer
  CumSum needs TensorRT 10.8 (ICumulativeLayer; the 10.x parser's support matrix lists CumSum for FP32, FP16,
  BF16 only).
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper

from export.int8.graph_editing import (
    GraphIndex,
    eliminate_dead_nodes,
    is_standard,
    node_key,
    rebuild,
    same_node,
    static_shapes,
)

_EXACT_FLOAT_INTS = 1 << 24  # every integer up to 2^24 is exact in float32
_PASS_THROUGH = frozenset({"Concat", "Slice", "Reshape", "Unsqueeze", "Squeeze", "Expand", "Transpose",
                           "Identity", "Gather", "Flatten"})


def _row_range(idx: GraphIndex, node: onnx.NodeProto) -> tuple[int, int] | None:
    """[start, stop) when a ScatterND writes whole rows of axis 0 at constant, contiguous ascending indices."""
    if node.op_type != "ScatterND" or not is_standard(node) or len(node.input) != 3:
        return None
    reduction = next((a.s for a in node.attribute if a.name == "reduction"), b"none")
    if reduction not in (b"none", b""):
        return None
    ind = idx.const(node.input[1])
    if ind is None or ind.dtype.kind not in "iu" or ind.ndim != 2 or ind.shape[1] != 1 or ind.shape[0] == 0:
        return None
    rows = ind[:, 0].astype(np.int64)
    if np.any(rows < 0) or np.any(np.diff(rows) != 1):
        return None
    return int(rows[0]), int(rows[-1]) + 1


def scatter_rows_to_concat(idx: GraphIndex) -> int:
    """A chain of ScatterNDs that together overwrite every row of their data (axis 0) with contiguous blocks
    → Concat(updates, axis=0). The exporter writes `x[:d] = a; x[d:] = b` (rotary embeddings) this way:
    a zero tensor, two ScatterNDs and transposes around them; Concat is the same data movement in one op."""
    graph = idx.graph
    position = {node_key(n): i for i, n in enumerate(graph.node)}
    dead: set[tuple[str, ...]] = set()
    at: dict[tuple[str, ...], onnx.NodeProto] = {}
    for end in list(graph.node):
        if _row_range(idx, end) is None:
            continue
        nxt = idx.single_consumer(end.output[0])
        if nxt is not None and _row_range(idx, nxt) is not None and nxt.input[0] == end.output[0]:
            continue  # not the end of its chain
        chain = [end]
        while True:
            prev = idx.producer.get(chain[-1].input[0])
            if prev is None or _row_range(idx, prev) is None \
                    or not same_node(idx.single_consumer(prev.output[0]), chain[-1]):
                break
            chain.append(prev)
        data_shape = idx.shapes.get(chain[-1].input[0])
        if data_shape is None or len(data_shape) < 1:
            continue
        ranges: list[tuple[tuple[int, int], onnx.NodeProto]] = []
        for n in chain:
            r = _row_range(idx, n)
            assert r is not None  # checked while walking the chain
            ranges.append((r, n))
        ranges.sort(key=lambda rn: rn[0])
        starts = [r for r, _ in ranges]
        if starts[0][0] != 0 or starts[-1][1] != data_shape[0] \
                or any(a[1] != b[0] for a, b in itertools.pairwise(starts)):
            continue  # overlapping writes or rows left from the data tensor
        if any(idx.shapes.get(n.input[2]) is None or idx.shapes[n.input[2]][1:] != data_shape[1:] for n in chain):
            continue
        updates = [n.input[2] for _, n in ranges]
        out = end.output[0]
        name = f"{end.name or out}_{'Concat' if len(updates) > 1 else 'Identity'}"
        fused = (helper.make_node("Concat", updates, [out], name=name, axis=0) if len(updates) > 1
                 else helper.make_node("Identity", updates, [out], name=name))
        at[max((node_key(n) for n in chain), key=position.__getitem__)] = fused
        dead.update(node_key(n) for n in chain)
    rebuild(graph, dead, at)
    return len(at)


def drop_default_scatter_reduction(idx: GraphIndex) -> int:
    """ScatterND(reduction="none") → ScatterND without the attribute (the ONNX default: identical semantics)."""
    fired = 0
    for node in idx.graph.node:
        if node.op_type != "ScatterND" or not is_standard(node):
            continue
        keep = [a for a in node.attribute if not (a.name == "reduction" and a.s in (b"none", b""))]
        if len(keep) != len(node.attribute):
            del node.attribute[:]
            node.attribute.extend(keep)
            fired += 1
    return fired


def _zero_one(idx: GraphIndex, types: dict[str, int], name: str, depth: int = 0) -> bool:
    """True when every element of `name` is 0 or 1: a bool tensor, a Cast of one, constants of 0/1, or data
    movement (Concat, Slice, Reshape, ...) of such."""
    if types.get(name) == TensorProto.BOOL:
        return True
    value = idx.const(name)
    if value is not None:
        return bool(np.all((value == 0) | (value == 1)))
    node = idx.producer.get(name)
    if depth > 12 or node is None or not is_standard(node):
        return False
    if node.op_type == "Cast":
        return _zero_one(idx, types, node.input[0], depth + 1)
    if node.op_type in _PASS_THROUGH:
        data = node.input if node.op_type == "Concat" else node.input[:1]
        return all(_zero_one(idx, types, i, depth + 1) for i in data)
    return False


def float_cumsum_of_flags(idx: GraphIndex, types: dict[str, int]) -> int:
    """Integer CumSum of 0/1 flags along an axis shorter than 2^24 → Cast(float) → CumSum → Cast(back)."""
    fired = 0
    new_nodes: list[onnx.NodeProto] = []
    for node in idx.graph.node:
        dtype = types.get(node.input[0]) if node.op_type == "CumSum" and is_standard(node) else None
        shape = idx.shapes.get(node.input[0])
        axis = idx.const(node.input[1]) if dtype in (TensorProto.INT32, TensorProto.INT64) else None
        if axis is None or shape is None or not _zero_one(idx, types, node.input[0]) \
                or shape[int(axis.reshape(-1)[0])] >= _EXACT_FLOAT_INTS:
            new_nodes.append(node)
            continue
        base = node.name or node.output[0]
        as_float, summed = f"{base}_float_in", f"{base}_float_sum"
        new_nodes += [helper.make_node("Cast", [node.input[0]], [as_float], name=f"{base}_to_float",
                                       to=TensorProto.FLOAT),
                      helper.make_node("CumSum", [as_float, node.input[1]], [summed], name=base,
                                       **{a.name: helper.get_attribute_value(a) for a in node.attribute}),
                      helper.make_node("Cast", [summed], node.output, name=f"{base}_to_int", to=dtype)]
        fired += 1
    if fired:
        del idx.graph.node[:]
        idx.graph.node.extend(new_nodes)
    return fired


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        g = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    except Exception:  # noqa: BLE001 — untyped: the type-dependent rewrite does not fire
        g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return types


def make_tensorrt_portable(model: onnx.ModelProto, base_dir: str | None = None) -> dict[str, int]:
    """Apply the three rewrites in place; returns how often each fired."""
    shapes = static_shapes(model)
    report = {"scatter_rows_to_concat": scatter_rows_to_concat(GraphIndex(model, base_dir, shapes))}
    report["drop_default_scatter_reduction"] = drop_default_scatter_reduction(GraphIndex(model, base_dir, shapes))
    report["float_cumsum_of_flags"] = float_cumsum_of_flags(GraphIndex(model, base_dir, shapes), _elem_types(model))
    eliminate_dead_nodes(GraphIndex(model, base_dir, shapes))  # the scatters' zero tensors and index constants
    return report
