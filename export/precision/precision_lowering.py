"""Lower a float32 ONNX graph to fp16/bf16 where it is safe: decide per node, then rewrite with explicit Casts.

A strongly typed TensorRT build (the only kind TensorRT 11 has; weak typing is deprecated since 10.12) runs
each layer in the precision its ONNX tensors say, so the precision decision has to be in the graph. The
rules, in order (the first that matches decides; `NodeDecision.reason` records it):

1. nodes with no float32 tensor, and type-producing ops (Cast, Shape, Constant, ...) are left alone;
2. numerically sensitive ops stay fp32: norm statistics (Pow, ReduceMean, Sqrt, Reciprocal), Exp/Log,
   Sin/Cos/Range/CumSum (rotary and sinusoidal time embeddings lose their phase in 10 mantissa bits), every
   node computing a Sin/Cos argument (the time embedding's exact range reduction needs 24 bits), and the
   fused Softmax / LayerNormalization / *Normalization ops (TensorRT runs them in their input precision);
3. ops outside the default ONNX domain, nodes the user names (`keep` regexes on name or torch scope), and
   nodes of the module sections the accuracy fallback chose (`keep_sections`, see `node_section`);
4. a node any of whose float activations exceeded `data_max` in calibration stays fp32 (sums of squares
   and residual streams grow past fp16's 65504 long before the values themselves do);
5. a node reading a constant that would overflow, or (for small constants like an epsilon) underflow to
   0, in the low type stays fp32;
6. everything else — the matmuls, attention, MLPs — runs in the low type.

The rewrite keeps every graph input and output float32 (the artifact contract is unchanged), converts
initializers read only by low nodes in place (half the bytes), and inserts one Cast per (tensor, target
type) where precisions meet. `emulate=True` writes the same plan as a float32 graph that rounds every
low-precision tensor through the low type and back: what the low graph stores, computed the way TensorRT
does (fp32 accumulation) — the check for bf16, which onnxruntime's CPU provider cannot execute.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.graphs.node_scope import node_scope

LOW_TYPES = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
_NUMPY_LOW = {"fp16": np.float16, "bf16": ml_dtypes.bfloat16}
DEFAULT_DATA_MAX = 512.0  # NVIDIA ModelOpt AutoCast's default activation bound for fp16 (docs, 2025)
SENSITIVE_OPS = frozenset({"Pow", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceProd",
                           "ReduceLogSumExp", "Sqrt", "Reciprocal", "Exp", "Log", "Sin", "Cos", "Range", "CumSum",
                           *("Softmax", "LogSoftmax", "LayerNormalization", "GroupNormalization",
                             "InstanceNormalization", "RMSNormalization", "BatchNormalization")})
# The fused ops in the second row run in their *input* precision in a strongly typed TensorRT network (no
# fp32 statistics inside), while the CPU emulation would compute them in fp32 and round only the output; kept
# fp32, the gate and the engine agree (TensorRT developer guide, "Strong Typing": layers compute in the types
# of their inputs).
# Ops whose output type is fixed by an attribute or is not a float: never re-typed, never need a Cast in.
TYPE_PRODUCING_OPS = frozenset({"Cast", "Shape", "Size", "Constant", "ConstantOfShape", "EyeLike",
                                "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike"})
# (op, input index) whose type the ONNX spec fixes to float32 whatever the data type.
FIXED_FP32_INPUTS = frozenset({("Resize", 1), ("Resize", 2), ("Upsample", 1)})
CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})
_SECTION_DEPTH = 6  # dotted components kept: 'model.vlm_with_expert.vlm.model.vision_model.embeddings'
UNSCOPED = "(no module)"  # how the section '' is shown
_SMALL_CONSTANT = 16  # elements; constants this small are checked for underflow too (epsilons, scales)


class LoweringError(ValueError):
    """The graph cannot be lowered (control flow, unknown precision); the message says what to do."""


@dataclass(frozen=True)
class NodeDecision:
    """Where one node runs: low (fp16/bf16), fp32, or untouched (no float compute), and why."""

    name: str
    op_type: str
    precision: str  # "low" | "fp32" | "untouched"
    rule: str  # no-float | type-op | sensitive | domain | user | fallback | range | constant | low
    reason: str


def node_section(node: onnx.NodeProto) -> str:
    """A node's module section: its torch scope cut before `.layers.`, to at most six components, without a
    trailing index — the vision encoder, the text model, the expert, one projection head ... ('' for
    exporter-internal nodes that came from no module: index arithmetic, RoPE tables, concatenations)."""
    scope = node_scope(node)
    if "." not in scope:
        return ""
    parts = scope.split(".layers.")[0].split(".")[:_SECTION_DEPTH]
    while len(parts) > 1 and parts[-1].isdigit():
        parts.pop()
    return ".".join(parts)


def sections_with(model: onnx.ModelProto, node_names: Iterable[str]) -> set[str]:
    """The sections the named nodes belong to ('' stands for the nodes of no module, a section too)."""
    names = set(node_names)
    return {node_section(n) for n in model.graph.node if n.name in names}


def _low_range(precision: str) -> tuple[float, float]:
    info = ml_dtypes.finfo(_NUMPY_LOW[precision])
    return float(info.max), float(info.smallest_subnormal)


def _constant_issue(values: np.ndarray, precision: str) -> str | None:
    """Why this float32 constant cannot be stored in the low type (None when it can)."""
    if values.size == 0:
        return None
    biggest, tiniest = _low_range(precision)
    finite = values[np.isfinite(values)]
    if finite.size and float(np.max(np.abs(finite))) > biggest:
        return f"constant {float(np.max(np.abs(finite))):.3g} overflows {precision}"
    if values.size <= _SMALL_CONSTANT:
        small = np.abs(finite[finite != 0])
        if small.size and float(np.min(small)) < tiniest:
            return f"constant {float(np.min(small)):.3g} underflows to 0 in {precision}"
    return None


def phase_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes a Sin/Cos argument is computed from (transitively): a phase needs fp32."""
    producer = {o: n for n in model.graph.node for o in n.output}
    pending = [t for n in model.graph.node if n.op_type in ("Sin", "Cos") for t in n.input]
    seen: set[str] = set()
    while pending:
        node = producer.get(pending.pop())
        if node is not None and node.name not in seen:
            seen.add(node.name)
            pending.extend(node.input)
    return seen


