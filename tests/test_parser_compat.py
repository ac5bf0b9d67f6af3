"""The per-version TensorRT ONNX parser check (export/trt/parser_compat.py) and the export's portability rewrites
(export/graphs/tensorrt_rewrites.py): planted nodes are rejected by name with the first accepting version, the
rewrites are exact, and the tiny export's fp32/fp16/bf16 folders parse on 10.3, 10.13 and 11.x."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.graphs.tensorrt_rewrites import make_tensorrt_portable
from export.trt.parser_compat import check_folder, check_model, rules, version_key
from runtime.trt_api import TensorRTApiError

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = list(rules()["checked_versions"])


def _model(nodes, inits, inputs, outputs) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def _planted() -> onnx.ModelProto:
    """A ScatterND with the exporter's explicit reduction, an int64 CumSum, a BF16 tensor into GridSample."""
    inits = [numpy_helper.from_array(np.array([[1]], np.int64), "idx"),
             numpy_helper.from_array(np.zeros((1, 4), np.float32), "upd"),
             numpy_helper.from_array(np.array(1, np.int64), "axis"),
             numpy_helper.from_array(np.zeros((1, 2, 2, 2), np.float32), "grid")]
    nodes = [helper.make_node("ScatterND", ["x", "idx", "upd"], ["s"], name="rope_scatter", reduction="none"),
             helper.make_node("CumSum", ["ids", "axis"], ["pos"], name="position_ids"),
             helper.make_node("Cast", ["img"], ["img16"], name="to_bf16", to=TensorProto.BFLOAT16),
             helper.make_node("GridSample", ["img16", "grid"], ["warped"], name="warp_bf16")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4]),
              helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 6]),
              helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 1, 4, 4])]
    outputs = [helper.make_tensor_value_info("s", TensorProto.FLOAT, [3, 4]),
               helper.make_tensor_value_info("pos", TensorProto.INT64, [1, 6]),
               helper.make_tensor_value_info("warped", TensorProto.BFLOAT16, [1, 1, 2, 2])]
    return _model(nodes, inits, inputs, outputs)


def test_planted_nodes_are_rejected_by_name_with_the_first_accepting_version() -> None:
    found = {(r.version, r.node): r for r in check_model(_planted(), "prefix", VERSIONS)}
    assert found[("10.3", "rope_scatter")].first_accepting == "10.9"
    assert "reduction" in found[("10.3", "rope_scatter")].reason
    assert found[("10.3", "position_ids")].first_accepting == "10.8"
    assert "INT64" in found[("10.3", "position_ids")].reason
    assert "BFLOAT16" in found[("10.3", "warp_bf16")].reason and found[("10.3", "warp_bf16")].first_accepting is None
    assert ("10.13", "rope_scatter") not in found and ("10.13", "position_ids") not in found
    assert ("11.x", "warp_bf16") in found
    line = found[("10.3", "rope_scatter")].line()
    assert line.startswith("TensorRT 10.3: prefix node 'rope_scatter' (ScatterND)") and "from TensorRT 10.9" in line


def test_every_rule_names_its_source_and_versions_order() -> None:
    r = rules()
    for section in ("ops_since", "attributes", "dtypes_since"):
        assert r[section] and all(rule["source"] and version_key(rule["since"]) >= (10, 0) for rule in r[section])
    assert r["op_dtypes_source"] and r["opset"]["source"] and r["graph_io_dtypes"]["source"]
    assert version_key("10.3.0.30") < version_key("10.9") < version_key("10.13") < version_key("11.x")
    with pytest.raises(TensorRTApiError, match="TensorRT version"):
        version_key("ten")


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_rewrites_are_exact_and_only_touch_what_they_can_prove() -> None:
    flags = helper.make_tensor_value_info("mask", TensorProto.BOOL, [1, 7])
    nodes = [helper.make_node("Cast", ["mask"], ["m64"], to=TensorProto.INT64, name="cast"),
             helper.make_node("CumSum", ["m64", "axis"], ["pos"], name="cumsum_flags"),
             helper.make_node("CumSum", ["ids", "axis"], ["pos_big"], name="cumsum_values"),
             helper.make_node("ScatterND", ["x", "idx", "upd"], ["s"], name="partial_scatter", reduction="none")]
    inits = [numpy_helper.from_array(np.array(1, np.int64), "axis"),
             numpy_helper.from_array(np.array([[1]], np.int64), "idx"),
             numpy_helper.from_array(np.ones((1, 4), np.float32), "upd")]
    inputs = [flags, helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 7]),
              helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])]
    outputs = [helper.make_tensor_value_info(n, t, s) for n, t, s in
               [("pos", TensorProto.INT64, [1, 7]), ("pos_big", TensorProto.INT64, [1, 7]),
                ("s", TensorProto.FLOAT, [3, 4])]]
    model = _model(nodes, inits, inputs, outputs)
    rng = np.random.default_rng(0)
    feeds = {"mask": rng.random((1, 7)) > 0.3, "ids": rng.integers(0, 1 << 40, (1, 7)),
             "x": rng.standard_normal((3, 4)).astype(np.float32)}
    before = _run(model, feeds)
    report = make_tensorrt_portable(model)
    assert report == {"scatter_rows_to_concat": 0, "drop_default_scatter_reduction": 1, "float_cumsum_of_flags": 1}
    for a, b in zip(before, _run(model, feeds)):
        np.testing.assert_array_equal(a, b)
    assert check_model(model, "g", ["10.3"])[0].node == "cumsum_values"  # large ints: left alone, still named


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from export.graphs.onnx_export import export_artifacts
    from export.precision.mixed_precision import lower_artifacts
    from tests.test_export import _loaded

    root = tmp_path_factory.mktemp("compat")
    export_artifacts(_loaded(), root / "onnx", calibrate=False, progress=False)
    folders = {"fp32": root / "onnx"}
    for precision in ("fp16", "bf16"):
        lower_artifacts(root / "onnx", root / f"onnx-{precision}", precision=precision, samples=2, trials=2,
                        progress=False)
        folders[precision] = root / f"onnx-{precision}"
    return folders


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_tiny_export_parses_on_every_checked_version(tiny_folders: dict[str, Path], precision: str) -> None:
    found = check_folder(tiny_folders[precision], VERSIONS)
    assert found == [], "\n".join(r.line() for r in found[:10])
    for g in ("prefix", "main_expert", "delta_expert"):
        model = onnx.load(str(tiny_folders[precision] / f"{g}.onnx"), load_external_data=False)
        assert not any(n.op_type == "ScatterND" for n in model.graph.node)


def test_cli_one_line_per_rejected_node(tmp_path: Path) -> None:
    from tests.fake_artifacts import build_fake_artifacts

    art = build_fake_artifacts(tmp_path / "onnx")
    manifest = json.loads((art / "manifest.json").read_text())
    onnx.save(_planted(), str(art / manifest["graphs"]["prefix"]["file"]))
    result = subprocess.run([sys.executable, "-m", "export.trt.parser_compat", "--artifacts", str(art),
                             "--tensorrt", "10.3,11.x"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert sum("TensorRT 10.3: prefix node" in ln for ln in lines) == 3
    assert sum("TensorRT 11.x: prefix node" in ln for ln in lines) == 1
    assert "TensorRT 10.3: 3 rejected, TensorRT 11.x: 1 rejected" in result.stdout
