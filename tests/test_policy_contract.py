"""LeRobot's policy contract for `smolvla_cls`, in both training stages: our own equivalents of lerobot
0.4.4's tests/policies checks (class lookup, defaults, save/load, seeded backward compatibility = every
trainable parameter gets a gradient, processors, `reduction="none"`, RTC), plus the stage handover."""

import inspect

import pytest
import torch
from lerobot.policies.rtc.configuration_rtc import RTCConfig

from smolvla_cls.configuration_smolvla_cls import ConfigError
from smolvla_cls.modeling_smolvla_cls import SmolVLACLSPolicy
from tests.model_fixtures import random_batch, tiny_config, tiny_policy

# Stage -> config overrides, as train.py sets them (main: VLM trained; delta: train_expert_only=True), plus
# the combination the issue found leaking (delta with train_expert_only=False) and the joint objective.
STAGES = {
    "main": dict(train_expert_only=False),
    "main-lerobot-defaults": dict(train_expert_only=True, freeze_vision_encoder=True),
    "delta": dict(train_delta_expert=True, train_expert_only=True, freeze_vision_encoder=True),
    "delta-vlm-unfrozen": dict(train_delta_expert=True, train_expert_only=False),
    "joint": dict(train_delta_expert=True, train_main_expert=True),
}


def _backward(policy, seed: int = 0):
    policy.train()
    torch.manual_seed(seed)
    loss, _ = policy.forward(random_batch(policy.config, seed=seed))
    loss.backward()
    return loss


def test_get_policy_and_config_classes():
    from lerobot.policies.factory import get_policy_class, make_policy_config

    policy_cls = get_policy_class("smolvla_cls")
    config = make_policy_config("smolvla_cls", vlm_preset="tiny")
    assert policy_cls is SmolVLACLSPolicy and policy_cls.name == "smolvla_cls"
    annotation = inspect.signature(policy_cls.__init__).parameters["config"].annotation
    assert isinstance(annotation, type), f"config annotation is {annotation!r}, not a class"
    assert issubclass(type(config), annotation)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_save_and_load_pretrained_round_trip(tmp_path, stage):
    from lerobot.policies.factory import get_policy_class

    policy = tiny_policy(**STAGES[stage])
    policy.save_pretrained(tmp_path)
    loaded = get_policy_class("smolvla_cls").from_pretrained(tmp_path, config=policy.config)
    torch.testing.assert_close(list(policy.parameters()), list(loaded.parameters()), rtol=0, atol=0)
    assert [p.requires_grad for p in policy.parameters()] == [p.requires_grad for p in loaded.parameters()]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_trainable_parameter_gets_a_gradient(stage):
    """lerobot's backward-compatibility test reads `param.grad` of every trainable parameter: none may be
    None (206,496 were, in the main stage). Frozen ones get none."""
    policy = tiny_policy(**STAGES[stage])
    _backward(policy)
    trainable = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable
    missing = [n for n, p in trainable.items() if p.grad is None]
    assert not missing, f"{len(missing)} trainable parameters without a gradient, e.g. {missing[:3]}"
    assert all(torch.isfinite(p.grad).all() for p in trainable.values())
    leaked = [n for n, p in policy.named_parameters() if not p.requires_grad and p.grad is not None]
    assert not leaked, leaked[:3]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_trainable_parameter_is_reached(stage):
    """Stronger than not-None: once the delta correction is non-zero (it starts at exactly 0, which stops
    the delta loss at its output projection), every trainable parameter gets a non-zero gradient."""
    policy = tiny_policy(**STAGES[stage])
    torch.nn.init.normal_(policy.model.delta_action_out_proj.weight, std=0.1)
    _backward(policy)
    zero = [n for n, p in policy.named_parameters() if p.requires_grad and not p.grad.abs().sum() > 0]
    assert not zero, zero[:5]


@pytest.mark.parametrize("train_cls_readout", [True, False])
@pytest.mark.parametrize("train_expert_only", [False, True])
@pytest.mark.parametrize("freeze_vision_encoder", [False, True])
def test_delta_stage_freezes_vlm_and_main_expert(train_expert_only, freeze_vision_encoder, train_cls_readout):
    """The delta/VICReg loss must not move the VLM's K/V or the main expert, whatever the flags say; only the
    VLM's tail (which only the obs-CLS read-out uses) may train, and only with `train_cls_readout`."""
    policy = tiny_policy(train_delta_expert=True, train_expert_only=train_expert_only,
                         freeze_vision_encoder=freeze_vision_encoder, train_cls_readout=train_cls_readout)
    _backward(policy)
    m = policy.model
    tail = {id(p) for p in m.vlm_tail_parameters()}
    assert tail
    frozen = [p for module in (m.vlm_with_expert.vlm, m.state_proj, *m.main_expert_modules().values())
              for p in module.parameters() if id(p) not in tail]
    assert frozen and not any(p.requires_grad or p.grad is not None for p in frozen)
    assert not m.vlm_with_expert.vlm.training  # dropout etc. of frozen parts off, as lerobot does
    vlm_trainable = [p for p in m.vlm_with_expert.vlm.parameters() if p.requires_grad]
    if train_cls_readout:
        assert {id(p) for p in vlm_trainable} == tail
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vlm_trainable)
    else:
        assert not vlm_trainable
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad and id(p) not in tail}
    allowed = ("model.delta_", "model.pre_cls_param", "model.suf_cls_param", "model.obs_cls_proj",
               "model.act_cls_proj")
    assert trainable and all(n.startswith(allowed) for n in trainable)


