"""int8 dynamic quantization of an existing artifact folder, for CPU deployment with onnxruntime.

    python -m export.int8.quantization --src artifacts/onnx --dst artifacts/onnx-int8 [--weight-type int8|uint8]
        [--per-channel] [--ops MatMul] [--exclude REGEX ...] [--no-default-exclude]

One job: read an intact artifact folder (docs/10-artifact-contract.md), rewrite its four graphs with
`onnxruntime.quantization.quantize_dynamic` and write a new folder with the same I/O contract. Weights of
MatMuls whose second input is a constant become int8 (per tensor, or per output channel), activations
are quantized to uint8 at run time, per tensor, so onnxruntime uses its u8·s8 integer GEMM (AVX-512 VNNI
where the CPU has it). MatMuls between two activations (attention scores, attention · V) stay float32.

Before quantizing, `Transpose(weight)` nodes are folded into transposed initializers: the dynamo export
leaves large weights behind a Transpose, which `quantize_dynamic` would otherwise skip as non-constant.
By default the small projections in and out of action space (`action_in_proj`, `action_out_proj`, the
time MLP, the delta expert's projections, `state_proj`) stay float32; they cost nothing and set the
error floor of the action chunk.

After quantizing, `export.int8.graph_optimization` rewrites the float32 remainder of each graph for onnxruntime's
CPU provider (`--rewrites`, default `DEFAULT_REWRITES`; `--no-graph-optimization` skips it): the vision
tower's all-zero attention-mask Add is dropped, the rotary embeddings' ScatterND pairs become a Concat,
the decomposed tanh-GELU becomes `com.microsoft.FastGelu`, and the unmasked vision attention becomes
`com.microsoft.MultiHeadAttention` (a tiled kernel that never materialises the [12,1024,1024] scores).

The folder keeps the fp32 export's calibrated gate thresholds (manifest `gate`), so before anything is written
the int8 graphs are run against the fp32 ones on the fp16 lowering's validation draws (`--trials`, `--seed`)
with the same check (`export.accuracy_gates.embedding_rows`): obs-CLS and the plan encoder's act-CLS (the
consistency gate's inputs) may each move by at most a tenth of the smallest threshold of the gates reading
them. A folder that moves one further is refused (exit 1, one line naming the graph, the shift and the bound).

The new manifest.json keeps everything of the source except the graph files, `files` (fresh SHA-256s),
`producer` / `created_utc`, and a `quantization` record (mode, options, source manifest SHA-256, per-graph
node counts, the embedding `validation` recorded like the fp16 folder's), so `python -m runtime info <dst>` verifies it and the runtime runs it unchanged. The
folder is written under a temporary name and renamed into place only when complete. The result is for
onnxruntime only: `export.trt.build_engines` refuses it (TensorRT takes the fp32 export or explicit Q/DQ).

Bad input (missing folder, not an artifact folder, an already-quantized source, a --dst that is some
other folder) stops with one line and exit code 2; a gate embedding moved past its bound, exit code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from export import derived_artifacts as derived
from export.accuracy_gates import (
    AccuracyGateError,
    embedding_refusal,
    embedding_rows,
    ort_runner,
    report,
    validation_draws,
    vocab_size,
    worst_rows,
)
from export.graphs.node_scope import node_scope
from export.int8.graph_editing import replace_uses, subgraph_reads
from export.int8.graph_optimization import ORT_REWRITES, REWRITES, op_counts, optimize_file
from export.trt.engine_plan import ORT_INTEGER_OPS as INTEGER_OPS  # one set: what TensorRT refuses
from runtime.atomic_folder import AtomicFolderError, atomic_folder
from runtime.manifest import GRAPH_NAMES

MODE = "int8-dynamic"
DEFAULT_OPS = ("MatMul",)
SUPPORTED_OPS = ("MatMul", "Conv", "Gather")
DEFAULT_REWRITES = ORT_REWRITES
WEIGHT_TYPES = ("int8", "uint8")
# Module scopes (as recorded by the dynamo exporter in each node's `pkg.torch.onnx.name_scopes`) that stay
# float32 by default: the small projections in and out of action/state space.
DEFAULT_EXCLUDE = (r"(^|\.)action_in_proj$", r"(^|\.)action_out_proj$", r"(^|\.)action_time_mlp_(in|out)$",
                   r"(^|\.)delta_action_\w+$", r"(^|\.)delta_time_mlp_\w+$", r"(^|\.)state_proj$")


QuantizationInputError = derived.DerivationInputError  # one error type for every derived folder (CLI: exit 2)


# --------------------------------------------------------------------------------------- graph helpers
def fold_weight_transposes(model: onnx.ModelProto) -> int:
    """Replace `Transpose(initializer)` by a transposed initializer (in place); returns how many were folded.

    Transposes of the same weight with the same permutation share one folded initializer (the vision tower
    runs once per camera, so each of its weights is read twice). The original initializer is kept only
    while other nodes still read it.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    # a control-flow body's reads count too, so a weight an If / Loop body still reads is never dropped
    consumers: Counter[str] = Counter(name for n in graph.node for name in [*n.input, *subgraph_reads(n)])
    folded_as: dict[tuple[str, tuple[int, ...]], str] = {}
    rename: dict[str, str] = {}
    keep: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == "Transpose" and node.domain in ("", "ai.onnx") and len(node.input) == 1 \
                and node.input[0] in inits and node.output[0] not in outputs \
                and inits[node.input[0]].data_type == onnx.TensorProto.FLOAT:
            src = inits[node.input[0]]
            perm_attr = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            perm = tuple(perm_attr) if perm_attr else tuple(reversed(range(len(src.dims))))
            key = (src.name, perm)
            if key not in folded_as:
                arr = np.ascontiguousarray(np.transpose(numpy_helper.to_array(src), perm))
                graph.initializer.append(numpy_helper.from_array(arr, node.output[0]))
                inits[node.output[0]] = graph.initializer[-1]
                folded_as[key] = node.output[0]
            else:
                rename[node.output[0]] = folded_as[key]
            consumers[src.name] -= 1
            if consumers[src.name] == 0:
                graph.initializer.remove(src)
                del inits[src.name]
            continue
        keep.append(node)
    if len(keep) == len(graph.node):
        return 0
    folded = len(graph.node) - len(keep)
    del graph.node[:]
    graph.node.extend(keep)
    for old, new in rename.items():
        replace_uses(graph, old, new)
    return folded


