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


def test_irrelevant_changes_keep_range_and_differ_by_kind():
    import numpy as np

    from simtask.image_changes import KINDS, perturb_uint8_hwc
    from smolvla_cls.irrelevant_changes import random_change

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    outs = {k: perturb_uint8_hwc(img, k, rng) for k in KINDS}
    for k, out in outs.items():
        assert out.dtype == np.uint8 and out.shape == img.shape and not np.array_equal(out, img), k
    chw = img.transpose(2, 0, 1).astype(np.float32) / 255.0
    assert random_change(chw, 0.0, rng) is chw
    changed = random_change(chw, 1.0, rng)
    assert changed.min() >= 0.0 and changed.max() <= 1.0 and not np.array_equal(changed, chw)
    with pytest.raises(ValueError, match="kind"):
        perturb_uint8_hwc(img, "blur", rng)
    with pytest.raises(ValueError, match="probability"):
        random_change(chw, 1.5, rng)


def test_plan_pass_ignores_padded_action_dims():
    """The main expert leaves arbitrary values in the padded action dims: they must not reach act-CLS."""
    policy = tiny_policy(act_cls_wiring="plan_only").eval()
    model, t = policy.model, policy.config.chunk_size
    g = torch.Generator().manual_seed(4)
    plan = torch.zeros(1, t, policy.config.max_action_dim)
    plan[..., :2] = torch.randn(1, t, 2, generator=g)
    noisy = plan.clone()
    noisy[..., 2:] = torch.randn(1, t, policy.config.max_action_dim - 2, generator=g)
    valid = torch.ones(1, t, dtype=torch.bool)
    with torch.no_grad():
        a, b = model.plan_step(plan, valid), model.plan_step(noisy, valid)
        c = model.plan_step(plan.flip(1), valid)
    assert (a - b).abs().max() < 1e-6 and (a - c).abs().max() > 1e-4


def test_calibration_plan_before_a_jump_is_the_no_jump_rollout():
    """The gate calibration's 'plan made at t0 < jump' is the same scene rolled out without the jump: identical
    to the perturbed rollout before the jump tick, different after it (the expert turns to the new target)."""
    import numpy as np

    from export.graphs.gate_calibration import _rollout
    from simtask import TaskConfig

    cfg = TaskConfig()
    for seed in range(4242, 4252):
        _frames, acts, jump = _rollout(cfg, seed, perturb=True)
        if jump is not None and jump + 3 < len(acts):
            break
    _, planned, no_jump = _rollout(cfg, seed, perturb=False)
    assert no_jump is None or no_jump == jump  # the scene draws the tick; only the perturbed run uses it
    n = min(jump, len(planned))  # the no-jump episode may end at its target before the jump tick
    assert n >= 3
    np.testing.assert_allclose(np.asarray(acts[:n]), np.asarray(planned[:n]))
    assert np.abs(np.asarray(acts[jump:jump + 3])).max() > 1e-3  # after the jump the expert moves again


@pytest.mark.parametrize("wiring", ["plan_only", "seed"])
@pytest.mark.parametrize("chunk_size, n_action_steps", [(8, 5), (6, 6)])
def test_calibration_encodes_the_remaining_plan_exactly_as_the_runtime(wiring, chunk_size, n_action_steps):
    """The gate calibration's act-CLS inputs for a plan with k actions executed are the very arrays the
    runtime feeds plan_encoder / delta_expert on tick k (also when n_action_steps < chunk_size)."""
    import numpy as np

    from export.graphs.gate_calibration import delta_inputs, plan_encoder_inputs
    from runtime.backend_onnxruntime import OnnxRuntimeBackend
    from runtime.gate import observing_gate
    from runtime.manifest import Manifest
    from runtime.policy import EdgePolicy
    from tests.fake_artifacts import cached_fake_artifacts, make_observation

    art = cached_fake_artifacts(chunk_size=chunk_size, n_action_steps=n_action_steps, act_cls_wiring=wiring)
    seen: list[tuple[np.ndarray, ...]] = []

    class Recording(OnnxRuntimeBackend):
        def run_plan_encoder(self, plan, plan_valid):
            seen.append((plan.copy(), plan_valid.copy()))
            return super().run_plan_encoder(plan, plan_valid)

        def run_delta_expert(self, actions, prefix):
            seen.append((actions.copy(),))
            return super().run_delta_expert(actions, prefix)

    p = EdgePolicy(art, backend=Recording(art, Manifest.load(art), intra_op_threads=1), gate=observing_gate("consistency"))
    p.step(make_observation(0))
    chunk = p.last_chunk.copy()
    for k in range(1, n_action_steps):
        seen.clear()
        p.step(make_observation(0))
        assert p.last_info.gate_checked and not p.last_info.resampled and len(seen) == 1
        want = plan_encoder_inputs(chunk, k, n_action_steps) if wiring == "plan_only" else (delta_inputs(chunk, k),)
        assert len(want) == len(seen[0])
        for got, expected in zip(seen[0], want):
            np.testing.assert_array_equal(got, expected)
        if wiring == "plan_only":
            assert int(seen[0][1].sum()) == n_action_steps - k  # the rows still queued, not chunk_size - k