def plan_nodes(model: onnx.ModelProto, types: Mapping[str, int], absmax: Mapping[str, float], precision: str,
               data_max: float = DEFAULT_DATA_MAX, keep: Sequence[str] = (),
               keep_sections: Collection[str] = ()) -> list[NodeDecision]:
    """One decision per node, in graph order (rules in the module docstring)."""
    if precision not in LOW_TYPES:
        raise LoweringError(f"precision {precision!r}: choose one of {', '.join(LOW_TYPES)}")
    inits = {i.name: i for i in model.graph.initializer}
    constants = {n.output[0]: next(a.t for a in n.attribute if a.name == "value")
                 for n in model.graph.node if n.op_type == "Constant" and any(a.name == "value" for a in n.attribute)}
    patterns = [re.compile(p) for p in keep]
    phases = phase_nodes(model)
    decisions = []
    for node in model.graph.node:
        if node.op_type in CONTROL_FLOW_OPS:
            raise LoweringError(f"node {node.name!r} is {node.op_type}: graphs with control flow are not lowered")
        tensors = [t for t in (*node.input, *node.output) if t]
        floats = [t for t in tensors if types.get(t) == TensorProto.FLOAT]

        def decide(where: str, rule: str, why: str, node: onnx.NodeProto = node) -> None:
            decisions.append(NodeDecision(node.name, node.op_type, where, rule, why))

        if not floats:
            decide("untouched", "no-float", "no float32 tensor")
        elif node.op_type in TYPE_PRODUCING_OPS:
            decide("untouched", "type-op", "output type fixed by the op")
        elif node.op_type in SENSITIVE_OPS:
            decide("fp32", "sensitive", f"sensitive op {node.op_type}")
        elif node.name in phases:
            decide("fp32", "sensitive", "computes a Sin/Cos phase")
        elif node.domain not in ("", "ai.onnx"):
            decide("fp32", "domain", f"custom domain {node.domain}")
        elif any(p.search(node.name) or p.search(node_scope(node)) for p in patterns):
            decide("fp32", "user", "kept by --keep-fp32")
        elif keep_sections and node_section(node) in keep_sections:
            decide("fp32", "fallback", f"section {node_section(node) or UNSCOPED!r} kept by the accuracy fallback")
        else:
            over = max((absmax.get(t, 0.0) for t in floats), default=0.0)
            issues = [_constant_issue(numpy_helper.to_array(src), precision) for t in node.input
                      if (src := inits.get(t) or constants.get(t)) is not None and src.data_type == TensorProto.FLOAT]
            issue = next((i for i in issues if i), None)
            if over > data_max:
                decide("fp32", "range", f"activation {over:.3g} > data_max {data_max:g}")
            elif issue:
                decide("fp32", "constant", issue)
            else:
                decide("low", "low", precision)
    return decisions