def _is_plain_gemm(node: onnx.NodeProto) -> bool:
    """A Gemm that quantize_dynamic rewrites to MatMul (+ Add): alpha = beta = 1, A not transposed."""
    attrs = {a.name: a for a in node.attribute}
    return (node.op_type == "Gemm" and (attrs["alpha"].f if "alpha" in attrs else 1.0) == 1.0
            and (attrs["beta"].f if "beta" in attrs else 1.0) == 1.0
            and (attrs["transA"].i if "transA" in attrs else 0) == 0)


def quantizable_nodes(model: onnx.ModelProto, ops: Sequence[str]) -> list[onnx.NodeProto]:
    """Nodes `quantize_dynamic` will rewrite: the chosen op types whose weight input is an initializer
    (with "MatMul", also plain Gemms, which the quantizer turns into MatMul first)."""
    inits = {i.name for i in model.graph.initializer}
    weight_input = {"MatMul": 1, "Conv": 1, "Gather": 0, "Gemm": 1}
    chosen = set(ops) | ({"Gemm"} if "MatMul" in ops else set())
    return [n for n in model.graph.node if n.op_type in chosen and n.domain in ("", "ai.onnx")
            and (n.op_type != "Gemm" or _is_plain_gemm(n))
            and len(n.input) > weight_input[n.op_type] and n.input[weight_input[n.op_type]] in inits]


# ---------------------------------------------------------------------------------------------- folder
def _check_options(weight_type: str, ops: Sequence[str], exclude: Sequence[str], rewrites: Sequence[str]) -> None:
    unknown_rw = [r for r in rewrites if r not in REWRITES]
    if unknown_rw:
        raise QuantizationInputError(f"--rewrites {','.join(unknown_rw)!r}: choose from {', '.join(REWRITES)}")
    if weight_type not in WEIGHT_TYPES:
        raise QuantizationInputError(f"--weight-type {weight_type!r} is not one of {', '.join(WEIGHT_TYPES)}")
    unknown = [o for o in ops if o not in SUPPORTED_OPS]
    if not ops or unknown:
        raise QuantizationInputError(f"--ops {','.join(ops)!r}: choose from {', '.join(SUPPORTED_OPS)}")
    derived.check_patterns("--exclude", exclude)


