"""Export of the tiny preset: TensorRT readiness, ORT-vs-PyTorch parity (fresh inputs every run),
determinism, runtime-vs-PyTorch actions, and bad-input handling."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from export.graphs.checkpoint_loading import ExportInputError, LoadedPolicy, load_checkpoint
from export.graphs.gate_calibration import auto_cap
from export.graphs.onnx_checks import check_graph_file, graph_problems
from export.graphs.onnx_export import export_artifacts
from export.graphs.parity import OrtRunner, chunk, run_parity
from tests.export_reference import pytorch_actions, runtime_actions
from tests.model_fixtures import tiny_policy

GRAPHS = ("prefix", "main_expert", "delta_expert")


def _loaded(seed=0):
    policy = tiny_policy(seed=seed, chunk=8)
    with torch.no_grad():  # a trained-looking delta expert (its output projection starts at zero)
        torch.nn.init.normal_(policy.model.delta_action_out_proj.weight, std=0.05)
    policy.eval()
    stats = {"observation.state": {"mean": np.array([0.5, 0.5]), "std": np.array([0.2, 0.2]),
                                   "min": np.array([0.0, 0.0]), "max": np.array([1.0, 1.0])},
             "action": {"mean": np.array([0.0, 0.001]), "std": np.array([0.04, 0.03]),
                        "min": np.array([-0.06, -0.06]), "max": np.array([0.06, 0.06])}}
    return LoadedPolicy(policy, "test", "tiny", stats)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    loaded = _loaded()
    out = tmp_path_factory.mktemp("art") / "onnx"
    manifest = export_artifacts(loaded, out, calibrate=True, calib_episodes=2, progress=False)
    return loaded, out, manifest


def test_graphs_are_tensorrt_ready(exported):
    _, out, manifest = exported
    for g in GRAPHS:
        assert check_graph_file(out / f"{g}.onnx") == []
        assert manifest["graphs"][g]["file"] == f"{g}.onnx"
    assert manifest["versions"]["opset"] >= 17


def test_checker_catches_float64_and_unsupported_ops():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [1, 1])
    nodes = [helper.make_node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE), helper.make_node("NonZero", ["d"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 18)])
    problems = " ".join(graph_problems(model))
    assert "float64" in problems and "NonZero" in problems
    b = helper.make_tensor_value_info("b", TensorProto.BOOL, [2])
    where = helper.make_node("Where", ["b", "b", "b"], ["w"])
    w_out = helper.make_tensor_value_info("w", TensorProto.BOOL, [2])
    bool_model = helper.make_model(helper.make_graph([where], "g", [b], [w_out]),
                                   opset_imports=[helper.make_opsetid("", 18)])
    assert "Where on bool" in " ".join(graph_problems(bool_model))


def test_parity_fresh_inputs(exported):
    loaded, out, _ = exported
    report = run_parity(loaded.policy.model, out, loaded.stats["action"]["std"], trials=2, seed=None)
    bad = [r for r in report["results"] if not r["ok"]]
    assert report["ok"], bad
    assert {r["what"].split("#")[0] for r in report["results"]} >= {"prefix.obs_cls", "delta_expert.act_cls", "main_expert.v_t"}


def test_manifest_contract(exported):
    _loaded, out, manifest = exported
    d = manifest["dims"]
    assert d["chunk_size"] == 8 and d["num_cls_prefix"] == 2 and d["action_dim"] == 2
    assert manifest["normalization"]["action"]["std"] == [0.04, 0.03]
    low, high = manifest["action_bounds"]["low"], manifest["action_bounds"]["high"]
    assert low[0] < -0.06 and high[0] > 0.06
    assert set(manifest["files"]) >= {f"{g}.onnx" for g in GRAPHS} | {"tokenizer.json"}
    for name, entry in manifest["files"].items():
        assert (out / name).stat().st_size == entry["bytes"]
    for metric in ("drift", "consistency"):
        assert manifest["gate"][metric]["default_threshold"] > 0
    n = d["n_action_steps"]  # default: the higher-AUROC CLS gate with the auto plan-age cap round(0.5 n)
    assert manifest["gate"]["default"] in (f"any:drift,interval:{auto_cap(n)}", f"any:consistency,interval:{auto_cap(n)}")
    k_shape = manifest["graphs"]["prefix"]["outputs"][0]["shape"]
    assert k_shape == [d["num_layers"], 1, d["prefix_len"], d["kv_heads"], d["head_dim"]]


def test_export_is_deterministic(exported, tmp_path):
    loaded, out, _ = exported
    again = tmp_path / "again"
    export_artifacts(loaded, again, calibrate=False, progress=False)
    a, b = OrtRunner(out), OrtRunner(again)
    rng = np.random.default_rng()
    cfg = loaded.policy.config
    length = cfg.tokenizer_max_length
    inputs = (rng.random((1, 1, 3, 64, 64), dtype=np.float32), rng.integers(7, 40, (1, length)).astype(np.int64),
              np.arange(length)[None] < max(1, length // 2), rng.standard_normal((1, 32), dtype=np.float32))
    noise = rng.standard_normal((1, cfg.chunk_size, cfg.max_action_dim)).astype(np.float32)
    for x, y in zip(chunk(a, inputs, noise, cfg.num_steps), chunk(b, inputs, noise, cfg.num_steps), strict=True):
        assert np.array_equal(x, y)


def test_runtime_actions_equal_pytorch(exported):
    """The edge runtime (onnxruntime backend) emits the PyTorch chain's actions for the same obs + noise."""
    loaded, out, _ = exported
    cfg = loaded.policy.config
    noise = np.random.default_rng().standard_normal((1, cfg.chunk_size, cfg.max_action_dim)).astype(np.float32)
    for refine in (False, True):
        want = pytorch_actions(loaded, out, noise, refine)
        got = runtime_actions(out, noise, refine)
        # with refine, kept ticks refine the plan again against the new K/V: only the resample tick is comparable
        n = 1 if refine else 3
        np.testing.assert_allclose(got[:n], want[:n], atol=1e-3)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "export.graphs.onnx_export", *args], check=False, capture_output=True,
                          text=True, timeout=300)


