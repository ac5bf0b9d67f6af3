"""A weakly typed fp16 build of a real (tiny) dynamo export keeps every norm statistic and softmax in fp32.

The fake TensorRT parser names each layer after its ONNX node, as onnx-tensorrt does; the dynamo exporter names
the decomposed RMSNorm's nodes `node_pow_1`, `node_mean`, ... with the module path only in the node metadata,
so a rule on layer names alone left most of them free to overflow in fp16.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import onnx
import pytest

from export.graphs.node_scope import node_scope
from export.trt.build_engines import main as build_main
from export.trt.engine_plan import GRAPHS
from tests.fake_cuda import install_cuda
from tests.fake_tensorrt import make_tensorrt

STATISTICS = ("Pow", "ReduceMean", "Sqrt", "Reciprocal", "Softmax", "LayerNormalization")


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.graphs.onnx_export import export_artifacts
    from tests.test_export import _loaded

    out = tmp_path_factory.mktemp("pins") / "onnx"
    export_artifacts(_loaded(), out, calibrate=False, progress=False)
    return out


def _layer_precisions(line: str) -> set[str]:
    """The layers a `<graph>.trtexec.txt` line pins to fp32."""
    arg = next(a for a in shlex.split(line) if a.startswith("--layerPrecisions="))
    return {item.rsplit(":", 1)[0] for item in arg.split("=", 1)[1].split(",")}


def test_weakly_typed_fp16_pins_the_dynamo_norms(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 tiny_export: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("10.13", install_cuda(monkeypatch, "12.x")))
    args = ["--artifacts", str(tiny_export), "--out", str(tmp_path), "--precision", "fp16", "--weakly-typed"]
    assert build_main(args) == 0
    for graph in GRAPHS:
        model = onnx.load(str(tiny_export / f"{graph}.onnx"), load_external_data=False)
        pinned = _layer_precisions((tmp_path / f"{graph}.trtexec.txt").read_text())
        statistics = {n.name for n in model.graph.node if n.op_type in STATISTICS}
        norms = {n.name for n in model.graph.node if "layernorm" in node_scope(n) and n.op_type != "Constant"}
        assert statistics and statistics <= pinned, sorted(statistics - pinned)
        assert norms and norms <= pinned, sorted(norms - pinned)  # the whole RMSNorm, + eps and weight too
        matmuls = {n.name for n in model.graph.node if n.op_type == "MatMul"}
        assert matmuls and not matmuls & pinned  # the matmuls are what fp16 is for
