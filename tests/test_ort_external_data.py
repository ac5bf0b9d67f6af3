"""onnxruntime backend, graphs with external data (`<graph>.onnx.data`): what runs is what was verified.

onnxruntime used to memory-map the data file, so an in-place write after loading changed the running weights
and a truncation killed the process with SIGBUS. The backend now builds every session from the verified bytes
held in memory (runtime.ort_model_bytes); these tests change the files under a running backend.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime import ort_model_bytes
from runtime.backend import BackendError
from runtime.backend_onnxruntime import OnnxRuntimeBackend
from runtime.manifest import GRAPH_NAMES, GraphSpec, Manifest, ManifestError
from runtime.ort_model_bytes import load_graph_bytes
from tests.fake_artifacts import cached_fake_artifacts, externalize_weights, load_manifest_dict, write_manifest_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake artifacts with every graph's weights in its external-data file; every external weight is handed
    to onnxruntime as OrtValues (the real graphs' are MBs; these are KBs, under the inlining limit)."""
    monkeypatch.setattr(ort_model_bytes, "INLINE_BYTES", 0)
    art = tmp_path / "onnx"
    shutil.copytree(cached_fake_artifacts(), art)
    for graph in GRAPH_NAMES:
        externalize_weights(art, graph)
    return art


def _outputs(backend: OnnxRuntimeBackend, m: Manifest) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.random(m.graphs["prefix"].input("images").shape, dtype=np.float32)
    tokens = np.zeros(m.graphs["prefix"].input("lang_tokens").shape, np.int64)
    mask = np.ones(m.graphs["prefix"].input("lang_mask").shape, bool)
    state = rng.random(m.graphs["prefix"].input("state").shape, dtype=np.float32)
    prefix = backend.run_prefix(images, tokens, mask, state)
    x = rng.standard_normal(m.graphs["main_expert"].input("x_t").shape).astype(np.float32)
    plan = rng.standard_normal(m.plan_shape).astype(np.float32)
    valid = np.ones(m.graphs["plan_encoder"].input("plan_valid").shape, bool)
    return [prefix.obs_cls, backend.run_main_expert(x, 0.5, prefix), *backend.run_delta_expert(x, prefix),
            backend.run_plan_encoder(plan, valid)]


def _overwrite_in_place(path: Path) -> None:
    """What `cp new/* folder/` does to a file of the same size: the same inode, other bytes."""
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.write(bytes(size))


@pytest.mark.parametrize("verify", [True, False])
def test_writes_to_the_files_after_loading_do_not_change_the_running_session(folder: Path, verify: bool) -> None:
    m = Manifest.load(folder)
    reference = OnnxRuntimeBackend(cached_fake_artifacts(), Manifest.load(cached_fake_artifacts()), intra_op_threads=1)
    backend = OnnxRuntimeBackend(folder, m, intra_op_threads=1, verify=verify)
    assert all(backend._weights[g] for g in GRAPH_NAMES)  # handed over as OrtValues, not inlined
    before = _outputs(backend, m)
    for got, want in zip(before, _outputs(reference, m)):  # the external weights are the self-contained ones
        np.testing.assert_array_equal(got, want)
    for graph in GRAPH_NAMES:
        _overwrite_in_place(folder / f"{graph}.onnx.data")  # every weight zeroed, same size, same inode
    for got, want in zip(_outputs(backend, m), before):
        np.testing.assert_array_equal(got, want)
    if verify:  # a file changed between the manifest check and loading is refused, naming it
        with pytest.raises(ManifestError, match=r"'prefix\.onnx\.data' changed after the manifest check"):
            OnnxRuntimeBackend(folder, m, intra_op_threads=1)


