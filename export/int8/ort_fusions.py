"""onnxruntime-only fusions into `com.microsoft` contrib ops: the exporter's decomposed tanh-GELU → FastGelu and
unmasked scaled-dot-product attention → MultiHeadAttention (float32 CPU kernels)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper

from export.int8.graph_editing import GraphIndex, is_standard, node_key, other_input, rebuild, same_node

MS_DOMAIN = "com.microsoft"
_GELU_A, _GELU_K = 0.044715, math.sqrt(2.0 / math.pi)


def _close(v: float | None, want: float) -> bool:
    return v is not None and math.isclose(v, want, rel_tol=1e-5, abs_tol=0.0)


def _match_tanh_gelu(idx: GraphIndex, tanh: onnx.NodeProto) -> tuple[str, str, list[onnx.NodeProto]] | None:
    """For a Tanh inside x·0.5·(1 + tanh(k·(x + a·x³))): (x, output, the pattern's nodes) or None."""
    def prod(name: str, op: str) -> onnx.NodeProto | None:
        n = idx.producer.get(name)
        return n if n is not None and n.op_type == op and is_standard(n) else None

    inner = prod(tanh.input[0], "Mul")  # k · (x + a·x³)
    if inner is None:
        return None
    for s in inner.input:
        k_name = other_input(inner, s)
        add1 = prod(s, "Add")
        if add1 is None or k_name is None or not _close(idx.scalar(k_name), _GELU_K):
            continue
        for cube_term in add1.input:
            x = other_input(add1, cube_term)
            mul_a = prod(cube_term, "Mul")  # a · x³
            if x is None or mul_a is None:
                continue
            for p in mul_a.input:
                a_name = other_input(mul_a, p)
                pw = prod(p, "Pow")
                if a_name is None or pw is None or not _close(idx.scalar(a_name), _GELU_A):
                    continue
                if pw.input[0] != x or not _close(idx.scalar(pw.input[1]), 3.0):
                    continue
                tail = _match_gelu_tail(idx, tanh, x)
                if tail is None:
                    continue
                out, tail_nodes = tail
                nodes = [pw, mul_a, add1, inner, tanh, *tail_nodes]
                ids = {node_key(n) for n in nodes}
                inside = {o for n in nodes for o in n.output} - {out}
                if any(o in idx.graph_outputs or any(node_key(c) not in ids for c in idx.consumers.get(o, []))
                       for o in inside):
                    return None  # an intermediate is read elsewhere: fusing would drop it
                return x, out, nodes
    return None


def _match_gelu_tail(idx: GraphIndex, tanh: onnx.NodeProto, x: str) -> tuple[str, list[onnx.NodeProto]] | None:
    """(1 + t) · 0.5 · x in the association orders the exporters emit: x·(0.5·(1+t)), (0.5·x)·(1+t), ..."""
    add_one = idx.single_consumer(tanh.output[0])
    if add_one is None or add_one.op_type != "Add" or not is_standard(add_one):
        return None
    one = other_input(add_one, tanh.output[0])
    if one is None or not _close(idx.scalar(one), 1.0):
        return None
    m1 = idx.single_consumer(add_one.output[0])
    if m1 is None or m1.op_type != "Mul" or not is_standard(m1):
        return None
    other = other_input(m1, add_one.output[0])
    if other is None:
        return None
    if _close(idx.scalar(other), 0.5):  # 0.5·(1+t), then · x
        m2 = idx.single_consumer(m1.output[0])
        if m2 is None or m2.op_type != "Mul" or not is_standard(m2) or other_input(m2, m1.output[0]) != x:
            return None
        return m2.output[0], [add_one, m1, m2]
    if other == x:  # x·(1+t), then · 0.5
        m2 = idx.single_consumer(m1.output[0])
        half = None if m2 is None else other_input(m2, m1.output[0])
        if m2 is None or m2.op_type != "Mul" or not is_standard(m2) or half is None \
                or not _close(idx.scalar(half), 0.5):
            return None
        return m2.output[0], [add_one, m1, m2]
    half_x = idx.producer.get(other)  # (0.5·x)·(1+t)
    if half_x is not None and half_x.op_type == "Mul" and is_standard(half_x) and x in half_x.input \
            and _close(idx.scalar(other_input(half_x, x) or ""), 0.5) and same_node(idx.single_consumer(other), m1):
        return m1.output[0], [add_one, half_x, m1]
    return None


def _fuse_patterns(idx: GraphIndex, anchor: str,
                   match: Callable[[GraphIndex, onnx.NodeProto], tuple[onnx.NodeProto, list[onnx.NodeProto]] | None],
                   ) -> int:
    """Replace every match of a pattern anchored at an `anchor`-type node with one com.microsoft node.
    `match` returns (the fused node, the pattern's nodes) or None; overlapping matches are skipped."""
    graph = idx.graph
    position = {node_key(n): i for i, n in enumerate(graph.node)}
    dead: set[tuple[str, ...]] = set()
    # each fused node takes the place of its pattern's last node, so the node list stays topologically sorted
    at: dict[tuple[str, ...], onnx.NodeProto] = {}
    for node in list(graph.node):
        if node.op_type != anchor or not is_standard(node) or node_key(node) in dead:
            continue
        m = match(idx, node)
        if m is None or any(node_key(n) in dead for n in m[1]):
            continue
        fused, nodes = m
        at[max((node_key(n) for n in nodes), key=position.__getitem__)] = fused
        dead.update(node_key(n) for n in nodes)
    rebuild(graph, dead, at)
    if at:
        _ensure_opset(idx.model, MS_DOMAIN, 1)
    return len(at)


def _fast_gelu(idx: GraphIndex, tanh: onnx.NodeProto) -> tuple[onnx.NodeProto, list[onnx.NodeProto]] | None:
    m = _match_tanh_gelu(idx, tanh)
    if m is None:
        return None
    x, out, nodes = m
    if idx.shapes.get(out) is not None and idx.shapes.get(out) != idx.shapes.get(x):
        return None
    return helper.make_node("FastGelu", [x], [out], name=f"{tanh.name or out}_FastGelu", domain=MS_DOMAIN), nodes


def fuse_tanh_gelu(idx: GraphIndex) -> int:
    """The decomposed tanh-GELU → com.microsoft.FastGelu(x) (float32 only)."""
    return _fuse_patterns(idx, "Tanh", _fast_gelu)


def _ensure_opset(model: onnx.ModelProto, domain: str, version: int) -> None:
    if not any(o.domain == domain for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(domain, version))


def _perm(node: onnx.NodeProto) -> list[int] | None:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def _heads_split(idx: GraphIndex, name: str, used: list[onnx.NodeProto]) -> tuple[str, int, int] | None:
    """`name` = Transpose(Reshape(lin, [B,S,N,H]), perm [0,2,1,3]) with lin [B,S,N·H]: (lin, N, H)."""
    tr = idx.producer.get(name)
    if tr is None or tr.op_type != "Transpose" or not is_standard(tr) or _perm(tr) != [0, 2, 1, 3]:
        return None
    rs = idx.producer.get(tr.input[0])
    if rs is None or rs.op_type != "Reshape" or not is_standard(rs):
        return None
    lin, split = idx.shapes.get(rs.input[0]), idx.shapes.get(rs.output[0])
    if lin is None or split is None or len(lin) != 3 or len(split) != 4 or split[:2] != lin[:2] \
            or split[2] * split[3] != lin[2]:
        return None
    used += [tr, rs]
    return rs.input[0], split[2], split[3]


def _unscale(idx: GraphIndex, name: str, used: list[onnx.NodeProto]) -> tuple[str, float]:
    """`name` = Mul(x, c) with a scalar constant c: (x, c); otherwise (name, 1.0)."""
    mul = idx.producer.get(name)
    if mul is not None and mul.op_type == "Mul" and is_standard(mul):
        for x in mul.input:
            c = other_input(mul, x)
            value = None if c is None else idx.scalar(c)
            if value is not None and idx.shapes.get(x) == idx.shapes.get(name):
                used.append(mul)
                return x, value
    return name, 1.0


def _key_transposed(idx: GraphIndex, name: str, used: list[onnx.NodeProto]) -> str | None:
    """`name` = K4ᵀ over the last two axes (one Transpose, or Reshape→Transpose→Reshape over merged B·N): K4."""
    node = idx.producer.get(name)
    if node is None or not is_standard(node):
        return None
    if node.op_type == "Transpose" and _perm(node) == [0, 1, 3, 2]:
        used.append(node)
        return node.input[0]
    if node.op_type != "Reshape":
        return None
    tr = idx.producer.get(node.input[0])
    if tr is None or tr.op_type != "Transpose" or not is_standard(tr) or _perm(tr) != [0, 2, 1]:
        return None
    rs = idx.producer.get(tr.input[0])
    if rs is None or rs.op_type != "Reshape" or not is_standard(rs):
        return None
    k4, merged, kt = idx.shapes.get(rs.input[0]), idx.shapes.get(rs.output[0]), idx.shapes.get(name)
    if k4 is None or merged is None or kt is None or len(k4) != 4 or \
            merged != (k4[0] * k4[1], k4[2], k4[3]) or kt != (k4[0], k4[1], k4[3], k4[2]):
        return None
    used += [node, tr, rs]
    return rs.input[0]


def _match_attention(idx: GraphIndex, softmax: onnx.NodeProto) -> tuple[onnx.NodeProto, list[onnx.NodeProto]] | None:
    """Softmax(Q·Kᵀ·scale)·V between head split/merge reshapes, no mask: (MultiHeadAttention node, replaced)."""
    axis = next((a.i for a in softmax.attribute if a.name == "axis"), -1)
    scores = idx.shapes.get(softmax.input[0])
    if scores is None or len(scores) != 4 or axis not in (-1, 3):
        return None
    used: list[onnx.NodeProto] = [softmax]
    qk = idx.producer.get(softmax.input[0])
    pv = idx.single_consumer(softmax.output[0])
    if qk is None or qk.op_type != "MatMul" or not is_standard(qk) or pv is None or pv.op_type != "MatMul" \
            or not is_standard(pv) or pv.input[0] != softmax.output[0]:
        return None
    used += [qk, pv]
    merge_t = idx.single_consumer(pv.output[0])
    merge_r = None if merge_t is None else idx.single_consumer(merge_t.output[0])
    if merge_t is None or merge_t.op_type != "Transpose" or _perm(merge_t) != [0, 2, 1, 3] \
            or merge_r is None or merge_r.op_type != "Reshape" or not is_standard(merge_r):
        return None
    used += [merge_t, merge_r]
    q4, c_q = _unscale(idx, qk.input[0], used)
    kt, c_k = _unscale(idx, qk.input[1], used)
    k4 = _key_transposed(idx, kt, used)
    q = _heads_split(idx, q4, used)
    k = None if k4 is None else _heads_split(idx, k4, used)
    v = _heads_split(idx, pv.input[1], used)
    if q is None or k is None or v is None or q[1:] != k[1:] or v[1] != q[1]:
        return None
    (q_lin, heads, _), (k_lin, _, _), (v_lin, _, v_head) = q, k, v
    out_shape, q_shape = idx.shapes.get(merge_r.output[0]), idx.shapes[q_lin]
    if out_shape != (q_shape[0], q_shape[1], heads * v_head) or idx.shapes[k_lin][:2] != idx.shapes[v_lin][:2]:
        return None
    keys = {node_key(n) for n in used}
    for n in used:  # every intermediate is read only inside the pattern
        for o in n.output:
            if o != merge_r.output[0] and (o in idx.graph_outputs
                                           or any(node_key(c) not in keys for c in idx.consumers.get(o, []))):
                return None
    mha = helper.make_node("MultiHeadAttention", [q_lin, k_lin, v_lin], [merge_r.output[0]],
                           name=f"{softmax.name or merge_r.output[0]}_MultiHeadAttention", domain=MS_DOMAIN,
                           num_heads=heads, scale=float(np.float32(c_q) * np.float32(c_k)))
    return mha, used


def fuse_attention(idx: GraphIndex) -> int:
    """Unmasked scaled-dot-product attention with head split/merge → com.microsoft.MultiHeadAttention, whose CPU
    kernel runs a tiled (flash) attention without materialising the [B,N,S,L] scores (float32 only)."""
    return _fuse_patterns(idx, "Softmax", _match_attention)
