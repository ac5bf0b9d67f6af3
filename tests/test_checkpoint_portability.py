"""A `smolvla_cls` checkpoint loads where it did not train: another machine or account (another preset cache),
and the other supported lerobot release (0.4.4 <-> 0.6.x). Runs in both environments (`make test-lerobot-0.6`)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tests.model_fixtures import tiny_config

pytest.importorskip("lerobot.policies.factory")
TASK = "reach the red target"
STATS = {"observation.state": {"mean": np.full(2, 0.5, np.float32), "std": np.full(2, 0.25, np.float32)},
         "action": {"mean": np.zeros(2, np.float32), "std": np.full(2, 0.04, np.float32)}}


def _save(out, *, processors=None):
    """An untrained tiny checkpoint in lerobot's pretrained_model layout (policy + pre/post processors)."""
    from lerobot.policies.factory import make_pre_post_processors

    from smolvla_cls.modeling_smolvla_cls import SmolVLACLSPolicy

    cfg = tiny_config(n_action_steps=3, num_steps=2)
    torch.manual_seed(0)
    SmolVLACLSPolicy(cfg).save_pretrained(out)
    for pipeline in (processors or make_pre_post_processors)(cfg, dataset_stats=STATS):
        pipeline.save_pretrained(out)
    return out


def _tokens(preprocessor) -> list[int]:
    batch = preprocessor({"observation.state": torch.zeros(1, 2), "observation.images.top": torch.zeros(1, 3, 64, 64),
                          "task": [TASK]})
    return batch["observation.language.tokens"][0].tolist()


@pytest.fixture
def other_machine(tmp_path, monkeypatch):
    """Save a checkpoint with one preset cache, then stand on a machine whose cache is elsewhere (the
    first one gone), as when a checkpoint is copied to another computer, account or lerobot environment."""
    def move(save_with=None):
        monkeypatch.setenv("SMOLVLA_CLS_CACHE", str(tmp_path / "cache_where_trained"))
        ckpt = _save(tmp_path / "pretrained_model", processors=save_with)
        shutil.rmtree(tmp_path / "cache_where_trained")
        monkeypatch.setenv("SMOLVLA_CLS_CACHE", str(tmp_path / "cache_here"))
        return ckpt
    return move


def test_saved_preprocessor_names_the_preset_not_this_machines_cache(other_machine):
    ckpt = other_machine()
    saved = json.dumps(json.loads((ckpt / "policy_preprocessor.json").read_text()))
    assert "cache_where_trained" not in saved and '"vlm_preset": "tiny"' in saved


def test_lerobots_processor_factory_loads_a_checkpoint_moved_to_another_machine(other_machine):
    """What `lerobot-train --policy.path=...`, `lerobot-eval` and our TorchPolicy call: the tokenizer step found
    the training machine's absolute preset path (a hub-id error deep in huggingface_hub) before."""
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import make_pre_post_processors

    from smolvla_cls.presets import build_tokenizer

    ckpt = other_machine()
    cfg = PreTrainedConfig.from_pretrained(ckpt)
    pre, _ = make_pre_post_processors(cfg, pretrained_path=str(ckpt))
    want = build_tokenizer()(TASK + "\n", padding="max_length", max_length=cfg.tokenizer_max_length)["input_ids"]
    assert _tokens(pre) == want


def test_torch_policy_loads_an_older_checkpoint_that_saved_a_machine_path(other_machine):
    """Checkpoints saved before the fix hold lerobot's own tokenizer step with the absolute path: TorchPolicy
    (closed-loop evaluation, training report) points it at this machine's preset folder."""
    from lerobot.policies.smolvla import processor_smolvla

    from smolvla_cls.torch_policy import TorchPolicy

    smolvla = processor_smolvla.make_smolvla_pre_post_processors
    ckpt = other_machine(save_with=getattr(smolvla, "smolvla_original", smolvla))  # SmolVLA's own, unrouted
    assert "cache_where_trained" in (ckpt / "policy_preprocessor.json").read_text()  # the old format
    policy = TorchPolicy(ckpt)
    obs = {"observation.images.top": np.zeros((64, 64, 3), np.uint8), "observation.state": np.zeros(2, np.float32),
           "task": TASK}
    assert np.all(np.isfinite(policy.act(obs)))