def test_bad_checkpoints_fail_with_one_line(tmp_path):
    missing = _cli("--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o1"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr.strip().splitlines()[-1]
    other = tmp_path / "act"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"type": "act"}))
    (other / "model.safetensors").write_bytes(b"x")
    res = _cli("--checkpoint", str(other), "--out", str(tmp_path / "o2"))
    assert res.returncode == 2 and "'act'" in res.stderr
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    with pytest.raises(ExportInputError, match="corrupt|could not be loaded|normaliser"):
        corrupt = tmp_path / "corrupt"
        tiny_policy().save_pretrained(corrupt)
        (corrupt / "model.safetensors").write_bytes(b"not safetensors")
        load_checkpoint(corrupt)


def test_failed_export_leaves_no_folder(tmp_path, monkeypatch):
    import export.graphs.onnx_export as mod

    calls = {"n": 0}
    original = mod.export_graph

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected failure")
        return original(*args, **kwargs)

    monkeypatch.setattr(mod, "export_graph", flaky)
    with pytest.raises(RuntimeError, match="injected"):
        export_artifacts(_loaded(), tmp_path / "onnx", calibrate=False, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_fp16_folder_of_the_real_export_passes_its_gates_and_stays_tensorrt_ready(exported, tmp_path):
    """The calibrated fp16 lowering of a real SmolVLA-CLS export: every gate met against fp32, graphs still
    TensorRT-ready (op coverage, no float64), norm statistics and rotary phases kept fp32, weights in fp16."""
    from export.precision.mixed_precision import lower_artifacts

    _, out, _ = exported
    raw = lower_artifacts(out, tmp_path / "onnx-fp16", samples=2, trials=2, progress=False)
    rec = raw["mixed_precision"]
    assert all(v["cosine"] >= v["gate"] for v in rec["validation"]["worst"].values())
    for g in GRAPHS:
        path = tmp_path / "onnx-fp16" / f"{g}.onnx"
        assert check_graph_file(path) == []
        stats = rec["graphs"][g]
        assert stats["low_nodes"] > stats["fp32_nodes"] > 0
        assert {"Pow", "ReduceMean", "Sqrt"} <= set(stats["fp32_ops"])
        import onnx

        model = onnx.load(str(path))
        assert any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer)


