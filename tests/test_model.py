"""SmolVLA-CLS model properties: equivalence to SmolVLA, CLS isolation, gradients, padding, determinism."""

import pytest
import torch
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

from smolvla_cls.attention import GuardedSmolVLMWithExpert
from smolvla_cls.batch_validation import BatchError
from smolvla_cls.configuration_smolvla_cls import ConfigError
from smolvla_cls.masks import PREFIX_CLS
from tests.model_fixtures import random_batch, tiny_config, tiny_policy


def _inputs(policy, batch):
    return policy._inputs(batch)


def _plain_smolvla_from(policy):
    """A lerobot SmolVLAPolicy with the same config values and the shared weights of `policy`."""
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig

    cfg = policy.config
    fields = {k: getattr(cfg, k) for k in SmolVLAConfig.__dataclass_fields__ if k not in ("type",) and hasattr(cfg, k)}
    fields.pop("vlm_preset", None)
    plain = SmolVLAPolicy(SmolVLAConfig(**{k: v for k, v in fields.items() if k in SmolVLAConfig.__dataclass_fields__}))
    missing, _unexpected = plain.load_state_dict(policy.state_dict(), strict=False)
    assert not missing, missing
    return plain


@pytest.mark.parametrize("use_cls_head", [False, True])
def test_main_expert_reproduces_plain_smolvla(use_cls_head):
    """Same weights -> same chunk and same training losses as lerobot's SmolVLA (CLS tokens are read-outs)."""
    policy = tiny_policy(use_cls_head=use_cls_head)
    plain = _plain_smolvla_from(policy)
    batch = random_batch(policy.config, batch_size=2)
    obs = {k: v for k, v in batch.items() if not k.startswith("action")}
    noise = torch.randn(2, policy.config.chunk_size, policy.config.max_action_dim)
    ours = policy.predict_action_chunk(dict(obs), noise=noise.clone())
    theirs = plain.predict_action_chunk(dict(obs), noise=noise.clone())
    # the time embedding matches lerobot's float64 one to 1e-6 (test_time_embedding.py): measured 7e-7 here
    assert torch.allclose(ours, theirs, rtol=0, atol=2e-6), (ours - theirs).abs().max()
    time = torch.tensor([0.3, 0.8])
    actions = policy.prepare_action(batch)
    ours_l = policy.model.forward(*_inputs(policy, batch), actions, noise, time)
    images, img_masks = plain.prepare_images(batch)
    theirs_l = plain.model.forward(images, img_masks, batch["observation.language.tokens"],
                                   batch["observation.language.attention_mask"], plain.prepare_state(batch),
                                   actions, noise, time)
    assert torch.allclose(ours_l, theirs_l, rtol=1e-6, atol=1e-5), (ours_l - theirs_l).abs().max()


def test_action_outputs_identical_with_and_without_suffix_cls():
    policy = tiny_policy(suffix_cls_attention="window", suffix_cls_window=2)
    torch.nn.init.normal_(policy.model.delta_action_out_proj.weight)  # non-zero correction
    batch = random_batch(policy.config)
    kv, pad, _ = policy.model.encode_prefix(*_inputs(policy, batch))
    actions = torch.randn(3, policy.config.chunk_size, policy.config.max_action_dim)
    with_cls, cls_out = policy.model.delta_step(pad, kv, actions)
    policy.model.num_suffix_cls = 0
    without_cls, none_out = policy.model.delta_step(pad, kv, actions)
    assert cls_out.shape[1] == 2 and none_out.shape[1] == 0
    assert torch.allclose(with_cls, without_cls, atol=1e-6)
    assert with_cls.abs().max() > 0


def test_no_suffix_cls_to_prefix_edge_in_any_layer_kind(monkeypatch):
    """Record every attention call of a delta pass: suffix-CLS rows put zero weight on prefix keys,
    in self-attention layers (masked columns) and cross-attention layers (fully masked -> zero output)."""
    policy = tiny_policy()
    batch = random_batch(policy.config)
    kv, pad, _ = policy.model.encode_prefix(*_inputs(policy, batch))
    prefix_len, ns = pad.shape[1], policy.model.num_suffix_cls
    calls = []
    original = GuardedSmolVLMWithExpert.eager_attention_forward

    def spy(self, attention_mask, batch_size, head_dim, q, k, v):
        out = original(self, attention_mask, batch_size, head_dim, q, k, v)
        calls.append((attention_mask.clone(), k.shape[1], out))
        return out

    monkeypatch.setattr(GuardedSmolVLMWithExpert, "eager_attention_forward", spy)
    policy.model.delta_step(pad, kv, torch.randn(3, policy.config.chunk_size, policy.config.max_action_dim))
    kinds = {"self": 0, "cross": 0}
    for mask, key_len, out in calls:
        cls_rows = mask[:, -ns:]
        assert not cls_rows[:, :, :prefix_len].any()
        if key_len == prefix_len:  # cross-attention layer: prefix keys only
            kinds["cross"] += 1
            assert torch.equal(out[:, -ns:], torch.zeros_like(out[:, -ns:]))
        else:
            kinds["self"] += 1
    assert kinds["self"] > 0 and kinds["cross"] > 0


