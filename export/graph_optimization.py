"""Semantics-preserving rewrites of exported ONNX graphs, for onnxruntime on the CPU.

    python -m export.graph_optimization GRAPH.onnx [--out OUT.onnx] [--rewrites remove_zero_adds,fuse_tanh_gelu]

One job: rewrite a graph into an equivalent one that onnxruntime's CPU provider runs faster, where
onnxruntime's own graph optimizer (`ORT_ENABLE_ALL`) does not. Each rewrite matches a fixed pattern, checks
every constant and shape it relies on, and otherwise leaves the graph alone; it returns how often it fired.
Standard ONNX in, standard ONNX out, unless noted (`STANDARD_REWRITES` keeps a graph TensorRT-parsable).

- `remove_zero_adds` (exact): `Add(x, Z) → x` where `Z` is a constant that is all zeros, has rank ≥ 2 and
  whose broadcast leaves x's static shape unchanged. `Z` may be an initializer, a `Constant`, or a small
  constant subgraph evaluated here (onnx's reference evaluator). Target: the vision tower's attention mask,
  an all-zero [1,1,1024,1024] tensor computed from constants and added to the attention scores
  ([1,12,1024,1024]) in every layer of both camera passes. onnxruntime's `NoopElimination` only removes
  scalar zeros. Rank-0/1 zeros (bias vectors) are deliberately left alone: in a randomly initialised
  checkpoint the biases are all zero, and dropping them would make a random-weight benchmark faster than a
  trained model (onnxruntime folds bias adds into the GEMM anyway). x + 0 == x (up to the sign of a zero).
- `scatter_rows_to_concat` (exact): the exporter writes `x[..., :d] = a; x[..., d:] = b` (rotary
  embeddings, q and k of every text/expert layer) as a zero tensor plus two `ScatterND`s between
  transposes; when the chain's constant row blocks tile the data exactly, it becomes `Concat(a, b)`, and
  onnxruntime's transpose optimizer then cancels the transposes around it.
- `rsqrt_mul_to_div` (one rounding): `Mul(x, Reciprocal(Sqrt(v))) → Div(x, Sqrt(v))`, which turns the
  exporter's RMSNorm into the form onnxruntime fuses into one `SimplifiedLayerNormalization` kernel.
- `uniform_where_fill` (exact): `Where(c, x, F)` with a constant, all-equal F (masked_fill's fill value,
  materialised by the exporter at the scores' full size in every text/expert attention layer) takes a
  scalar instead; onnxruntime's Where runs about twice as fast with a broadcast scalar.
- `fuse_tanh_gelu` (onnxruntime only: `com.microsoft.FastGelu`): the decomposed
  `x · 0.5 · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))` (8 elementwise passes over [1,1024,3072] per vision
  layer) becomes one `FastGelu` computing the same formula (|Δ| ~1e-6 relative; onnxruntime's own GELU
  fusions do not match the exporter's operand order).
- `fuse_attention` (onnxruntime only: `com.microsoft.MultiHeadAttention`): unmasked softmax(Q·Kᵀ·s)·V
  between the head split/merge reshapes (the vision tower, once its zero mask is gone) becomes one op, whose
  CPU kernel runs a tiled (flash) attention (|Δ| ~1e-6).
- `eliminate_dead_nodes` (always, last): nodes whose outputs nothing reads, initializers nothing reads.

`optimize_model` works on a ModelProto loaded with or without its external data (constants it must read
are loaded from `base_dir` on demand); `optimize_file` rewrites one .onnx file in place and leaves its
external data file untouched (the only initializers added are scalars, stored inline; dropped ones stay
in the data file as unused bytes).
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS_DOMAIN = "com.microsoft"
STANDARD_REWRITES = ("remove_zero_adds", "scatter_rows_to_concat", "rsqrt_mul_to_div", "uniform_where_fill")
ORT_REWRITES = (*STANDARD_REWRITES, "fuse_tanh_gelu", "fuse_attention")
# Constants larger than this (elements) are neither loaded nor evaluated when looking for all-zero operands.
MAX_CONST_ELEMENTS = 1 << 24
# Ops the constant evaluator may run: shape/broadcast/elementwise ops whose semantics are the same in every
# opset the exporter emits (>= 13).
_FOLDABLE = frozenset({"Add", "Sub", "Mul", "Div", "Neg", "Where", "Cast", "Expand", "Unsqueeze", "Squeeze",
                       "Reshape", "Not", "And", "Or", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
                       "ConstantOfShape", "Constant", "Concat", "Identity", "Transpose", "Max", "Min", "Clip"})
_GELU_A, _GELU_K = 0.044715, math.sqrt(2.0 / math.pi)


def _key(node: onnx.NodeProto) -> tuple[str, ...]:
    """A node's identity: its output names (unique in a valid graph; protobuf wrappers are not stable objects)."""
    return tuple(node.output)


