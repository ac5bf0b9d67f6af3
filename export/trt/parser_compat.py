"""Would this TensorRT version's ONNX parser accept these graphs? Ops, attributes, tensor dtypes per op, graph
I/O dtypes and opset, checked per node against `parser_rules.json` (every rule with its source).

    python -m export.trt.parser_compat --artifacts artifacts/onnx-fp16 [--tensorrt 10.3,10.13,11.x]

Prints one line per rejected node — graph, node name, op, why, and the first TensorRT that accepts it — and
exits 1 when any version rejects something. `make engine` runs it for the installed TensorRT before building.
Pure Python + onnx (no TensorRT), so CI checks every listed version on any machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto

from export.graphs.onnx_checks import tensorrt_supported_ops
from runtime.trt_api import TensorRTApiError
from runtime.trt_api import major_minor as version_key

RULES_FILE = Path(__file__).with_name("parser_rules.json")


@dataclass(frozen=True)
class Rejection:
    """One node (or graph-level fact) a TensorRT version's parser would reject."""

    version: str
    graph: str
    node: str
    op: str
    reason: str
    first_accepting: str | None  # None: no TensorRT version known to accept it

    def line(self) -> str:
        fix = f"accepted from TensorRT {self.first_accepting}" if self.first_accepting else "no listed TensorRT accepts it"
        return f"TensorRT {self.version}: {self.graph} node {self.node!r} ({self.op}): {self.reason} — {fix}"


@lru_cache(maxsize=1)
def rules() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(RULES_FILE.read_text(encoding="utf-8"))
    data["supported_ops"] = tensorrt_supported_ops()  # the 10.x parser's op list (export/graphs/...ops.txt)
    return data


def _dtype(elem: int) -> str:
    return str(TensorProto.DataType.Name(elem)) if elem else "UNDEFINED"


def _types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        graph = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    except Exception:  # noqa: BLE001 — untyped tensors are simply not dtype-checked
        graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                types[node.output[0]] = value.data_type
    return types


def _node_problems(node: onnx.NodeProto, types: dict[str, int], r: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(reason, first version that accepts it) for everything in this node some version could reject."""
    if node.domain not in ("", "ai.onnx"):
        return [(f"custom domain {node.domain}", None)]
    since_op = {e["op"]: e["since"] for e in r["ops_since"]}
    if node.op_type not in r["supported_ops"] and node.op_type not in since_op:
        return [("op not in the parser's supported set", None)]
    found: list[tuple[str, str | None]] = []
    if node.op_type in since_op:
        found.append(("op not supported", since_op[node.op_type]))
    for rule in r["attributes"]:
        if rule["op"] == node.op_type and any(a.name == rule["attribute"] for a in node.attribute):
            found.append((f"attribute {rule['attribute']!r} (any value) rejected", rule["since"]))
    dtype = _dtype(types.get(node.input[0], 0)) if node.input and node.input[0] else None
    if node.op_type == "Cast":
        dtype = _dtype(next((a.i for a in node.attribute if a.name == "to"), 0))
    allowed = r["op_dtypes"].get(node.op_type)
    if dtype and dtype != "UNDEFINED" and allowed is not None and dtype not in allowed:
        later = next((e["since"] for e in r["dtypes_since"] if e["op"] == node.op_type and dtype in e["dtypes"]), None)
        found.append((f"{dtype} {'output' if node.op_type == 'Cast' else 'input'} not supported", later))
    return found


def check_model(model: onnx.ModelProto, graph: str, versions: list[str]) -> list[Rejection]:
    """Every rejection of `model` by each of `versions` (empty = all accept)."""
    r = rules()
    types = _types(model)
    out: list[Rejection] = []
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    io = [(v.name, v.type.tensor_type.elem_type) for v in (*model.graph.input, *model.graph.output)]
    for version in versions:
        key = version_key(version)
        if not r["opset"]["min"] <= opset <= r["opset"]["max"]:
            out.append(Rejection(version, graph, "(model)", "opset", f"opset {opset} outside "
                                 f"{r['opset']['min']}..{r['opset']['max']}", None))
        for name, elem in io:
            if _dtype(elem) not in r["graph_io_dtypes"]["allowed"]:
                out.append(Rejection(version, graph, name, "graph I/O", f"dtype {_dtype(elem)} at the graph boundary",
                                     None))
        for node in model.graph.node:
            for reason, since in _node_problems(node, types, r):
                if since is None or key < version_key(since):
                    out.append(Rejection(version, graph, node.name or node.output[0], node.op_type, reason, since))
    return out


def check_folder(artifacts: Path, versions: list[str]) -> list[Rejection]:
    """Check every graph of an artifact folder (manifest.json names them: four in an export)."""
    manifest = json.loads((artifacts / "manifest.json").read_text(encoding="utf-8"))
    out: list[Rejection] = []
    for graph, entry in manifest["graphs"].items():
        model = onnx.load(str(artifacts / entry["file"]), load_external_data=False)
        out += check_model(model, graph, versions)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.trt.parser_compat", description=__doc__.split("\n")[0])
    p.add_argument("--artifacts", type=Path, required=True, help="artifact folder with manifest.json")
    p.add_argument("--tensorrt", default=",".join(rules()["checked_versions"]),
                   help="comma list of TensorRT versions (default: every checked version)")
    args = p.parse_args(argv)
    if not (args.artifacts / "manifest.json").is_file():
        print(f"parser check: {args.artifacts}/manifest.json is missing (run `make export` first)", file=sys.stderr)
        return 2
    versions = [v.strip() for v in args.tensorrt.split(",") if v.strip()]
    try:
        found = check_folder(args.artifacts, versions)
    except TensorRTApiError as exc:
        print(f"parser check: {exc}", file=sys.stderr)
        return 2
    for rejection in found:
        print(rejection.line(), file=sys.stderr)
    print(f"parser check: {args.artifacts} — " + ", ".join(
        f"TensorRT {v}: {sum(x.version == v for x in found)} rejected" for v in versions))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
