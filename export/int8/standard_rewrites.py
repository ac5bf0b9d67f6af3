"""The rewrites that keep a graph standard ONNX (and TensorRT-parsable): the vision tower's zero attention mask
dropped, RoPE ScatterND pairs → Concat (`export.graphs.tensorrt_rewrites`, shared with the export), RMSNorm
in onnxruntime's fusable Div form, masked_fill with a scalar fill."""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.graphs.tensorrt_rewrites import scatter_rows_to_concat
from export.int8.graph_editing import GraphIndex, is_standard, node_key, other_input, rebuild, replace_uses, same_node

__all__ = ["remove_zero_adds", "rsqrt_mul_to_div", "scatter_rows_to_concat", "uniform_where_fill"]


def remove_zero_adds(idx: GraphIndex) -> int:
    """Add(x, Z) → x for an all-zero constant Z of rank ≥ 2 whose broadcast keeps x's shape."""
    graph, fired = idx.graph, 0
    dead: set[tuple[str, ...]] = set()
    for node in list(graph.node):
        if node.op_type != "Add" or not is_standard(node) or len(node.input) != 2 \
                or node.output[0] in idx.graph_outputs:
            continue
        for k in (0, 1):
            zname, xname = node.input[k], node.input[1 - k]
            zshape, xshape = idx.shapes.get(zname), idx.shapes.get(xname)
            if zshape is None or xshape is None or len(zshape) < 2 or idx.shapes.get(node.output[0]) != xshape:
                continue
            try:
                if tuple(np.broadcast_shapes(xshape, zshape)) != xshape:
                    continue
            except ValueError:
                continue
            z = idx.const(zname)
            if z is None or z.dtype.kind != "f" or np.any(z != 0) or np.any(np.isnan(z)):
                continue
            replace_uses(graph, node.output[0], xname)
            dead.add(node_key(node))
            fired += 1
            break
    rebuild(graph, dead)
    return fired


def rsqrt_mul_to_div(idx: GraphIndex) -> int:
    """Mul(x, Reciprocal(Sqrt(v))) → Div(x, Sqrt(v)): the exporter's RMSNorm, x · rsqrt(mean(x²) + ε) · w, in
    the form onnxruntime's SimplifiedLayerNormFusion recognises (Pow → ReduceMean → Add → Sqrt → Div → Mul),
    so each RMSNorm of the text model and the experts runs as one kernel instead of seven (x / s and
    x · (1/s) differ by at most one rounding)."""
    graph = idx.graph
    dead: set[tuple[str, ...]] = set()
    at: dict[tuple[str, ...], onnx.NodeProto] = {}
    for mul in list(graph.node):
        if mul.op_type != "Mul" or not is_standard(mul) or len(mul.input) != 2:
            continue
        for r_name in mul.input:
            rec = idx.producer.get(r_name)
            x = other_input(mul, r_name)
            if rec is None or x is None or rec.op_type != "Reciprocal" or not is_standard(rec) \
                    or not same_node(idx.single_consumer(r_name), mul):
                continue
            sqrt = idx.producer.get(rec.input[0])
            if sqrt is None or sqrt.op_type != "Sqrt" or not is_standard(sqrt) or idx.shapes.get(x) is None \
                    or idx.shapes.get(mul.output[0]) != idx.shapes.get(x):
                continue
            at[node_key(mul)] = helper.make_node("Div", [x, rec.input[0]], [mul.output[0]],
                                                name=f"{mul.name or mul.output[0]}_Div")
            dead.update({node_key(mul), node_key(rec)})
            break
    rebuild(graph, dead, at)
    return len(at)


def uniform_where_fill(idx: GraphIndex) -> int:
    """Where(c, x, F) with a constant F whose elements are all equal → Where(c, x, f) with f a scalar (exact).
    The exporter materialises `masked_fill`'s fill value as a full-size constant ([1,15,50,229] in every
    expert attention layer); onnxruntime's Where is ~2x faster with a broadcast scalar than with a third
    full-size operand."""
    graph, fired = idx.graph, 0
    scalars: dict[tuple[str, bytes], str] = {}
    for node in graph.node:
        if node.op_type != "Where" or not is_standard(node) or len(node.input) != 3:
            continue
        out = idx.shapes.get(node.output[0])
        for k in (1, 2):
            fill = idx.shapes.get(node.input[k])
            if out is None or fill is None or math.prod(fill) <= 1 or node.input[k] not in idx.inits \
                    and idx.producer.get(node.input[k]) is None:
                continue
            value = idx.const(node.input[k])
            if value is None or value.size <= 1 or not np.all(value == value.flat[0]):
                continue
            others = [idx.shapes.get(node.input[j]) for j in (0, 3 - k)]
            if any(o is None for o in others) or tuple(np.broadcast_shapes(*others)) != out:  # type: ignore[arg-type]
                continue
            scalar = value.reshape(-1)[:1].reshape(())
            key = (str(scalar.dtype), scalar.tobytes())
            if key not in scalars:
                name = f"{node.input[k]}_scalar"
                while name in idx.inits or name in idx.producer:
                    name += "_"
                graph.initializer.append(numpy_helper.from_array(scalar, name))
                idx.inits[name] = graph.initializer[-1]
                scalars[key] = name
            node.input[k] = scalars[key]
            fired += 1
    return fired
