"""Per-tensor value ranges of the three exported graphs, measured on onnxruntime CPU (calibration for
`export.precision.mixed_precision`).

Each float32 tensor of a graph gets a tiny side branch `ReduceMax(|x|)` added as an extra graph output, so
one ordinary run yields the max |value| of every intermediate tensor without ever materialising them on the
host. The attention mask fill (`smolvla_cls.attention.MASK_FILL`, -32752, chosen to be exactly
representable in fp16 and bf16) is left out of the statistic: it is a constant the softmax turns into an
exact 0, not a value that can overflow downstream.

Inputs are a chain, as the runtime runs it: random valid prefix inputs (images in [0,1], a left-aligned
language mask, a standard-normal state), then the main expert over every Euler step of a chunk from Gaussian
noise, then the delta expert on the finished chunk — so each graph is calibrated on the K/V, times and
actions it really sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from export.accuracy_gates import euler_chunk, random_inputs, vocab_size

RANGE_SUFFIX = "::absmax"
# = smolvla_cls.attention.MASK_FILL (tests keep them equal). Not imported: that pulls torch and lerobot, and the
# fp16 lowering runs where engines are built (a Jetson with JetPack's TensorRT, numpy and onnx only).
MASK_FILL = -32752.0
KV_NAMES = ("prefix_k", "prefix_v", "prefix_pad")


def float_tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every typed tensor (inputs, outputs, value_info, initializers, Constant outputs).

    The dynamo exporter records value_info for its intermediates; shape inference fills any gap (on the
    weight-free structure, so it works for graphs whose weights live in external data)."""
    types: dict[str, int] = {}

    def take(graph: onnx.GraphProto) -> None:
        for vi in [*graph.input, *graph.output, *graph.value_info]:
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                types[vi.name] = vi.type.tensor_type.elem_type
        for init in graph.initializer:
            types[init.name] = init.data_type
        for node in graph.node:
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value":
                        types[node.output[0]] = a.t.data_type

    take(model.graph)
    produced = {o for n in model.graph.node for o in n.output if o}
    if produced - set(types):
        skeleton = onnx.ModelProto()
        skeleton.CopyFrom(model)
        for init in skeleton.graph.initializer:  # structure only: shapes/types survive, weights do not matter
            if init.data_location == TensorProto.EXTERNAL:
                del init.external_data[:]
                init.data_location = TensorProto.DEFAULT
        inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False)
        take(inferred.graph)
    return types