def test_prefix_cls_is_a_pure_readout():
    """Changing the prefix CLS parameters changes the obs-CLS but not the K/V of the real tokens."""
    policy = tiny_policy()
    batch = random_batch(policy.config)
    kv1, _pad, cls1 = policy.model.encode_prefix(*_inputs(policy, batch))
    with torch.no_grad():
        policy.model.pre_cls_param.add_(1.0)
    kv2, _, cls2 = policy.model.encode_prefix(*_inputs(policy, batch))
    np_ = policy.model.num_prefix_cls
    for layer in kv1:
        assert torch.allclose(kv1[layer]["key_states"][:, np_:], kv2[layer]["key_states"][:, np_:], atol=1e-6)
    assert not torch.allclose(cls1, cls2)


def _grads(policy):
    return {n: p.grad for n, p in policy.named_parameters()}


def test_delta_training_gradients_reach_cls_and_delta_only():
    policy = tiny_policy(train_delta_expert=True, train_expert_only=True, train_cls_readout=True)
    loss, loss_dict = policy.forward(random_batch(policy.config))
    loss.backward()
    for key in ("delta_loss", "delta_losses_after_forward", "delta_losses_after_in_ep_bound",
                "delta_losses_after_rm_padding", "vicreg_invariance", "vicreg_variance", "vicreg_covariance"):
        assert key in loss_dict
    m = policy.model
    for name in ("pre_cls_param", "suf_cls_param"):
        assert getattr(m, name).grad is not None and getattr(m, name).grad.abs().sum() > 0, name
    for module in (m.obs_cls_proj, m.act_cls_proj, m.delta_expert, m.delta_action_in_proj, m.delta_action_out_proj):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)
    tail = {id(p) for p in m.vlm_tail_parameters()}  # obs-CLS's read-out (train_cls_readout): trained
    assert all(p.requires_grad and p.grad is not None for p in m.vlm_tail_parameters())
    for module in (m.vlm_with_expert.lm_expert, m.action_in_proj, m.action_out_proj, m.vlm_with_expert.vlm):
        rest = [p for p in module.parameters() if id(p) not in tail]
        assert all(p.grad is None for p in rest)
        assert not any(p.requires_grad for p in rest)