@pytest.mark.parametrize("layers", [{}, dict(num_expert_layers=2, self_attn_every_n_layers=0),
                                    dict(num_expert_layers=1, self_attn_every_n_layers=0)])
def test_delta_training_cannot_change_the_main_experts_actions(layers):
    """The property the freezing exists for: a large optimiser step on everything the delta stage trains
    (VLM tail included) leaves the prefix K/V the experts read and the main expert's chunk bit-identical, and
    moves obs-CLS — also when the expert skips VLM layers (then more of the VLM is tail)."""
    policy = tiny_policy(train_delta_expert=True, train_expert_only=True, freeze_vision_encoder=True,
                         train_cls_readout=True, **layers)
    m = policy.model
    with_expert = m.vlm_with_expert
    read = [i for i, layer in enumerate(with_expert.get_model_layers(
        [with_expert.get_vlm_model().text_model, with_expert.lm_expert])[1]) if layer is not None]
    batch = random_batch(policy.config, seed=3)
    inputs = policy._inputs(batch)
    noise = torch.randn(3, policy.config.chunk_size, policy.config.max_action_dim, generator=torch.Generator().manual_seed(1))

    def snapshot():
        with torch.no_grad():
            kv, pad, cls = m.encode_prefix(*inputs)
            return kv, m.denoise(pad, kv, noise.clone()), cls.clone()

    kv1, chunk1, cls1 = snapshot()
    optimiser = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=10.0)
    torch.nn.init.normal_(m.delta_action_out_proj.weight, std=0.1)
    _backward(policy)
    optimiser.step()
    kv2, chunk2, cls2 = snapshot()
    n_cls = m.num_prefix_cls  # the CLS columns change (the tokens train) but no expert row can read them
    assert read and all(i in kv1 for i in read)
    for layer in read:  # an unread layer's K/V may change: it is tail, no expert row reads it
        for name in kv1[layer]:
            assert torch.equal(kv1[layer][name][:, n_cls:], kv2[layer][name][:, n_cls:]), (layer, name)
    assert torch.equal(chunk1, chunk2)
    assert not torch.allclose(cls1, cls2)  # the read-out tail (and the CLS tokens) did train


def test_cls_readout_is_off_for_a_config_without_the_field():
    """A checkpoint saved before the field existed was trained with the tail frozen: it loads as such."""
    assert tiny_config().train_cls_readout is False


def test_tail_refuses_a_layer_parameter_it_cannot_classify():
    """A parameter of the last read layer that is neither K/V-side nor tail (a k_norm, a fused qkv) might feed
    the experts' K/V: training it as read-out is refused, naming the parameter and the way out."""
    policy = tiny_policy(train_delta_expert=True, train_cls_readout=True)
    text = policy.model.vlm_with_expert.get_vlm_model().text_model
    text.layers[-1].self_attn.k_norm = torch.nn.LayerNorm(4)
    with pytest.raises(NotImplementedError, match=r"self_attn\.k_norm\.weight.*train_cls_readout=False"):
        policy.model.vlm_tail_parameters()
    policy.model._freeze_vlm_tail()  # freezing (the main stage) needs no classification: it freezes it too
    assert not text.layers[-1].self_attn.k_norm.weight.requires_grad


def test_main_stage_trains_no_delta_or_cls_parameter():
    m = tiny_policy(**STAGES["main"]).model
    for item in (*m.delta_modules().values(), *m.cls_modules().values()):
        params = item.parameters() if isinstance(item, torch.nn.Module) else [item]
        assert not any(p.requires_grad for p in params)


def test_delta_stage_starts_from_the_trained_main_expert(tmp_path):
    """Loading a main-stage checkpoint into the delta stage re-copies the delta expert from the *trained*
    main expert (zero output projection); resuming a delta checkpoint keeps the trained delta expert."""
    main = tiny_policy(**STAGES["main"])
    with torch.no_grad():  # stand-in for training: move every main-expert weight
        for module in main.model.main_expert_modules().values():
            for p in module.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    main.save_pretrained(tmp_path / "main")
    delta = SmolVLACLSPolicy.from_pretrained(tmp_path / "main", config=tiny_config(**STAGES["delta"]))
    m = delta.model
    for (name, trained), (_, copied) in zip(m.main_expert_modules().items(), m.delta_modules().items(), strict=True):
        for (pname, a), (_, b) in zip(trained.state_dict().items(), copied.state_dict().items(), strict=True):
            if name != "action_out_proj":
                assert torch.equal(a, b), f"{name}.{pname}"
    assert m.delta_action_out_proj.weight.abs().sum() == 0 and m.delta_action_out_proj.bias.abs().sum() == 0
    with torch.no_grad():  # stand-in for delta training
        for p in m.delta_expert.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        m.delta_action_out_proj.weight.normal_()
    delta.save_pretrained(tmp_path / "delta")
    resumed = SmolVLACLSPolicy.from_pretrained(tmp_path / "delta", config=tiny_config(**STAGES["delta"]))
    torch.testing.assert_close(resumed.state_dict(), delta.state_dict(), rtol=0, atol=0)


