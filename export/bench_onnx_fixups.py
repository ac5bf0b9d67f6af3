"""Graph fix-ups the benchmark applies to its own artifact copies so onnxruntime-CPU can load them.

onnxruntime's CPU provider has no `Where` kernel for bool tensors (checked with onnxruntime 1.32: a
one-node Where(bool, bool, bool) model fails with NOT_IMPLEMENTED). The CLS attention masks
(`smolvla_cls/masks.py`, `torch.where` on bool masks) export to exactly that; at tiny size the exporter's
constant folding removes the nodes, at full size (prefix length 177+) it does not, and the full prefix graph
cannot be loaded. The rewrite here is exact: Where(c, x, y) on bools == Or(And(c, x), And(Not(c), y)), with
the same multidirectional broadcasting. The proper fix is upstream (write the masks with &, |, ~); once it
lands this finds no nodes and changes nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
from onnx import TensorProto, helper


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bool_where_nodes(model: onnx.ModelProto) -> list[int]:
    """Indices (in graph.node) of the Where nodes whose output is bool."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return [i for i, n in enumerate(model.graph.node)
            if n.op_type == "Where" and types.get(n.output[0]) == TensorProto.BOOL]


def rewrite_bool_where(path: Path) -> int:
    """Rewrite every bool Where in the graph file (weights in external data are untouched); returns the count."""
    model = onnx.load(str(path), load_external_data=False)
    targets = set(bool_where_nodes(model))
    if not targets:
        return 0
    nodes = []
    for i, n in enumerate(model.graph.node):
        if i not in targets:
            nodes.append(n)
            continue
        c, x, y = n.input
        base = f"{n.name or 'where'}_boolfix{i}"
        nodes += [helper.make_node("And", [c, x], [f"{base}_cx"], name=f"{base}_and1"),
                  helper.make_node("Not", [c], [f"{base}_nc"], name=f"{base}_not"),
                  helper.make_node("And", [f"{base}_nc", y], [f"{base}_ncy"], name=f"{base}_and2"),
                  helper.make_node("Or", [f"{base}_cx", f"{base}_ncy"], [n.output[0]], name=f"{base}_or")]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(path))
    return len(targets)


def fix_artifacts(folder: Path) -> dict[str, int]:
    """Apply the fix-ups to every graph of an artifact folder and refresh the manifest's file hashes."""
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    counts = {}
    for name, spec in manifest["graphs"].items():
        path = folder / spec["file"]
        counts[name] = rewrite_bool_where(path)
        if counts[name]:
            manifest["files"][spec["file"]] = {"sha256": _sha256(path), "bytes": path.stat().st_size}
    if any(counts.values()):
        manifest.setdefault("bench_fixups", {})["bool_where_rewritten"] = counts
        manifest_path.write_text(json.dumps(manifest, indent=2))
    return counts