def test_loss_ignores_padded_steps_and_dims():
    policy = tiny_policy()
    cfg = policy.config
    batch = random_batch(cfg)
    batch["action_is_pad"][:, cfg.chunk_size // 2:] = True
    noise = torch.randn(3, cfg.chunk_size, cfg.max_action_dim)
    time = torch.tensor([0.2, 0.5, 0.9])
    loss1, _ = policy.forward(batch, noise=noise, time=time)
    other = dict(batch, action=batch["action"].clone())
    other["action"][:, cfg.chunk_size // 2:] += 100.0  # garbage in padded steps
    loss2, _ = policy.forward(other, noise=noise, time=time)
    assert torch.allclose(loss1, loss2)
    elem = policy.model.forward(*_inputs(policy, batch), policy.prepare_action(batch), noise, time)
    want = elem[:, : cfg.chunk_size // 2, :2].mean()
    assert torch.allclose(loss1, want, atol=1e-6)


def test_deterministic_under_fixed_seed():
    losses = []
    for _ in range(2):
        policy = tiny_policy(seed=7, train_delta_expert=True, train_main_expert=True)
        torch.manual_seed(3)
        loss, _ = policy.forward(random_batch(policy.config, seed=5))
        losses.append(loss.item())
    assert losses[0] == losses[1]


def test_save_load_round_trip(tmp_path):
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class

    policy = tiny_policy(num_cls_prefix=3, num_cls_suffix=3)
    policy.save_pretrained(tmp_path)
    cfg = PreTrainedConfig.from_pretrained(tmp_path)
    assert cfg.type == "smolvla_cls" and cfg.num_cls_prefix == 3
    cls = get_policy_class("smolvla_cls")
    loaded = cls.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "SmolVLACLSPolicy"
    for (n, a), (_, b) in zip(policy.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), n


def test_start_from_plain_smolvla_checkpoint(tmp_path):
    from smolvla_cls.modeling_smolvla_cls import SmolVLACLSPolicy

    source = tiny_policy(seed=1)
    plain = _plain_smolvla_from(source)
    plain.save_pretrained(tmp_path)
    torch.manual_seed(2)
    loaded = SmolVLACLSPolicy.from_pretrained(tmp_path, config=tiny_config())
    m = loaded.model
    for n, p in plain.state_dict().items():
        assert torch.equal(loaded.state_dict()[n], p), n
    # the delta expert starts as a copy of the loaded main expert, with a zero output projection
    for (a, b) in zip(m.vlm_with_expert.lm_expert.parameters(), m.delta_expert.parameters(), strict=True):
        assert torch.equal(a, b)
    assert m.delta_action_out_proj.weight.abs().sum() == 0
    assert m.pre_cls_param.abs().sum() > 0  # new parameters keep their init


def test_config_errors_name_the_field():
    for kwargs, field in [(dict(num_cls_suffix=0), "num_cls_suffix"),
                          (dict(suffix_cls_attention="window", suffix_cls_window=4), "suffix_cls_window"),
                          (dict(suffix_cls_attention="diag"), "suffix_cls_attention"),
                          (dict(num_cls_prefix=2, num_cls_suffix=3), "num_cls_suffix"),
                          (dict(delta_time=0.0), "delta_time"),
                          (dict(vicreg_weight=-1.0), "vicreg_weight")]:
        with pytest.raises(ConfigError, match=field):
            tiny_config(**kwargs)


def test_batch_errors_name_the_field():
    policy = tiny_policy()
    cfg = policy.config
    cases = [
        (lambda b: b.pop("observation.state"), "observation.state"),
        (lambda b: b.__setitem__("observation.state", torch.randn(3, 5)), "observation.state"),
        (lambda b: b.__setitem__("action", torch.randn(3, cfg.chunk_size + 1, 2)), "action"),
        (lambda b: b.__setitem__("observation.language.tokens", torch.rand(3, 16)), "observation.language.tokens"),
        (lambda b: b.__setitem__("action_is_pad", torch.zeros(3, cfg.chunk_size)), "action_is_pad"),
        (lambda b: b.__setitem__("observation.images.top", torch.rand(3, 1, 64, 64)), "observation.images.top"),
    ]
    for mutate, field in cases:
        batch = random_batch(cfg)
        mutate(batch)
        with pytest.raises(BatchError, match=field.replace(".", r"\.")):
            policy.forward(batch)


def test_kinds_constant_is_zero():
    assert PREFIX_CLS == 0


def test_lerobot_train_cli_resolves_policy_type(tmp_path):
    """`lerobot-train --policy.type=smolvla_cls` (plugin discovery) trains and writes a lerobot checkpoint."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from smolvla_cls.dataset_recording import RecordingConfig, record_dataset

    root = tmp_path / "ds"
    record_dataset(RecordingConfig(root=root, episodes=3, seed=1), progress=False)
    exe = Path(sys.executable).with_name("lerobot-train")
    args = [str(exe), "--policy.type=smolvla_cls", "--policy.discover_packages_path=smolvla_cls",
            "--policy.vlm_preset=tiny", "--policy.resize_imgs_with_padding=[64,64]", "--policy.num_vlm_layers=4",
            "--policy.tokenizer_max_length=8", "--policy.pad_language_to=max_length", "--policy.chunk_size=4",
            "--policy.n_action_steps=4", "--policy.push_to_hub=false", "--policy.device=cpu",
            "--dataset.repo_id=local/simtask_reach", f"--dataset.root={root}", "--steps=3", "--batch_size=2",
            "--num_workers=0", f"--output_dir={tmp_path / 'out'}", "--save_freq=3", "--log_freq=1"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    res = subprocess.run(args, check=False, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "step:3 " in res.stdout + res.stderr, "lerobot logged no third optimiser step"
    saved = tmp_path / "out" / "checkpoints" / "last" / "pretrained_model" / "config.json"
    assert '"type": "smolvla_cls"' in saved.read_text()


def test_non_finite_loss_stops_with_components():
    policy = tiny_policy()
    batch = random_batch(policy.config)
    batch["observation.state"][0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="not finite.*main_loss"):
        policy.forward(batch)