def test_bf16_folder_falls_back_to_fp32_sections_until_held_out_gates_pass(exported, tmp_path):
    """bf16 (8-bit mantissa) may miss a gate; the fallback keeps module sections fp32 until it passes, confirms
    on held-out observations, and the kept sections really are fp32 in the written graphs."""
    import onnx

    from export.precision.mixed_precision import AccuracyGateError, lower_artifacts
    from export.precision.precision_lowering import LOW_TYPES, node_section

    _, out, _ = exported
    try:
        raw = lower_artifacts(out, tmp_path / "onnx-bf16", precision="bf16", samples=2, trials=2, progress=False)
    except AccuracyGateError as exc:  # allowed outcome, but then it must say why, with the table
        assert "nothing written" in str(exc) and "FAIL" in str(exc)
        assert not (tmp_path / "onnx-bf16").exists()
        return
    rec = raw["mixed_precision"]
    assert all(v["cosine"] >= v["gate"] for v in rec["validation"]["worst"].values())
    if rec["auto_kept_fp32"]:
        assert any(line.startswith("held-out") for line in rec["validation"]["table"])
    for kept in rec["auto_kept_fp32"]:
        model = onnx.load(str(tmp_path / "onnx-bf16" / f"{kept['graph']}.onnx"))
        inits = {i.name: i.data_type for i in model.graph.initializer}
        in_section = [n for n in model.graph.node if node_section(n) == kept["section"]]
        assert in_section
        assert not any(inits.get(t) == LOW_TYPES["bf16"] for n in in_section for t in n.input)


@pytest.mark.parametrize("stop, match", [
    (None, "default stop action"),  # zeros outside a position-controlled robot's range
    ([0.1, 0.5], "--stop-action: value 0.1"),
    ([float("nan"), 0.5], "--stop-action: value nan"),
])
def test_stop_action_outside_bounds_is_refused_before_export(tmp_path, stop, match):
    """The runtime refuses a stop action outside action_bounds, so export refuses to write such a folder."""
    loaded = _loaded()
    stats = dict(loaded.stats)
    stats["action"] = {**stats["action"], "min": np.array([0.3, 0.3]), "max": np.array([0.9, 0.9])}
    loaded = LoadedPolicy(loaded.policy, "test", "tiny", stats)
    with pytest.raises(ExportInputError, match=re.escape(match)):
        export_artifacts(loaded, tmp_path / "out", calibrate=False, progress=False, stop_action=stop)
    assert not (tmp_path / "out").exists()