def _same(a: onnx.NodeProto | None, b: onnx.NodeProto) -> bool:
    return a is not None and _key(a) == _key(b)


def _is_std(node: onnx.NodeProto) -> bool:
    return node.domain in ("", "ai.onnx")


class GraphIndex:
    """Producers, consumers, initializers and inferred static shapes of one graph (rebuilt after each rewrite)."""

    def __init__(self, model: onnx.ModelProto, base_dir: str | None, shapes: dict[str, tuple[int, ...]]):
        self.model, self.graph, self.base_dir, self.shapes = model, model.graph, base_dir, shapes
        self.producer: dict[str, onnx.NodeProto] = {o: n for n in self.graph.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.graph.node:
            for name in n.input:
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
        if node is None or not _is_std(node) or node.op_type not in _FOLDABLE:
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


def _replace_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name == old:
                n.input[i] = new


def _rebuild(graph: onnx.GraphProto, dead: set[tuple[str, ...]],
             at: dict[tuple[str, ...], onnx.NodeProto] | None = None) -> None:
    """Drop the nodes whose key is in `dead`; a node in `at` takes the place of the dead node keyed by it."""
    at = at or {}
    keep = []
    for n in graph.node:
        if _key(n) in dead:
            if _key(n) in at:
                keep.append(at[_key(n)])
            continue
        keep.append(n)
    del graph.node[:]
    graph.node.extend(keep)


# ------------------------------------------------------------------------------------------- rewrites
def remove_zero_adds(idx: GraphIndex) -> int:
    """Add(x, Z) → x for an all-zero constant Z of rank ≥ 2 whose broadcast keeps x's shape."""
    graph, fired = idx.graph, 0
    dead: set[tuple[str, ...]] = set()
    for node in list(graph.node):
        if node.op_type != "Add" or not _is_std(node) or len(node.input) != 2 or node.output[0] in idx.graph_outputs:
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
            _replace_uses(graph, node.output[0], xname)
            dead.add(_key(node))
            fired += 1
            break
    _rebuild(graph, dead)
    return fired


def _other_input(node: onnx.NodeProto, name: str) -> str | None:
    if len(node.input) != 2 or name not in node.input:
        return None
    return node.input[1] if node.input[0] == name else node.input[0]


def _close(v: float | None, want: float) -> bool:
    return v is not None and math.isclose(v, want, rel_tol=1e-5, abs_tol=0.0)


def _match_tanh_gelu(idx: GraphIndex, tanh: onnx.NodeProto) -> tuple[str, str, list[onnx.NodeProto]] | None:
    """For a Tanh inside x·0.5·(1 + tanh(k·(x + a·x³))): (x, output, the pattern's nodes) or None."""
    def prod(name: str, op: str) -> onnx.NodeProto | None:
        n = idx.producer.get(name)
        return n if n is not None and n.op_type == op and _is_std(n) else None

    inner = prod(tanh.input[0], "Mul")  # k · (x + a·x³)
    if inner is None:
        return None
    for s in inner.input:
        k_name = _other_input(inner, s)
        add1 = prod(s, "Add")
        if add1 is None or k_name is None or not _close(idx.scalar(k_name), _GELU_K):
            continue
        for cube_term in add1.input:
            x = _other_input(add1, cube_term)
            mul_a = prod(cube_term, "Mul")  # a · x³
            if x is None or mul_a is None:
                continue
            for p in mul_a.input:
                a_name = _other_input(mul_a, p)
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
                ids = {_key(n) for n in nodes}
                inside = {o for n in nodes for o in n.output} - {out}
                if any(o in idx.graph_outputs or any(_key(c) not in ids for c in idx.consumers.get(o, []))
                       for o in inside):
                    return None  # an intermediate is read elsewhere: fusing would drop it
                return x, out, nodes
    return None


def _match_gelu_tail(idx: GraphIndex, tanh: onnx.NodeProto, x: str) -> tuple[str, list[onnx.NodeProto]] | None:
    """(1 + t) · 0.5 · x in the association orders the exporters emit: x·(0.5·(1+t)), (0.5·x)·(1+t), ..."""
    add_one = idx.single_consumer(tanh.output[0])
    if add_one is None or add_one.op_type != "Add" or not _is_std(add_one):
        return None
    one = _other_input(add_one, tanh.output[0])
    if one is None or not _close(idx.scalar(one), 1.0):
        return None
    m1 = idx.single_consumer(add_one.output[0])
    if m1 is None or m1.op_type != "Mul" or not _is_std(m1):
        return None
    other = _other_input(m1, add_one.output[0])
    if other is None:
        return None
    if _close(idx.scalar(other), 0.5):  # 0.5·(1+t), then · x
        m2 = idx.single_consumer(m1.output[0])
        if m2 is None or m2.op_type != "Mul" or not _is_std(m2) or _other_input(m2, m1.output[0]) != x:
            return None
        return m2.output[0], [add_one, m1, m2]
    if other == x:  # x·(1+t), then · 0.5
        m2 = idx.single_consumer(m1.output[0])
        half = None if m2 is None else _other_input(m2, m1.output[0])
        if m2 is None or m2.op_type != "Mul" or not _is_std(m2) or half is None or not _close(idx.scalar(half), 0.5):
            return None
        return m2.output[0], [add_one, m1, m2]
    half_x = idx.producer.get(other)  # (0.5·x)·(1+t)
    if half_x is not None and half_x.op_type == "Mul" and _is_std(half_x) and x in half_x.input \
            and _close(idx.scalar(_other_input(half_x, x) or ""), 0.5) and _same(idx.single_consumer(other), m1):
        return m1.output[0], [add_one, half_x, m1]
    return None


def _fuse_patterns(idx: GraphIndex, anchor: str,
                   match: Callable[[GraphIndex, onnx.NodeProto], tuple[onnx.NodeProto, list[onnx.NodeProto]] | None],
                   ) -> int:
    """Replace every match of a pattern anchored at an `anchor`-type node with one com.microsoft node.
    `match` returns (the fused node, the pattern's nodes) or None; overlapping matches are skipped."""
    graph = idx.graph
    position = {_key(n): i for i, n in enumerate(graph.node)}
    dead: set[tuple[str, ...]] = set()
    # each fused node takes the place of its pattern's last node, so the node list stays topologically sorted
    at: dict[tuple[str, ...], onnx.NodeProto] = {}
    for node in list(graph.node):
        if node.op_type != anchor or not _is_std(node) or _key(node) in dead:
            continue
        m = match(idx, node)
        if m is None or any(_key(n) in dead for n in m[1]):
            continue
        fused, nodes = m
        at[max((_key(n) for n in nodes), key=position.__getitem__)] = fused
        dead.update(_key(n) for n in nodes)
    _rebuild(graph, dead, at)
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


def _row_range(idx: GraphIndex, node: onnx.NodeProto) -> tuple[int, int] | None:
    """[start, stop) when a ScatterND writes whole rows of axis 0 at constant, contiguous ascending indices."""
    if node.op_type != "ScatterND" or not _is_std(node) or len(node.input) != 3:
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
    position = {_key(n): i for i, n in enumerate(graph.node)}
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
                    or not _same(idx.single_consumer(prev.output[0]), chain[-1]):
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
        at[max((_key(n) for n in chain), key=position.__getitem__)] = fused
        dead.update(_key(n) for n in chain)
    _rebuild(graph, dead, at)
    return len(at)


def _perm(node: onnx.NodeProto) -> list[int] | None:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def _heads_split(idx: GraphIndex, name: str, used: list[onnx.NodeProto]) -> tuple[str, int, int] | None:
    """`name` = Transpose(Reshape(lin, [B,S,N,H]), perm [0,2,1,3]) with lin [B,S,N·H]: (lin, N, H)."""
    tr = idx.producer.get(name)
    if tr is None or tr.op_type != "Transpose" or not _is_std(tr) or _perm(tr) != [0, 2, 1, 3]:
        return None
    rs = idx.producer.get(tr.input[0])
    if rs is None or rs.op_type != "Reshape" or not _is_std(rs):
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
    if mul is not None and mul.op_type == "Mul" and _is_std(mul):
        for x in mul.input:
            c = _other_input(mul, x)
            value = None if c is None else idx.scalar(c)
            if value is not None and idx.shapes.get(x) == idx.shapes.get(name):
                used.append(mul)
                return x, value
    return name, 1.0


def _key_transposed(idx: GraphIndex, name: str, used: list[onnx.NodeProto]) -> str | None:
    """`name` = K4ᵀ over the last two axes (one Transpose, or Reshape→Transpose→Reshape over merged B·N): K4."""
    node = idx.producer.get(name)
    if node is None or not _is_std(node):
        return None
    if node.op_type == "Transpose" and _perm(node) == [0, 1, 3, 2]:
        used.append(node)
        return node.input[0]
    if node.op_type != "Reshape":
        return None
    tr = idx.producer.get(node.input[0])
    if tr is None or tr.op_type != "Transpose" or not _is_std(tr) or _perm(tr) != [0, 2, 1]:
        return None
    rs = idx.producer.get(tr.input[0])
    if rs is None or rs.op_type != "Reshape" or not _is_std(rs):
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
    if qk is None or qk.op_type != "MatMul" or not _is_std(qk) or pv is None or pv.op_type != "MatMul" \
            or not _is_std(pv) or pv.input[0] != softmax.output[0]:
        return None
    used += [qk, pv]
    merge_t = idx.single_consumer(pv.output[0])
    merge_r = None if merge_t is None else idx.single_consumer(merge_t.output[0])
    if merge_t is None or merge_t.op_type != "Transpose" or _perm(merge_t) != [0, 2, 1, 3] \
            or merge_r is None or merge_r.op_type != "Reshape" or not _is_std(merge_r):
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
    keys = {_key(n) for n in used}
    for n in used:  # every intermediate is read only inside the pattern
        for o in n.output:
            if o != merge_r.output[0] and (o in idx.graph_outputs
                                           or any(_key(c) not in keys for c in idx.consumers.get(o, []))):
                return None
    mha = helper.make_node("MultiHeadAttention", [q_lin, k_lin, v_lin], [merge_r.output[0]],
                           name=f"{softmax.name or merge_r.output[0]}_MultiHeadAttention", domain=MS_DOMAIN,
                           num_heads=heads, scale=float(np.float32(c_q) * np.float32(c_k)))
    return mha, used


def fuse_attention(idx: GraphIndex) -> int:
    """Unmasked scaled-dot-product attention with head split/merge → com.microsoft.MultiHeadAttention, whose CPU
    kernel runs a tiled (flash) attention without materialising the [B,N,S,L] scores (float32 only)."""
    return _fuse_patterns(idx, "Softmax", _match_attention)


def rsqrt_mul_to_div(idx: GraphIndex) -> int:
    """Mul(x, Reciprocal(Sqrt(v))) → Div(x, Sqrt(v)): the exporter's RMSNorm, x · rsqrt(mean(x²) + ε) · w, in
    the form onnxruntime's SimplifiedLayerNormFusion recognises (Pow → ReduceMean → Add → Sqrt → Div → Mul),
    so each RMSNorm of the text model and the experts runs as one kernel instead of seven (x / s and
    x · (1/s) differ by at most one rounding)."""
    graph = idx.graph
    dead: set[tuple[str, ...]] = set()
    at: dict[tuple[str, ...], onnx.NodeProto] = {}
    for mul in list(graph.node):
        if mul.op_type != "Mul" or not _is_std(mul) or len(mul.input) != 2:
            continue
        for r_name in mul.input:
            rec = idx.producer.get(r_name)
            x = _other_input(mul, r_name)
            if rec is None or x is None or rec.op_type != "Reciprocal" or not _is_std(rec) \
                    or not _same(idx.single_consumer(r_name), mul):
                continue
            sqrt = idx.producer.get(rec.input[0])
            if sqrt is None or sqrt.op_type != "Sqrt" or not _is_std(sqrt) or idx.shapes.get(x) is None \
                    or idx.shapes.get(mul.output[0]) != idx.shapes.get(x):
                continue
            at[_key(mul)] = helper.make_node("Div", [x, rec.input[0]], [mul.output[0]],
                                             name=f"{mul.name or mul.output[0]}_Div")
            dead.update({_key(mul), _key(rec)})
            break
    _rebuild(graph, dead, at)
    return len(at)


def uniform_where_fill(idx: GraphIndex) -> int:
    """Where(c, x, F) with a constant F whose elements are all equal → Where(c, x, f) with f a scalar (exact).
    The exporter materialises `masked_fill`'s fill value as a full-size constant ([1,15,50,229] in every
    expert attention layer); onnxruntime's Where is ~2x faster with a broadcast scalar than with a third
    full-size operand."""
    graph, fired = idx.graph, 0
    scalars: dict[tuple[str, bytes], str] = {}
    for node in graph.node:
        if node.op_type != "Where" or not _is_std(node) or len(node.input) != 3:
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


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    names: set[str] = set()
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for n in g.node:
                names.update(n.input)
                names.update(_subgraph_inputs(n))
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
            needed.update(_subgraph_inputs(node))
    removed = len(graph.node) - len(keep)
    if removed:
        del graph.node[:]
        graph.node.extend(reversed(keep))
    unused = [i for i in graph.initializer if i.name not in needed]
    for i in unused:
        graph.initializer.remove(i)
    return removed


def _ensure_opset(model: onnx.ModelProto, domain: str, version: int) -> None:
    if not any(o.domain == domain for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(domain, version))


REWRITES: dict[str, Callable[[GraphIndex], int]] = {  # in the order they are best applied
    "remove_zero_adds": remove_zero_adds,  # before fuse_attention: a zero mask between Q·Kᵀ and Softmax blocks it
    "scatter_rows_to_concat": scatter_rows_to_concat,
    "rsqrt_mul_to_div": rsqrt_mul_to_div,
    "uniform_where_fill": uniform_where_fill,
    "fuse_tanh_gelu": fuse_tanh_gelu,
    "fuse_attention": fuse_attention,
}


# ------------------------------------------------------------------------------------------ entry points
def optimize_model(model: onnx.ModelProto, *, base_dir: str | Path | None = None,
                   rewrites: Sequence[str] = ORT_REWRITES) -> dict[str, int]:
    """Apply `rewrites` in order (in place), then remove dead nodes; returns {rewrite: times fired}."""
    unknown = [r for r in rewrites if r not in REWRITES]
    if unknown:
        raise ValueError(f"unknown rewrite(s) {unknown}; choose from {sorted(REWRITES)}")
    shapes = static_shapes(model)  # rewrites keep every surviving tensor's shape, so one inference serves all
    base = None if base_dir is None else str(base_dir)
    report: dict[str, int] = {}
    for name in rewrites:
        report[name] = REWRITES[name](GraphIndex(model, base, shapes))
    report["dead_nodes_removed"] = eliminate_dead_nodes(GraphIndex(model, base, shapes))
    return report


def optimize_file(path: str | Path, out: str | Path | None = None,
                  rewrites: Sequence[str] = ORT_REWRITES) -> dict[str, int]:
    """Rewrite one .onnx file (in place unless `out`, which must be in the same folder when the graph has
    external data); the external data file is read, never rewritten."""
    path = Path(path)
    out = path if out is None else Path(out)
    if out.resolve().parent != path.resolve().parent:
        raise ValueError(f"{out}: write the optimized graph next to {path.name} (its external data is shared)")
    model = onnx.load(str(path), load_external_data=False)
    report = optimize_model(model, base_dir=path.parent, rewrites=rewrites)
    onnx.save_model(model, str(out))
    return report


def op_counts(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.node)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.graph_optimization", description=__doc__.split("\n")[0])
    p.add_argument("graph", type=Path)
    p.add_argument("--out", type=Path, default=None, help="default: rewrite GRAPH in place")
    p.add_argument("--rewrites", default=",".join(ORT_REWRITES), help=f"comma list of {', '.join(REWRITES)}")
    args = p.parse_args(argv)
    if not args.graph.is_file():
        print(f"graph_optimization: {args.graph} is not a file", file=sys.stderr)
        return 2
    try:
        report = optimize_file(args.graph, args.out, [r.strip() for r in args.rewrites.split(",") if r.strip()])
    except ValueError as exc:
        print(f"graph_optimization: {exc}", file=sys.stderr)
        return 2
    print(f"[graph_optimization] {args.out or args.graph}: " + ", ".join(f"{k} {v}" for k, v in report.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
