"""Precision choice → TensorRT network/builder flags, as plain names (no TensorRT import, so testable anywhere).

Strongly typed (default): precision comes from the ONNX tensor types, so no precision builder flags are set
(TensorRT rejects them on strongly typed networks); an fp16/bf16 engine needs an ONNX exported in that
dtype. Weakly typed (`--weakly-typed`, TensorRT < 11 only): FP16/BF16 builder flags let TensorRT pick
per layer, and OBEY_PRECISION_CONSTRAINTS pins norms and softmax to fp32 (fp16 attention/norms overflow).
TF32 (on by default in TensorRT) is cleared for every build: what is fp32 stays IEEE fp32.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

PRECISIONS = ("fp32", "fp16", "bf16")
BF16_MIN_COMPUTE_CAPABILITY = (8, 0)  # Ampere; Orin is 8.7
FP16_MIN_COMPUTE_CAPABILITY = (5, 3)
WEAKLY_TYPED_LAST_MAJOR = 10  # TensorRT 11 removed weakly typed networks

# Layer types that must stay fp32 in a weakly typed reduced-precision build. A decomposed RMSNorm (Pow →
# ReduceMean → Add → Sqrt → Reciprocal → Mul) has no NORMALIZATION layer: its layers are found through the
# ONNX graph (`fp32_nodes`), by op type and by the torch module scope or module path in the node name.
FP32_LAYER_TYPES = ("SOFTMAX", "NORMALIZATION")
_FP32_MODULE = re.compile(r"norm|softmax", re.IGNORECASE)
# onnx-tensorrt names a node's layers after the node, uniquified as `<name>_<counter>` (generateUniqueName).
_UNIQUIFIED = re.compile(r"(.+)_\d+")

# TensorRT DataType names that mark a tensor as the given reduced precision.
_PRECISION_DTYPE = {"fp16": "HALF", "bf16": "BF16"}


class PrecisionError(ValueError):
    """The requested precision cannot be built here (GPU too old, TensorRT too new, ONNX in the wrong dtype)."""


@dataclass(frozen=True)
class PrecisionPlan:
    """Everything precision-related the builder sets, by TensorRT enum member name."""

    precision: str
    strongly_typed: bool
    network_flags: tuple[str, ...]  # NetworkDefinitionCreationFlag members
    builder_flags: tuple[str, ...]  # BuilderFlag members to set
    cleared_builder_flags: tuple[str, ...]  # BuilderFlag members to clear
    pin_norms_fp32: bool  # weakly typed reduced precision: constrain norm/softmax layers to fp32

    @property
    def trtexec_flags(self) -> tuple[str, ...]:
        """The trtexec switches for the same choice (layer pins are added by the caller, by layer name)."""
        if self.strongly_typed:
            flags: tuple[str, ...] = ("--stronglyTyped",)
        else:
            flags = {"fp32": (), "fp16": ("--fp16",), "bf16": ("--bf16",)}[self.precision]
        flags += ("--noTF32",) if "TF32" in self.cleared_builder_flags else ()
        return flags + (("--precisionConstraints=obey",) if self.pin_norms_fp32 else ())


@dataclass(frozen=True)
class Fp32Nodes:
    """The ONNX nodes a weakly typed fp16/bf16 build keeps fp32, by TensorRT layer base name, and every node's
    base name (a layer named exactly after a node is that node's, not a uniquified sibling's)."""

    keep: frozenset[str]
    nodes: frozenset[str]

    def covers(self, layer_name: str) -> bool:
        """True when the layer was imported from a kept node: its name, or its name plus a `_<n>` suffix."""
        if layer_name in self.nodes:
            return layer_name in self.keep
        base = _UNIQUIFIED.fullmatch(layer_name)
        return base is not None and base.group(1) in self.keep


def plan_precision(
    precision: str,
    strongly_typed: bool,
    compute_capability: tuple[int, int],
    tensorrt_major: int,
) -> PrecisionPlan:
    """Validate the precision against the GPU and TensorRT version, and return the flags to set."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    cc = f"{compute_capability[0]}.{compute_capability[1]}"
    if precision == "bf16" and tuple(compute_capability) < BF16_MIN_COMPUTE_CAPABILITY:
        raise PrecisionError(
            f"bf16 needs compute capability >= 8.0 (Ampere / Jetson Orin or newer); this GPU is {cc} — "
            "use --precision fp16 or fp32"
        )
    if precision == "fp16" and tuple(compute_capability) < FP16_MIN_COMPUTE_CAPABILITY:
        raise PrecisionError(f"fp16 needs compute capability >= 5.3; this GPU is {cc} — use --precision fp32")
    # fp32 means IEEE fp32, also for the sections an fp16/bf16 graph keeps fp32 on purpose: TF32 matmuls would
    # round them to 10 mantissa bits again (and make the fp32 accuracy gate compare unlike things).
    cleared = ("TF32",)
    if strongly_typed:
        return PrecisionPlan(precision, True, ("STRONGLY_TYPED",), (), cleared, False)
    if tensorrt_major > WEAKLY_TYPED_LAST_MAJOR:
        raise PrecisionError(
            f"--weakly-typed is not available in TensorRT {tensorrt_major} (weakly typed networks were removed "
            "in TensorRT 11); export the ONNX in the target dtype and build strongly typed"
        )
    if precision == "fp32":
        return PrecisionPlan("fp32", False, (), (), cleared, False)
    flag = "FP16" if precision == "fp16" else "BF16"
    return PrecisionPlan(precision, False, (), (flag, "OBEY_PRECISION_CONSTRAINTS"), cleared, True)