@pytest.mark.parametrize("revision", [None, "main"])
def test_a_config_saved_by_lerobot_06_loads(tmp_path, revision):
    """lerobot 0.6 saves `pretrained_revision` in config.json; lerobot 0.4.4's parser refused the whole file
    ("The fields `pretrained_revision` are not valid for SmolVLACLSConfig")."""
    from lerobot.configs.policies import PreTrainedConfig

    from smolvla_cls.configuration_smolvla_cls import SmolVLACLSConfig

    out = tmp_path / "ckpt"
    out.mkdir()
    tiny_config()._save_pretrained(out)
    saved = json.loads((out / "config.json").read_text())
    saved["pretrained_revision"] = revision
    (out / "config.json").write_text(json.dumps(saved))
    loaded = PreTrainedConfig.from_pretrained(out)
    assert isinstance(loaded, SmolVLACLSConfig) and loaded.chunk_size == saved["chunk_size"]


def test_config_fields_unknown_to_this_release_are_named_on_one_line(tmp_path):
    """A checkpoint from a newer lerobot or smolvla_cls: TorchPolicy and the export say which fields, in one line."""
    from export.graphs.checkpoint_loading import ExportInputError, load_checkpoint
    from smolvla_cls.torch_policy import TorchPolicy

    ckpt = _save(tmp_path / "pretrained_model")
    saved = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**saved, "frobnicate_steps": 3, "zeta_mode": "x"}))
    with pytest.raises(SystemExit) as exc:
        TorchPolicy(ckpt)
    with pytest.raises(ExportInputError) as export_exc:
        load_checkpoint(ckpt)
    for message in (str(exc.value.code), str(export_exc.value)):
        assert "frobnicate_steps" in message and "zeta_mode" in message and "\n" not in message, message
        assert "config.json" in message and "lerobot" in message


def _fresh_python(code: str, tmp_path) -> str:
    """`code` in a new interpreter (import order and module reloads are process-wide); returns its stdout."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "SMOLVLA_CLS_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


_TOKENIZER_STEPS = """
from lerobot.policies.factory import make_pre_post_processors
from tests.model_fixtures import tiny_config
pre, _ = make_pre_post_processors(tiny_config(), dataset_stats=None)
print([type(s).__name__ for s in pre.steps if 'Tokenizer' in type(s).__name__])
"""


@pytest.mark.parametrize("first", ["import lerobot.policies.factory", ""])
def test_lerobots_factory_builds_our_processors_after_importing_only_the_config(tmp_path, first):
    """lerobot 0.6 finds our factory from the config class alone; 0.4.4 was routed only once something imported
    `modeling_smolvla_cls`, so a script that imported just `SmolVLACLSConfig` saved the training machine's path."""
    out = _fresh_python(f"{first}\nfrom smolvla_cls import SmolVLACLSConfig\n{_TOKENIZER_STEPS}", tmp_path)
    assert out.strip().splitlines()[-1] == "['PresetTokenizerProcessorStep']", out


def test_processor_module_reloads_and_routes_once(tmp_path):
    """Reloading the processor module (notebooks, importlib.reload) raised "already registered"; the 0.4.4 route
    must still wrap lerobot's own factory, never itself, and plain SmolVLA keeps its own pipelines."""
    out = _fresh_python("""
import importlib
import smolvla_cls.processor_smolvla_cls as ours
from lerobot.policies.smolvla import processor_smolvla
from lerobot.processor import ProcessorStepRegistry
importlib.reload(ours)
importlib.reload(ours)
routed = processor_smolvla.make_smolvla_pre_post_processors
original = getattr(routed, 'smolvla_original', routed)
assert not hasattr(original, 'smolvla_original'), 'the route wraps itself'
assert ProcessorStepRegistry.get(ours.PRESET_TOKENIZER) is ours.PresetTokenizerProcessorStep
from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
from lerobot.policies.factory import make_pre_post_processors
from smolvla_cls.presets import materialize_preset
plain, _ = make_pre_post_processors(SmolVLAConfig(vlm_model_name=str(materialize_preset('tiny'))), dataset_stats=None)
print([type(s).__name__ for s in plain.steps if 'Tokenizer' in type(s).__name__])
""" + _TOKENIZER_STEPS, tmp_path)
    assert out.strip().splitlines()[-2:] == ["['TokenizerProcessorStep']", "['PresetTokenizerProcessorStep']"], out
