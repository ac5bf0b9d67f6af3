"""Semantics-preserving rewrites of exported ONNX graphs, for onnxruntime on the CPU.

    python -m export.int8.graph_optimization GRAPH.onnx [--out OUT.onnx] [--rewrites remove_zero_adds,fuse_tanh_gelu]

One job: rewrite a graph into an equivalent one that onnxruntime's CPU provider runs faster, where
onnxruntime's own graph optimizer (`ORT_ENABLE_ALL`) does not. Each rewrite matches a fixed pattern, checks
every constant and shape it relies on, and otherwise leaves the graph alone; it returns how often it fired.
Standard ONNX in, standard ONNX out, unless noted (`STANDARD_REWRITES` keeps a graph TensorRT-parsable).
This module is the registry and the entry points; the rewrites live in `export.int8.standard_rewrites` and
`export.int8.ort_fusions`, on the graph index and edits of `export.int8.graph_editing`.

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
import json
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from export.int8.graph_editing import GraphIndex, eliminate_dead_nodes, static_shapes
from export.int8.ort_fusions import fuse_attention, fuse_tanh_gelu
from export.int8.standard_rewrites import (
    remove_zero_adds,
    rsqrt_mul_to_div,
    scatter_rows_to_concat,
    uniform_where_fill,
)

STANDARD_REWRITES = ("remove_zero_adds", "scatter_rows_to_concat", "rsqrt_mul_to_div", "uniform_where_fill")
ORT_REWRITES = (*STANDARD_REWRITES, "fuse_tanh_gelu", "fuse_attention")
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


def _listed_in_manifest(graph: Path) -> Path | None:
    """The artifact folder whose manifest.json lists `graph` among its hashed files, else None."""
    try:
        files = json.loads((graph.parent / "manifest.json").read_text()).get("files")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    return graph.parent if isinstance(files, dict) and graph.name in files else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.int8.graph_optimization", description=__doc__.split("\n")[0])
    p.add_argument("graph", type=Path)
    p.add_argument("--out", type=Path, default=None, help="default: rewrite GRAPH in place")
    p.add_argument("--rewrites", default=",".join(ORT_REWRITES), help=f"comma list of {', '.join(REWRITES)}")
    args = p.parse_args(argv)
    if not args.graph.is_file():
        print(f"graph_optimization: {args.graph} is not a file", file=sys.stderr)
        return 2
    listed = _listed_in_manifest(args.graph)
    if listed and (args.out is None or args.out.resolve() == args.graph.resolve()):
        print(f"graph_optimization: {args.graph} belongs to the artifact folder {listed} (its manifest hashes it): "
              "rewriting it in place would break that folder; pass --out, or `python -m export.int8.quantization` "
              "writes a rewritten copy of the folder", file=sys.stderr)
        return 2
    try:
        report = optimize_file(args.graph, args.out, [r.strip() for r in args.rewrites.split(",") if r.strip()])
    except (ValueError, OSError, DecodeError) as exc:  # DecodeError: not an ONNX file
        print(f"graph_optimization: {args.graph}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(f"[graph_optimization] {args.out or args.graph}: " + ", ".join(f"{k} {v}" for k, v in report.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