@contextlib.contextmanager
def _quiet_preprocess_hint() -> Iterator[None]:
    """quantize_dynamic logs a generic 'consider pre-processing' warning on the root logger; our pre-processing
    is the transpose folding above (ORT's own pre-processor would re-optimise the TensorRT-oriented graph)."""

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "pre-processing before quantization" not in record.getMessage()

    root = logging.getLogger()
    drop = _Drop()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _quantize_graph(src_file: Path, out_file: Path, work: Path, external: bool, weight_type: str, per_channel: bool,
                    ops: Sequence[str], exclude: Sequence[str],
                    rewrites: Sequence[str] = DEFAULT_REWRITES) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src_file))  # with its external data
    folded = fold_weight_transposes(model)
    candidates = quantizable_nodes(model, ops)
    patterns = [re.compile(p) for p in exclude]
    excluded = [n for n in candidates if any(p.search(node_scope(n)) for p in patterns)]
    if candidates and len(excluded) == len(candidates):  # the --ops check below would blame the wrong flag
        hits = sorted({p.pattern for n in excluded for p in patterns if p.search(node_scope(n))})
        raise QuantizationInputError(f"--exclude {', '.join(map(repr, hits))}: keeps all {len(candidates)} "
                                     f"{'/'.join(ops)} weight nodes of {src_file.name} float32, so nothing would be "
                                     "quantized; exclude module scopes, e.g. 'model.action_out_proj'")
    # quantize_dynamic takes a path; it writes a shape-inferred copy next to it (in `work`, not in --src)
    staged = work / src_file.name
    onnx.save_model(model, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=staged.name + ".data", size_threshold=1024)
    del model
    # a Gemm becomes "<name>_MatMul" inside quantize_dynamic before the exclusion list is consulted
    skip = [name for n in excluded if n.name for name in (n.name, n.name + "_MatMul")]
    with _quiet_preprocess_hint():
        quantize_dynamic(staged, out_file, op_types_to_quantize=list(ops), per_channel=per_channel,
                         weight_type=QuantType.QInt8 if weight_type == "int8" else QuantType.QUInt8,
                         nodes_to_exclude=skip, use_external_data_format=external,
                         extra_options={"MatMulConstBOnly": True})
    for f in work.iterdir():
        f.unlink()
    # float32 remainder → onnxruntime-CPU-friendly ops (rewrites the .onnx next to its data; see module doc)
    rewritten = optimize_file(out_file, rewrites=rewrites) if rewrites else {}
    quantized = onnx.load(str(out_file), load_external_data=False)
    counts = dict(sorted(op_counts(quantized).items()))
    integer = {k: v for k, v in counts.items() if k in INTEGER_OPS}
    if not integer:
        raise QuantizationInputError(f"--ops {','.join(ops)}: {src_file.name} has no {'/'.join(ops)} node that "
                                     "quantize_dynamic turns into an integer op (with constant weights); MatMul, the "
                                     "default, covers every graph of this export")
    return {"weight_nodes": len(candidates), "quantized_nodes": len(candidates) - len(excluded),
            "float_weight_nodes": len(excluded), "excluded_scopes": sorted({node_scope(n) or n.name for n in excluded}),
            "folded_transposes": folded, "integer_ops": integer, "graph_rewrites": rewritten,
            "nodes": len(quantized.graph.node)}


