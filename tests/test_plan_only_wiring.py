"""act_cls_wiring="plan_only": act-CLS depends on the plan rows alone (smolvla_cls/plan_pass.py)."""

import pytest
import torch

from smolvla_cls.configuration_smolvla_cls import ConfigError
from smolvla_cls.plan_pass import remainder_mask, sample_remainders
from tests.model_fixtures import random_batch, tiny_config, tiny_policy


def _act_cls(policy, seed: int, actions: torch.Tensor, plan_valid=None):
    batch = random_batch(policy.config, batch_size=actions.shape[0], seed=seed, with_action=False)
    _, act = policy.cls_embeddings(batch, actions=actions, plan_valid=plan_valid)
    return act


def test_config_refuses_unknown_wiring():
    with pytest.raises(ConfigError, match="act_cls_wiring"):
        tiny_config(act_cls_wiring="obs")


def test_remainder_mask_and_refusal():
    m = remainder_mask(torch.tensor([1, 3, 4]), 4)
    assert m.tolist() == [[True, False, False, False], [True, True, True, False], [True, True, True, True]]
    with pytest.raises(ValueError, match="lengths"):
        remainder_mask(torch.tensor([0]), 4)
    lengths = sample_remainders(500, 6, generator=torch.Generator().manual_seed(0))
    assert lengths.min().item() == 1 and lengths.max().item() == 6


def test_plan_only_act_cls_ignores_the_observation_but_not_the_plan():
    policy = tiny_policy(act_cls_wiring="plan_only").eval()
    actions = torch.randn(2, policy.config.chunk_size, 2, generator=torch.Generator().manual_seed(1))
    a, b = _act_cls(policy, 0, actions), _act_cls(policy, 5, actions)
    assert torch.equal(a, b)  # different images, state and tokens: identical act-CLS
    c = _act_cls(policy, 0, actions.flip(0))
    assert (a - c.flip(0)).abs().max() < 1e-5 and (a - c).abs().max() > 1e-4


def test_seed_wiring_act_cls_sees_the_observation():
    policy = tiny_policy(act_cls_wiring="seed").eval()
    actions = torch.randn(2, policy.config.chunk_size, 2, generator=torch.Generator().manual_seed(1))
    assert (_act_cls(policy, 0, actions) - _act_cls(policy, 5, actions)).abs().max() > 1e-4


def test_padding_rows_of_a_remainder_are_invisible():
    policy = tiny_policy(act_cls_wiring="plan_only").eval()
    t = policy.config.chunk_size
    actions = torch.randn(1, t, 2, generator=torch.Generator().manual_seed(2))
    valid = remainder_mask(torch.tensor([3]), t)
    other = actions.clone()
    other[:, 3:] = 7.0  # only padding rows differ
    a, b = _act_cls(policy, 0, actions, valid), _act_cls(policy, 0, other, valid)
    assert (a - b).abs().max() < 1e-6
    assert (a - _act_cls(policy, 0, actions)).abs().max() > 1e-4  # the full plan is a different input


def test_plan_only_vicreg_trains_the_plan_pass():
    policy = tiny_policy(act_cls_wiring="plan_only", train_delta_expert=True).train()
    loss, info = policy.forward(random_batch(policy.config, batch_size=4, seed=3))
    loss.backward()
    assert torch.isfinite(loss) and "vicreg_loss" in info
    assert policy.model.suf_cls_param.grad is not None and policy.model.suf_cls_param.grad.abs().sum() > 0
    assert policy.model.pre_cls_param.grad.abs().sum() > 0
