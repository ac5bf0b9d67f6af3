"""`python -m export.graphs.parity` with a checkpoint the folder was not exported from: one line naming what
differs, exit 2 (before: an onnxruntime INVALID_ARGUMENT traceback on the first graph)."""

from __future__ import annotations

import json

import pytest
import torch

from export.graphs.graph_wrappers import example_inputs
from export.graphs.parity import artifact_mismatch, main
from runtime.manifest import GRAPH_NAMES
from tests.model_fixtures import tiny_policy


def _folder(tmp_path, model):
    """A manifest (graphs' input shapes, dims) as the export writes it for `model`, and placeholder graph files."""
    cfg = model.config
    inputs = example_inputs(model, len(cfg.image_features), torch.Generator().manual_seed(0))
    graphs = {g: {"inputs": [{"name": f"in{i}", "shape": list(x.shape)} for i, x in enumerate(inputs[g])]}
              for g in GRAPH_NAMES}
    dims = {"num_cls_prefix": model.num_prefix_cls, "num_cls_suffix": model.num_suffix_cls,
            "n_action_steps": cfg.n_action_steps, "num_steps": cfg.num_steps,
            "action_dim": cfg.action_feature.shape[0], "state_dim": cfg.robot_state_feature.shape[0]}
    for g in GRAPH_NAMES:
        (tmp_path / f"{g}.onnx").write_bytes(b"")
    (tmp_path / "manifest.json").write_text(json.dumps({"graphs": graphs, "dims": dims}))
    return tmp_path


VARIANTS = [dict(chunk=6), dict(chunk=8), dict(chunk=8, n_action_steps=4), dict(chunk=6, num_cls_prefix=3,
            num_cls_suffix=3), dict(chunk=6, state_dim=6, action_dim=6), dict(chunk=6, cameras=2)]


@pytest.mark.parametrize("a", range(len(VARIANTS)))
@pytest.mark.parametrize("b", range(len(VARIANTS)))
def test_a_folder_matches_only_its_own_checkpoint(tmp_path, a, b):
    exported, other = tiny_policy(**VARIANTS[a]).model, tiny_policy(**VARIANTS[b]).model
    folder = _folder(tmp_path, exported)
    assert artifact_mismatch(exported, folder) is None
    assert (artifact_mismatch(other, folder) is None) == (VARIANTS[a] == VARIANTS[b])


def test_a_missing_graph_is_named(tmp_path):
    model = tiny_policy(chunk=6).model
    folder = _folder(tmp_path, model)
    (folder / "plan_encoder.onnx").unlink()
    assert "plan_encoder" in artifact_mismatch(model, folder)


def test_the_cli_names_it_in_one_line(tmp_path, capsys, monkeypatch):
    import export.graphs.checkpoint_loading as loading
    from export.graphs.checkpoint_loading import LoadedPolicy

    policy = tiny_policy(chunk=8, n_action_steps=4)
    folder = _folder(tmp_path, tiny_policy(chunk=6).model)
    stats = {k: {s: torch.zeros(2).numpy() + (1 if s in ("std", "max") else 0) for s in ("mean", "std", "min", "max")}
             for k in ("observation.state", "action")}
    monkeypatch.setattr(loading, "load_checkpoint", lambda path: LoadedPolicy(policy, str(path), "tiny", stats))
    assert main(["--checkpoint", str(tmp_path / "ckpt"), "--artifacts", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was not exported from" in err[0] and "Traceback" not in err[0]


def _cli_with_folder(tmp_path, monkeypatch, folder):
    """Run the parity CLI on `folder` with a stand-in checkpoint whose shapes pass `artifact_mismatch`."""
    import export.graphs.checkpoint_loading as loading
    from export.graphs import parity
    from export.graphs.checkpoint_loading import LoadedPolicy

    stats = {k: {s: torch.zeros(2).numpy() + (1 if s in ("std", "max") else 0) for s in ("mean", "std", "min", "max")}
             for k in ("observation.state", "action")}
    monkeypatch.setattr(loading, "load_checkpoint",
                        lambda path: LoadedPolicy(tiny_policy(chunk=6), str(path), "tiny", stats))
    monkeypatch.setattr(parity, "artifact_mismatch", lambda model, artifacts: None)
    return main(["--checkpoint", str(tmp_path / "ckpt"), "--artifacts", str(folder)])


def _damaged(tmp_path, how):
    """A copy of a contract-valid folder with prefix.onnx damaged: 'truncated' (hashes now wrong), 'restamped'
    (garbage whose hash the manifest records: onnxruntime cannot load it) or 'derived' (an int8 folder)."""
    import shutil

    from export.int8.quantization import quantize_artifacts
    from runtime.fingerprint import file_records
    from tests.fake_artifacts import (
        INT8_DRIFT_THRESHOLD,
        cached_fake_artifacts,
        load_manifest_dict,
        write_manifest_dict,
    )

    folder = tmp_path / "art"
    if how == "derived":
        quantize_artifacts(cached_fake_artifacts(drift_threshold=INT8_DRIFT_THRESHOLD), folder, progress=False)
        return folder
    shutil.copytree(cached_fake_artifacts(), folder)
    graph = folder / "prefix.onnx"
    graph.write_bytes(graph.read_bytes()[:500])
    if how == "restamped":
        manifest = load_manifest_dict(folder)
        manifest["files"] = {k: v for k, v in file_records(folder).items() if k != "manifest.json"}
        write_manifest_dict(folder, manifest)
    return folder


@pytest.mark.parametrize("how, named", [("truncated", "prefix.onnx"), ("restamped", "prefix"),
                                        ("derived", "quantiz")])
def test_a_damaged_or_derived_folder_is_named_in_one_line(tmp_path, capsys, monkeypatch, how, named):
    """Before: a damaged graph died in an onnxruntime INVALID_PROTOBUF traceback, and a folder whose files no
    longer match its manifest (which the runtime refuses) was compared anyway."""
    folder = _damaged(tmp_path, how)
    assert _cli_with_folder(tmp_path, monkeypatch, folder) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0] and "--artifacts" in err[0], err


def test_parity_inputs_with_a_partial_plan_never_draw_a_full_one():
    """Parity's first trial must feed the plan encoder a remainder shorter than the chunk: with a full plan a
    plan encoder that lets padding rows into act_cls passes (before, ~1 % of default runs drew two full plans)."""
    model = tiny_policy().model
    for seed in range(64):
        _, valid = example_inputs(model, len(model.config.image_features), torch.Generator().manual_seed(seed),
                                  partial_plan=True)["plan_encoder"]
        assert 1 <= int(valid.sum()) < model.config.chunk_size