@pytest.mark.parametrize("stage", ["main", "delta", "joint"])
def test_reduction_none_is_per_sample(stage):
    policy = tiny_policy(**STAGES[stage])
    cfg = policy.config
    batch = random_batch(cfg, batch_size=3)
    batch["action_is_pad"][1, cfg.chunk_size // 2:] = True
    noise = torch.randn(3, cfg.chunk_size, cfg.max_action_dim)
    time = torch.tensor([0.2, 0.5, 0.9])
    torch.manual_seed(0)
    per_sample, _ = policy.forward(batch, noise=noise, time=time, reduction="none")
    assert per_sample.shape == (3,) and torch.isfinite(per_sample).all()
    assert per_sample.std() > 0, per_sample  # not the batch mean repeated
    per_sample.sum().backward()  # what lerobot's RA-BC does with it: a weighted sum
    if stage == "main":  # no batch statistic involved: sample i alone gives the same loss
        for i in range(3):
            alone = {k: v[i: i + 1] for k, v in batch.items()}
            loss_i, _ = policy.forward(alone, noise=noise[i: i + 1], time=time[i: i + 1])
            torch.testing.assert_close(per_sample[i], loss_i, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        policy.forward(batch, reduction="sum")


def test_rtc_refused_at_construction_naming_the_field():
    assert SmolVLACLSPolicy.supports_rtc() is False
    with pytest.raises(ConfigError, match="rtc_config"):
        tiny_config(rtc_config=RTCConfig(enabled=True))
    config = tiny_config(rtc_config=RTCConfig(enabled=False))  # tracking-only config: accepted
    config.rtc_config = RTCConfig(enabled=True)  # enabled after construction: refused by the policy
    with pytest.raises(ConfigError, match="rtc_config"):
        SmolVLACLSPolicy(config)


def test_rtc_answer_is_no_on_the_instance_and_for_lerobots_rollout():
    """SmolVLA says yes (0.6); our subclass must say no wherever lerobot asks: on the instance, and in
    0.6's `lerobot-rollout --inference.type=rtc` check (absent in 0.4.4, which never asks)."""
    import importlib.util

    policy = tiny_policy()
    assert policy.supports_rtc() is False
    if importlib.util.find_spec("lerobot.rollout") is not None:
        from lerobot.rollout.inference.rtc import supports_rtc_inference

        assert supports_rtc_inference(policy) is False


@pytest.mark.parametrize("stage", ["main", "delta"])
def test_processors_round_trip_through_the_policy(stage):
    """lerobot's processor factory finds ours; raw observation (task string, unbatched) -> preprocessor ->
    policy -> postprocessor gives an unnormalised action; the preprocessor also feeds a training forward."""
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.utils.constants import OBS_LANGUAGE_TOKENS

    policy = tiny_policy(**STAGES[stage])
    cfg = policy.config
    stats = {"observation.state": {"mean": torch.zeros(2), "std": torch.ones(2)},
             "action": {"mean": torch.tensor([10.0, -10.0]), "std": torch.tensor([0.001, 0.001])}}
    pre, post = make_pre_post_processors(cfg, dataset_stats=stats)
    raw = {"observation.images.top": torch.rand(3, 64, 64), "observation.state": torch.randn(2),
           "task": "reach the red target"}
    batch = pre(raw)
    assert batch[OBS_LANGUAGE_TOKENS].shape == (1, cfg.tokenizer_max_length)
    action = post(policy.select_action(batch))
    assert action.shape == (1, 2)
    assert torch.allclose(action, torch.tensor([[10.0, -10.0]]), atol=0.05)  # unnormalised by the stats
    chunk = torch.randn(1, cfg.chunk_size, 2) * 0.001 + torch.tensor([10.0, -10.0])  # a dataset chunk
    train = pre({**raw, "action": chunk, "action_is_pad": torch.zeros(1, cfg.chunk_size, dtype=torch.bool)})
    assert train["action"].abs().max() < 5.0  # normalised by the stats
    loss, _ = policy.forward(train)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("training", [True, False])
def test_cls_embeddings_keeps_the_callers_mode(training):
    """An analysis read-out in the middle of training used to leave the policy in eval mode (dropout off)."""
    policy = tiny_policy()
    policy.train(training)
    before = [m.training for m in policy.modules()]
    policy.cls_embeddings(random_batch(policy.config, batch_size=2, with_action=False))
    assert policy.training is training and [m.training for m in policy.modules()] == before
