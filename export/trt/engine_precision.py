"""Precision choice → TensorRT network/builder flags, as plain names (no TensorRT import, so testable anywhere).

Strongly typed (default): precision comes from the ONNX tensor types, so no precision builder flags are set
(TensorRT rejects them on strongly typed networks); an fp16/bf16 engine needs an ONNX exported in that
dtype. Weakly typed (`--weakly-typed`, TensorRT < 11 only): FP16/BF16 builder flags let TensorRT pick
per layer, and OBEY_PRECISION_CONSTRAINTS pins norms and softmax to fp32 (fp16 attention/norms overflow).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PRECISIONS = ("fp32", "fp16", "bf16")
BF16_MIN_COMPUTE_CAPABILITY = (8, 0)  # Ampere; Orin is 8.7
FP16_MIN_COMPUTE_CAPABILITY = (5, 3)
WEAKLY_TYPED_LAST_MAJOR = 10  # TensorRT 11 removed weakly typed networks

# Layer types / ONNX node-name fragments that must stay fp32 in a weakly typed reduced-precision build.
# Decomposed RMSNorm/LayerNorm (Pow → ReduceMean → Sqrt → Div) has no NORMALIZATION layer, hence the names.
FP32_LAYER_TYPES = ("SOFTMAX", "NORMALIZATION")
_FP32_NAME = re.compile(r"norm|softmax", re.IGNORECASE)

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
            return ("--stronglyTyped",)
        flags = {"fp32": ("--noTF32",), "fp16": ("--fp16",), "bf16": ("--bf16",)}[self.precision]
        return flags + (("--precisionConstraints=obey",) if self.pin_norms_fp32 else ())


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
    if strongly_typed:
        # fp32 means IEEE fp32: TF32 matmuls would make the fp32 accuracy gate compare unlike things.
        cleared = ("TF32",) if precision == "fp32" else ()
        return PrecisionPlan(precision, True, ("STRONGLY_TYPED",), (), cleared, False)
    if tensorrt_major > WEAKLY_TYPED_LAST_MAJOR:
        raise PrecisionError(
            f"--weakly-typed is not available in TensorRT {tensorrt_major} (weakly typed networks were removed "
            "in TensorRT 11); export the ONNX in the target dtype and build strongly typed"
        )
    if precision == "fp32":
        return PrecisionPlan("fp32", False, (), (), ("TF32",), False)
    flag = "FP16" if precision == "fp16" else "BF16"
    return PrecisionPlan(precision, False, (), (flag, "OBEY_PRECISION_CONSTRAINTS"), (), True)


def must_stay_fp32(layer_type: str, layer_name: str) -> bool:
    """True for layers a weakly typed fp16/bf16 build must keep in fp32 (softmax, norms and their parts)."""
    return layer_type in FP32_LAYER_TYPES or bool(_FP32_NAME.search(layer_name))


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
