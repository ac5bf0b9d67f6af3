"""The PyTorch closed-loop adapter on an untrained tiny checkpoint (no training needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simtask import ReachEnv, TaskConfig, evaluate_policy
from smolvla_cls.torch_policy import TorchPolicy

CHUNK = 6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained policy saved in lerobot's pretrained_model layout with its pre/post processors."""
    from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
    from lerobot.policies.factory import make_pre_post_processors

    from smolvla_cls.configuration_smolvla_cls import SmolVLACLSConfig
    from smolvla_cls.modeling_smolvla_cls import SmolVLACLSPolicy
    from smolvla_cls.presets import POLICY_OVERRIDES

    out = tmp_path_factory.mktemp("ckpt") / "pretrained_model"
    cfg = SmolVLACLSConfig(
        vlm_preset="tiny", **POLICY_OVERRIDES["tiny"], device="cpu", chunk_size=CHUNK, n_action_steps=3,
        num_steps=2, train_expert_only=False, freeze_vision_encoder=False, push_to_hub=False,
        input_features={"observation.images.top": PolicyFeature(FeatureType.VISUAL, (3, 64, 64)),
                        "observation.state": PolicyFeature(FeatureType.STATE, (2,))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (2,))},
    )
    assert cfg.normalization_mapping["ACTION"] == NormalizationMode.MEAN_STD
    torch.manual_seed(0)
    policy = SmolVLACLSPolicy(cfg)
    stats = {"observation.state": {"mean": np.full(2, 0.5, np.float32), "std": np.full(2, 0.25, np.float32)},
             "action": {"mean": np.zeros(2, np.float32), "std": np.full(2, 0.04, np.float32)}}
    pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    policy.save_pretrained(out)
    pre.save_pretrained(out)
    post.save_pretrained(out)
    return out


def test_act_gives_finite_actions_of_shape_2(checkpoint):
    policy = TorchPolicy(checkpoint)
    obs = ReachEnv(TaskConfig()).reset(seed=1)
    for _ in range(4):  # crosses a chunk boundary (n_action_steps=3)
        action = policy.act(obs)
        assert action.shape == (2,) and action.dtype == np.float32 and np.all(np.isfinite(action))


def test_reset_makes_episodes_deterministic(checkpoint):
    policy = TorchPolicy(checkpoint, noise_seed=3)
    obs = ReachEnv(TaskConfig()).reset(seed=2)
    first = [policy.act(obs) for _ in range(4)]
    policy.reset()
    second = [policy.act(obs) for _ in range(4)]
    np.testing.assert_array_equal(np.stack(first), np.stack(second))


def test_predict_chunk_matches_act_and_depends_on_noise(checkpoint):
    policy = TorchPolicy(checkpoint, n_action_steps=CHUNK)
    obs = ReachEnv(TaskConfig()).reset(seed=4)
    noise = np.random.default_rng(0).standard_normal((CHUNK, policy.config.max_action_dim)).astype(np.float32)
    chunk = policy.predict_chunk(obs, noise)
    assert chunk.shape == (CHUNK, 2) and np.all(np.isfinite(chunk))
    np.testing.assert_allclose(policy.predict_chunk(obs, noise), chunk, atol=1e-6)
    assert not np.allclose(policy.predict_chunk(obs, noise + 1.0), chunk)
    # act() with the same noise stream replays the first chunk's actions
    policy.reset()
    g = torch.Generator().manual_seed(0)
    stream = torch.randn((1, CHUNK, policy.config.max_action_dim), generator=g).numpy()[0]
    np.testing.assert_allclose(policy.act(obs), policy.predict_chunk(obs, stream)[0], atol=1e-5)


def test_closed_loop_runs_and_untrained_variant_loads(checkpoint):
    report = evaluate_policy(TorchPolicy(checkpoint, untrained=True, init_seed=1), n_episodes=1,
                             config=TaskConfig(max_steps=8, perturb_window=(2, 4)))
    assert report.n_episodes == 1


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        TorchPolicy(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="config.json"):
        TorchPolicy(tmp_path / "empty")