def trt_layer_name(node: onnx.NodeProto) -> str:
    """The name onnx-tensorrt gives a node's layers before uniquifying (getNodeName: unnamed → node_of_<output>)."""
    return node.name if node.name or not node.output else f"node_of_{node.output[0]}"


def fp32_nodes(model: onnx.ModelProto) -> Fp32Nodes:
    """The nodes the fp16/bf16 lowering would keep fp32 by rule (sensitive ops, Sin/Cos phases) plus every node
    of a norm or softmax module — by torch scope (dynamo names nodes `node_pow_1`) or by name (`/model/norm/Pow`)."""
    from export.graphs.node_scope import node_scope
    from export.precision.precision_lowering import SENSITIVE_OPS, phase_nodes

    phases = phase_nodes(model)
    keep = {trt_layer_name(n) for n in model.graph.node
            if n.op_type in SENSITIVE_OPS or n.name in phases
            or _FP32_MODULE.search(node_scope(n)) or _FP32_MODULE.search(n.name)}
    return Fp32Nodes(frozenset(keep), frozenset(trt_layer_name(n) for n in model.graph.node))


def load_fp32_nodes(onnx_path: Path) -> Fp32Nodes:
    """`fp32_nodes` of an ONNX file (graph only: external weights are not read)."""
    import onnx

    return fp32_nodes(onnx.load(str(onnx_path), load_external_data=False))


def must_stay_fp32(layer_type: str, layer_name: str, fp32: Fp32Nodes) -> bool:
    """True for layers a weakly typed fp16/bf16 build must keep in fp32 (softmax, norms and their parts)."""
    return layer_type in FP32_LAYER_TYPES or fp32.covers(layer_name)


def check_strongly_typed_dtypes(precision: str, graph: str, dtypes_seen: set[str]) -> None:
    """A strongly typed build takes precision from the ONNX; fail when it cannot produce what was asked."""
    wanted = _PRECISION_DTYPE.get(precision)
    if wanted is None:
        reduced = sorted(dtypes_seen & set(_PRECISION_DTYPE.values()))
        if reduced:
            raise PrecisionError(
                f"{graph}: --precision fp32 was asked but the ONNX contains {'/'.join(reduced)} tensors; "
                "re-export it in fp32 or ask for the precision it was exported in"
            )
        return
    if wanted not in dtypes_seen:
        raise PrecisionError(
            f"{graph}: a strongly typed {precision} build takes its precision from the ONNX types, but the ONNX "
            f"has no {precision} tensors: build from the calibrated {precision} folder (`make mixed-precision "
            f"PRECISION={precision}`, i.e. python -m export.precision.mixed_precision --precision {precision}), "
            "or pass --weakly-typed to let TensorRT 10 lower precision itself"
        )