def test_default_gate_rule_follows_calibration_auroc_and_accepts_overrides():
    from export.graphs.gate_calibration import with_default_gate

    def cal(d, c, n=(27, 310)):
        return {"drift": {"auroc": d, "n_changed": n[0], "n_unchanged": n[1]},
                "consistency": {"auroc": c, "n_changed": n[0], "n_unchanged": n[1]}}

    def default(g, *args):
        return with_default_gate(g, *args)["default"]

    assert default(cal(0.95, 0.80)) == "any:drift,interval:5"  # auto cap for n = 10: round(0.5 × 10)
    assert default(cal(0.90, 0.92)) == "any:consistency,interval:5"
    assert default(cal(0.90, 0.90), "auto", "0") == "consistency"  # tie: consistency; 0 = no cap
    # drift higher within the noise (a demo export: 0.957 vs 0.954 on 27 / 310 pairs): consistency; far beyond it: drift
    assert default(cal(0.957, 0.954), "auto", "0") == "consistency"
    assert default(cal(0.975, 0.954, (2700, 31000)), "auto", "0") == "drift"
    assert default(cal(None, 0.99), "auto", "0") == "consistency"
    assert default(cal(0.99, None), "auto", "0") == "drift"  # consistency uncalibrated
    assert default(cal(0.95, 0.80), "any:drift,consistency") == "any:drift,consistency,interval:5"
    assert default(cal(0.95, 0.80), "consistency", "4", 5) == "any:consistency,interval:4"
    assert default(cal(0.95, 0.80), "any:drift,interval:3") == "any:drift,interval:3"  # its own cap kept
    assert default({**cal(0.9, 0.9), "jump": {}}, "jump", "2") == "any:jump,interval:2"
    for bad, match in ((("pixel",), "--default-gate"), (("drift:0.1",), "--default-gate"),
                       (("jump",), "gate.jump"), (("drift", "11"), "--default-cap"), (("drift", "x"), "--default-cap"),
                       (("drift", "-1"), "--default-cap"), (("any:drift,interval:3", "4"), "already has its cap"),
                       (("any:drift,interval:12",), "out of range")):
        with pytest.raises(ValueError, match=match):
            with_default_gate(cal(0.9, 0.9), *bad)


def test_default_gate_help_states_the_rule_auto_applies(capsys):
    """`--help` described auto as "the higher calibration AUROC" after the rule became consistency unless drift
    wins beyond the noise (docs/03): a user reading the help would expect drift on a 0.957 vs 0.954 export."""
    from export.graphs.onnx_export import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    part = text[text.index("--default-gate DEFAULT_GATE the"):text.index("--default-cap auto|K|0 plan-age")]
    assert "consistency unless drift" in part and "standard error" in part and "uncalibrated" in part, part


def test_auroc_standard_error_matches_a_resampled_auroc():
    """Hanley & McNeil's SE against the spread of AUROCs of fresh samples from two normal distributions: close, and
    on the cautious side where it errs (it assumes exponential scores; high AUROCs of normal ones spread less)."""
    from export.graphs.gate_calibration import auroc, auroc_se

    rng = np.random.default_rng(0)
    for shift, n_pos, n_neg in ((1.0, 27, 310), (2.5, 27, 310), (0.5, 200, 200)):
        draws = [auroc(list(rng.normal(0, 1, n_neg)), list(rng.normal(shift, 1, n_pos))) for _ in range(400)]
        a = float(np.mean(draws))
        assert 0.9 * np.std(draws) <= auroc_se(a, n_pos, n_neg) <= 1.6 * np.std(draws)


def test_auto_cap_is_half_the_plan():
    assert [auto_cap(n) for n in (1, 2, 5, 8, 10, 50)] == [1, 1, 3, 4, 5, 25]


def test_bad_default_gate_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ExportInputError, match="--default-cap"):
        export_artifacts(_loaded(), tmp_path / "a", calibrate=False, progress=False, default_cap="99")
    # jump needs gate.jump, which an uncalibrated export does not have: refused naming it, no folder left
    with pytest.raises(ExportInputError, match="gate.jump"):
        export_artifacts(_loaded(), tmp_path / "b", calibrate=False, progress=False, default_gate="any:jump,interval:3")
    assert list(tmp_path.iterdir()) == []


def test_the_runtime_reads_the_exported_capped_default(exported):
    from runtime.gate import AnyGate, IntervalGate
    from runtime.policy import EdgePolicy

    _, out, manifest = exported
    gate = EdgePolicy(out).gate
    assert isinstance(gate, AnyGate) and isinstance(gate.parts[-1], IntervalGate)
    cls, cap = gate.parts
    assert cap.k == auto_cap(manifest["dims"]["n_action_steps"])
    assert cls.threshold == pytest.approx(manifest["gate"][cls.name]["default_threshold"])