def lower_graph(model: onnx.ModelProto, decisions: Sequence[NodeDecision], types: Mapping[str, int],
                precision: str, emulate: bool = False) -> dict[str, int]:
    """Rewrite `model` in place by the plan; returns counts (low/fp32 nodes, casts, converted initializers).

    Weights must be loaded (not external references) when initializers are to be converted."""
    low = LOW_TYPES[precision]
    graph = model.graph
    by_name = {d.name: d for d in decisions}
    if len(by_name) != len(graph.node) or any(n.name not in by_name for n in graph.node):
        raise LoweringError("decisions do not match the graph's nodes (every node needs a unique name)")
    is_float = {t for t, ty in types.items() if ty == TensorProto.FLOAT}
    inits = {i.name: i for i in graph.initializer}
    graph_outputs = {o.name for o in graph.output}

    # Type of each float tensor after lowering: produced by a low node → low; anything else → fp32.
    low_tensors = {o for n in graph.node if by_name[n.name].precision == "low" for o in n.output if o in is_float}

    def wanted(node: onnx.NodeProto, index: int) -> int | None:
        """The type input `index` of `node` must have (None: any type is fine)."""
        where = by_name[node.name].precision
        if where == "untouched":
            return None
        if where == "fp32" or (node.op_type, index) in FIXED_FP32_INPUTS:
            return TensorProto.FLOAT
        return low

    # Initializers read only by low nodes are converted in place (emulation: rounded, still float32).
    readers: dict[str, set[int | None]] = {}
    for node in graph.node:
        for i, t in enumerate(node.input):
            if t in inits and t in is_float:
                readers.setdefault(t, set()).add(wanted(node, i))
    converted = 0
    for name, wants in readers.items():
        if wants == {low} and name not in graph_outputs:
            arr = numpy_helper.to_array(inits[name]).astype(_NUMPY_LOW[precision])
            new = numpy_helper.from_array(arr.astype(np.float32) if emulate else arr, name)
            inits[name].CopyFrom(new)
            low_tensors.add(name)
            converted += 1

    # Graph outputs stay float32: a low producer writes `<out>::<precision>`, and a Cast restores the name.
    renamed = {o.name: f"{o.name}::{precision}" for o in graph.output if o.name in low_tensors}  # graph order
    for node in graph.node:
        node.output[:] = [renamed.get(o, o) for o in node.output]
        node.input[:] = [renamed.get(t, t) for t in node.input]
    low_tensors = {renamed.get(t, t) for t in low_tensors}
    is_float |= set(renamed.values())

    casts: dict[tuple[str, int], str] = {}
    new_nodes: list[onnx.NodeProto] = []

    def round_trip(src: str, dst: str) -> None:
        """Emulation: dst = src rounded through the low type, still float32."""
        new_nodes.append(helper.make_node("Cast", [src], [f"{dst}::rounded"], to=low, name=f"{dst}::round"))
        new_nodes.append(helper.make_node("Cast", [f"{dst}::rounded"], [dst], to=TensorProto.FLOAT,
                                          name=f"{dst}::unround"))

    def cast(tensor: str, to: int) -> str:
        key = (tensor, to)
        if key not in casts:
            if emulate and to != low:  # an emulated low tensor already is float32
                casts[key] = tensor
                return tensor
            out = f"{tensor}::{precision if to == low else 'fp32'}"
            casts[key] = out
            if emulate:
                round_trip(tensor, out)
            else:
                new_nodes.append(helper.make_node("Cast", [tensor], [out], to=to, name=f"{out}::cast"))
        return casts[key]

    for node in list(graph.node):
        for i, t in enumerate(node.input):
            if t not in is_float:
                continue
            need = wanted(node, i)
            have = low if t in low_tensors else TensorProto.FLOAT
            if need is not None and need != have:
                node.input[i] = cast(t, need)
        new_nodes.append(node)
        if emulate and by_name[node.name].precision == "low":
            # the low node's outputs are stored in the low type: round each one right after it
            for j, o in enumerate(node.output):
                if o in low_tensors:
                    node.output[j] = f"{o}::unrounded"
                    round_trip(node.output[j], o)
    for orig, out in renamed.items():
        new_nodes.append(helper.make_node("Cast", [out], [orig], to=TensorProto.FLOAT, name=f"{orig}::to_fp32"))
    del graph.node[:]
    graph.node.extend(new_nodes)

    if not emulate:  # value_info follows the new types (intermediates only; I/O stays float32)
        for vi in graph.value_info:
            if vi.name in low_tensors and vi.type.tensor_type.elem_type == TensorProto.FLOAT:
                vi.type.tensor_type.elem_type = low
    counts = Counter(d.precision for d in decisions)
    return {"low_nodes": counts["low"], "fp32_nodes": counts["fp32"], "untouched_nodes": counts["untouched"],
            "casts": sum(1 for k, v in casts.items() if v != k[0]) + len(renamed),
            "converted_initializers": converted}