def quantize_artifacts(src: Path, dst: Path, *, weight_type: str = "int8", per_channel: bool = False,
                       ops: Sequence[str] = DEFAULT_OPS, exclude: Iterable[str] = DEFAULT_EXCLUDE,
                       rewrites: Sequence[str] = DEFAULT_REWRITES, check_load: bool = True, trials: int = 3,
                       seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Quantize the artifact folder `src` into `dst` (written atomically, only when the gate embeddings hold:
    `AccuracyGateError` otherwise); returns the new manifest."""
    import onnxruntime

    started = time.time()
    src, dst = Path(src), Path(dst)
    ops, exclude, rewrites = tuple(ops), tuple(exclude), tuple(rewrites)
    _check_options(weight_type, ops, exclude, rewrites)
    if trials < 1:
        raise QuantizationInputError(f"--trials {trials}: expected at least 1 validation observation")
    manifest = derived.check_source(src)
    derived.check_destination(src, dst)
    with atomic_folder(dst) as tmp:
        work = tmp / ".work"
        work.mkdir()
        raw = json.loads(json.dumps(manifest.raw))
        per_graph: dict[str, Any] = {}
        for g in GRAPH_NAMES:
            spec = manifest.graphs[g]
            if progress:
                print(f"[quantize] {g} ...", flush=True)
            per_graph[g] = _quantize_graph(src / spec.file, tmp / spec.file, work, spec.data_file is not None,
                                           weight_type, per_channel, ops, exclude, rewrites)
            data = tmp / f"{spec.file}.data"
            raw["graphs"][g]["data_file"] = data.name if data.is_file() else None
            raw["graphs"][g]["nodes"] = per_graph[g]["nodes"]
        work.rmdir()
        try:
            validation = _check_embeddings(src, tmp, raw, trials, seed, progress)
        except AccuracyGateError:
            derived.source_unchanged(src, manifest)  # a --src swapped half way is the real cause: say that
            raise
        derived.copy_unchanged(src, tmp, manifest)
        raw.setdefault("versions", {})["onnxruntime_quantization"] = onnxruntime.__version__
        record = {
            "mode": MODE, "backend": "onnxruntime (CPU)",
            "weights": f"{weight_type}, {'per output channel' if per_channel else 'per tensor'}, "
                       f"{'symmetric' if weight_type == 'int8' else 'asymmetric'}",
            "activations": "uint8, per tensor, dynamic (computed at run time)",
            "weight_type": weight_type, "per_channel": per_channel, "ops": list(ops), "exclude": list(exclude),
            "graph_rewrites": list(rewrites), "validation": validation,
            "source": str(src), "source_manifest_sha256": derived.source_unchanged(src, manifest),
            "seconds": round(time.time() - started, 2), "graphs": per_graph,
        }
        new_manifest = derived.finish_manifest(tmp, raw, "smolvla-cls-edge export.int8.quantization", "quantization", record)
        if check_load:
            derived.check_loads(tmp, new_manifest)
    return raw


def _check_embeddings(src: Path, tmp: Path, raw: dict[str, Any], trials: int, seed: int,
                      progress: bool) -> dict[str, Any]:
    """int8 vs fp32 gate embeddings on the fp16 lowering's validation draws (seed + 1); the `validation` record,
    or AccuracyGateError (one line) when one moved past its bound: the fp32 gate thresholds would not hold."""
    if progress:
        print(f"[quantize] checking the gate embeddings against fp32 on {trials} fresh observation(s) ...", flush=True)
    graphs = ("prefix", "plan_encoder")
    want = {g: ort_runner(src / raw["graphs"][g]["file"]) for g in graphs}
    got = {g: ort_runner(tmp / raw["graphs"][g]["file"]) for g in graphs}
    rows = embedding_rows(want, got, raw, validation_draws(raw, trials, seed + 1, vocab_size(src, raw)))
    del want, got
    refusal = embedding_refusal(rows, raw)
    if refusal:
        raise AccuracyGateError(refusal)
    return {"trials": trials, "seed": seed + 1, "by": "onnxruntime CPU, int8 vs fp32 graphs",
            "worst": worst_rows(rows), "table": report(rows).splitlines() if rows else []}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.int8.quantization",
                                description="int8 dynamic quantization of an artifact folder (onnxruntime CPU).")
    p.add_argument("--src", type=Path, default=Path("artifacts/onnx"), help="fp32 artifact folder (make export)")
    p.add_argument("--dst", type=Path, default=None, help="new folder (default: <src>-int8)")
    p.add_argument("--weight-type", default="int8", help="int8 (default; u8·s8 GEMM, VNNI) or uint8")
    p.add_argument("--per-channel", action="store_true", help="one weight scale per output channel")
    p.add_argument("--ops", default=",".join(DEFAULT_OPS), help=f"comma list of {', '.join(SUPPORTED_OPS)} (default MatMul)")
    p.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                   help="module scope (e.g. 'model.action_out_proj') to keep float32; repeatable")
    p.add_argument("--no-default-exclude", action="store_true", help="also quantize the action/state projections")
    p.add_argument("--rewrites", default=",".join(DEFAULT_REWRITES),
                   help=f"comma list of export.int8.graph_optimization rewrites (default {','.join(DEFAULT_REWRITES)})")
    p.add_argument("--no-graph-optimization", action="store_true", help="quantize only; no graph rewrites")
    p.add_argument("--trials", type=int, default=3, help="validation observations for the gate-embedding check (default 3)")
    p.add_argument("--seed", type=int, default=0, help="validation draws use seed + 1, as the fp16 lowering's do")
    args = p.parse_args(argv)
    dst = args.dst or args.src.with_name(args.src.name + "-int8")
    exclude = ([] if args.no_default_exclude else list(DEFAULT_EXCLUDE)) + list(args.exclude)
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    rewrites = [] if args.no_graph_optimization else [r.strip() for r in args.rewrites.split(",") if r.strip()]
    try:
        manifest = quantize_artifacts(args.src, dst, weight_type=args.weight_type, per_channel=args.per_channel,
                                      ops=ops, exclude=exclude, rewrites=rewrites, trials=args.trials, seed=args.seed)
    except (QuantizationInputError, AtomicFolderError) as exc:
        print(f"quantization: {exc}", file=sys.stderr)
        return 2
    except AccuracyGateError as exc:
        print(f"quantization: {exc}", file=sys.stderr)
        return 1
    q = manifest["quantization"]
    done = ", ".join(f"{g} {v['quantized_nodes']}/{v['weight_nodes']}" for g, v in q["graphs"].items())
    size = sum(v["bytes"] for v in manifest["files"].values()) / 1e6
    print(f"[quantize] wrote {dst} in {q['seconds']:.1f} s ({MODE}; quantized weight nodes {done}; {size:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
