"""A `smolvla_cls` checkpoint loads where it did not train: another machine or account (another preset cache),
and the other supported lerobot release (0.4.4 <-> 0.6.x). Runs in both environments (`make test-lerobot-0.6`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.model_fixtures import tiny_config

pytest.importorskip("lerobot.policies.factory")
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