def test_truncating_the_data_file_under_a_running_session_does_not_crash_it(folder: Path) -> None:
    """Run in a child process: with a memory-mapped file the truncation is a SIGBUS, not an exception."""
    script = textwrap.dedent(f"""
        import os, sys
        import numpy as np
        sys.path.insert(0, {str(ROOT)!r})
        from runtime.backend_onnxruntime import OnnxRuntimeBackend
        from runtime.manifest import Manifest
        m = Manifest.load({str(folder)!r})
        backend = OnnxRuntimeBackend({str(folder)!r}, m, intra_op_threads=1)
        plan = np.ones(m.plan_shape, np.float32)
        valid = np.ones(m.graphs["plan_encoder"].input("plan_valid").shape, bool)
        before = backend.run_plan_encoder(plan, valid)
        for name in os.listdir({str(folder)!r}):
            if name.endswith(".onnx.data"):
                os.truncate(os.path.join({str(folder)!r}, name), 0)
        after = backend.run_plan_encoder(plan, valid)
        print("same" if np.array_equal(before, after) else "changed")
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env,
                         check=False)
    assert out.returncode == 0, f"exit {out.returncode}: {out.stderr[-2000:]}"
    assert out.stdout.strip() == "same"


def test_an_external_tensor_outside_its_data_file_is_refused_naming_it(folder: Path) -> None:
    data = folder / "plan_encoder.onnx.data"
    data.write_bytes(data.read_bytes()[:100])  # shorter than the tensors it should hold, then re-recorded
    raw = load_manifest_dict(folder)
    raw["files"][data.name] = {"sha256": __import__("hashlib").sha256(data.read_bytes()).hexdigest(), "bytes": 100}
    write_manifest_dict(folder, raw)
    with pytest.raises(BackendError, match=r"graph 'plan_encoder': external tensor '\w+': \d+ bytes at offset \d+ "
                                           r"of 'plan_encoder\.onnx\.data' \(100 bytes\) do not hold its shape"):
        OnnxRuntimeBackend(folder, Manifest.load(folder), intra_op_threads=1)


@pytest.mark.parametrize("inline_bytes", [0, 1 << 20])
def test_every_dtype_is_taken_from_memory_and_no_file_is_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                inline_bytes: int) -> None:
    """float32 / float16 / int64 / bool directly, bfloat16 by its bits, each injected as an OrtValue or inlined in
    the proto; the session is built after both files are gone and computes what onnxruntime computes from them."""
    monkeypatch.setattr(ort_model_bytes, "INLINE_BYTES", inline_bytes)
    rng = np.random.default_rng(1)
    values = {"w32": rng.standard_normal(64).astype(np.float32), "w16": rng.standard_normal(64).astype(np.float16),
              "wi": rng.integers(-5, 5, 64).astype(np.int64), "wb": rng.random(64) > 0.5}
    inits = [numpy_helper.from_array(v, k) for k, v in values.items()]
    bits = (rng.standard_normal(64).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)  # bfloat16 bits
    bf16 = helper.make_tensor("wbf", TensorProto.BFLOAT16, [64], bits.tobytes(), raw=True)
    nodes = [helper.make_node("Cast", [n], [f"{n}_f"], to=TensorProto.FLOAT) for n in ("w16", "wi", "wb", "wbf")]
    nodes += [helper.make_node("Sum", ["x", "w32", "w16_f", "wi_f", "wb_f", "wbf_f"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])], [*inits, bf16])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save_model(model, str(tmp_path / "g.onnx"), save_as_external_data=True, location="g.onnx.data",
                    size_threshold=0)
    x = {"x": rng.standard_normal(64).astype(np.float32)}
    want = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"]).run(None, x)[0]
    loaded = load_graph_bytes(tmp_path, GraphSpec("g", "g.onnx", "g.onnx.data", (), ()), {}, verify=False)
    assert sorted(loaded.initializer_names) == ([] if inline_bytes else ["w16", "w32", "wb", "wbf", "wi"])
    (tmp_path / "g.onnx").unlink()
    (tmp_path / "g.onnx.data").unlink()
    session = ort.InferenceSession(loaded.model, sess_options=loaded.add_to(ort.SessionOptions()),
                                   providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, x)[0], want)