def instrument(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` with one extra scalar output `<tensor>::absmax` per tensor (mask fill excluded).

    Each side branch sits right after the node that produces its tensor; run it with onnxruntime's
    PRIORITY_BASED execution order, which follows that order and frees each activation as early as the plain
    graph does (the default order ran the branches late: 20 GB peak for the full-size prefix, 2.7 GB this way)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    g.initializer.extend([helper.make_tensor("mp::mask_fill", TensorProto.FLOAT, [], [MASK_FILL]),
                          helper.make_tensor("mp::zero", TensorProto.FLOAT, [], [0.0])])
    index = {name: i for i, name in enumerate(tensors)}

    def branch(name: str) -> list[onnx.NodeProto]:
        i = index[name]
        is_fill, magnitude, kept = f"mp::{i}::is_fill", f"mp::{i}::abs", f"mp::{i}::kept"
        return [helper.make_node("Equal", [name, "mp::mask_fill"], [is_fill], name=f"mp::{i}::eq"),
                helper.make_node("Abs", [name], [magnitude], name=f"mp::{i}::absval"),
                helper.make_node("Where", [is_fill, "mp::zero", magnitude], [kept], name=f"mp::{i}::where"),
                helper.make_node("ReduceMax", [kept], [name + RANGE_SUFFIX], keepdims=0, name=f"mp::{i}::max")]

    nodes = [n for t in tensors if t in {i.name for i in g.input} for n in branch(t)]
    for node in g.node:
        nodes.append(node)
        nodes += [n for t in node.output if t in index for n in branch(t)]
    del g.node[:]
    g.node.extend(nodes)
    g.output.extend(helper.make_tensor_value_info(t + RANGE_SUFFIX, TensorProto.FLOAT, []) for t in tensors)
    return out


def measured_tensors(model: onnx.ModelProto) -> list[str]:
    """The float32 activations worth measuring: graph inputs and node outputs (initializers are read directly)."""
    types = float_tensor_types(model)
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input] + [o for n in model.graph.node for o in n.output if o]
    return [n for n in dict.fromkeys(names) if n not in inits and types.get(n) == TensorProto.FLOAT]


@dataclass
class RangeRecorder:
    """One instrumented onnxruntime session; `run` returns the graph's own outputs and folds the ranges in."""

    session: Any
    outputs: list[str]
    absmax: dict[str, float]

    @classmethod
    def open(cls, model_path: Path) -> RangeRecorder:
        """Instrument the graph's structure only: its external weights are linked, not loaded into Python."""
        import onnxruntime as ort

        model = onnx.load(str(model_path), load_external_data=False)
        outputs = [o.name for o in model.graph.output]
        tensors = measured_tensors(model)
        structure = instrument(model, tensors).SerializeToString()
        del model
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED  # see instrument()
        # weights stay in the source folder: onnxruntime resolves the external data relative to it
        options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                         str(model_path.parent.resolve()))
        session = ort.InferenceSession(structure, options, providers=["CPUExecutionProvider"])
        return cls(session, outputs, {name: 0.0 for name in tensors})

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        values = dict(zip(names, self.session.run(names, feeds)))
        for name in self.absmax:
            v = float(values[name + RANGE_SUFFIX])
            if not np.isfinite(v):
                raise FloatingPointError(f"tensor {name!r} is non-finite in the float32 graph itself: "
                                         "fix the export before lowering its precision")
            self.absmax[name] = max(self.absmax[name], v)
        return {k: values[k] for k in self.outputs}

    def close(self) -> None:
        """Free the session (the ranges stay): the full-size prefix session alone holds ~1.2 GB."""
        self.session = None


def calibrate(artifacts: Path, manifest: dict[str, Any], samples: int, seed: int,
              progress: bool = True) -> dict[str, dict[str, float]]:
    """Max |value| per float32 activation of each graph over `samples` chained observations.

    One graph at a time (prefix for every observation, then the main expert over every chunk, then the
    delta expert), so only one instrumented session is alive at a time."""
    dims = manifest["dims"]
    shape = (1, int(dims["chunk_size"]), int(dims["max_action_dim"]))
    rng = np.random.default_rng(seed)
    vocab = vocab_size(artifacts, manifest)
    files = {g: artifacts / manifest["graphs"][g]["file"] for g in ("prefix", "main_expert", "delta_expert",
                                                                      "plan_encoder")}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=samples * (3 + int(dims["num_steps"])), desc="[mixed precision] calibrating ranges", unit="run")

    def tick(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if bar is not None:
            bar.update(1)
        return out

    prefix = RangeRecorder.open(files["prefix"])
    kvs = [{n: out[n] for n in KV_NAMES} for out in
           (tick(prefix.run(random_inputs(manifest, rng, vocab))) for _ in range(samples))]
    prefix.close()  # one instrumented session alive at a time
    main = RangeRecorder.open(files["main_expert"])
    chunks = [euler_chunk(int(dims["num_steps"]), kv, rng.standard_normal(shape).astype(np.float32),
                          lambda feeds: tick(main.run(feeds))) for kv in kvs]
    main.close()
    delta = RangeRecorder.open(files["delta_expert"])
    for kv, chunk in zip(kvs, chunks):
        tick(delta.run({"actions": chunk, **kv}))
    delta.close()
    plan = RangeRecorder.open(files["plan_encoder"])
    for chunk in chunks:  # remainders of every length the runtime feeds (rows at the front, valid mask)
        valid = np.arange(shape[1])[None] < rng.integers(1, shape[1] + 1)
        tick(plan.run({"plan": (chunk * valid[..., None]).astype(np.float32), "plan_valid": valid}))
    plan.close()
    if bar is not None:
        bar.close()
    return {"prefix": prefix.absmax, "main_expert": main.absmax, "delta_expert": delta.absmax,
            "plan_encoder": plan.absmax}
