"""Which part of a lowered graph to keep fp32 when it misses an accuracy gate.

Nodes are grouped into *sections* by the torch module they came from (`precision_lowering.node_section`):
the vision embeddings, the vision encoder (all its layers), the connector, the text model, the expert, each
projection head ..., and one section of the exporter-internal nodes with no module. Each section that still has low-precision nodes is tried
kept fp32, alone, on the failing graph, and scored by that graph's own gate rows; the section whose fp32
island leaves the best worst margin (cosine − gate) is the one to keep. Errors in these networks build up
over many layers, so per-layer attribution points at the wrong place (a text layer, when the drift comes
from the whole vision tower); trying sections measures the effect on exactly the rows that failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import onnx

from export.precision_lowering import node_section


def sections_with(model: onnx.ModelProto, node_names: Iterable[str]) -> set[str]:
    """The sections the named nodes belong to ('' stands for the nodes of no module, a section too)."""
    names = set(node_names)
    return {node_section(n) for n in model.graph.node if n.name in names}


def best_section(candidates: Iterable[str], margin_with: Callable[[str], float]) -> tuple[str, float] | None:
    """The candidate whose fp32 island gives the largest worst-row margin (cosine − gate), and that margin."""
    scored = [(margin_with(section), section) for section in sorted(candidates)]
    if not scored:
        return None
    margin, section = max(scored)
    return section, margin
