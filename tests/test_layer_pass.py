"""Our own pass over lerobot's VLM+expert layers (smolvla_cls/layer_pass.py), on every lerobot release:
equal to lerobot's own joint forward, cached prefix + suffix equal to the joint pass, cache never mutated."""

import pytest
import torch

from smolvla_cls.layer_pass import LayerPass, rotate
from smolvla_cls.masks import position_ids_with_cls
from tests.model_fixtures import random_batch, tiny_policy


def _streams(policy, seed=0):
    batch = random_batch(policy.config, batch_size=2, seed=seed)
    model = policy.model
    images, img_masks, lang, lang_mask, state = policy._inputs(batch)
    prefix, prefix_pad, prefix_att = model.embed_prefix(images, img_masks, lang, lang_mask, state)
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn(2, policy.config.chunk_size, policy.config.max_action_dim, generator=g)
    suffix, suffix_pad, suffix_att = model.embed_suffix(x_t, torch.full((2,), 0.4))
    pad = torch.cat([prefix_pad, suffix_pad], dim=1)
    att = torch.cat([prefix_att.to(suffix_att.dtype), suffix_att], dim=1)
    mask = model._mask(pad, att, prefix.shape[1], 0)
    return prefix, suffix, mask, position_ids_with_cls(pad, model.num_prefix_cls)


@pytest.mark.parametrize("use_cls_head", [False, True])
def test_joint_pass_equals_lerobots_own_forward(use_cls_head):
    """lerobot's `forward(..., use_cache=False)` (the one call every release accepts) gives the same outputs."""
    policy = tiny_policy(use_cls_head=use_cls_head).eval()
    prefix, suffix, mask, positions = _streams(policy)
    with torch.no_grad():
        ours, cache = LayerPass(policy.model.vlm_with_expert).run([prefix, suffix], mask, positions)
        theirs, _ = policy.model.vlm_with_expert.forward(attention_mask=mask, position_ids=positions,
                                                         past_key_values=None, inputs_embeds=[prefix, suffix],
                                                         use_cache=False)
    assert cache is None
    for a, b in zip(ours, theirs, strict=True):
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()


def test_bf16_layers_fed_float32_embeddings_match_lerobot():
    """A bf16 VLM/expert with float32 embeddings (bench's bf16 chain): the stream stays in the layers' dtype."""
    policy = tiny_policy().eval()
    prefix, suffix, mask, positions = _streams(policy)
    policy.model.vlm_with_expert.to(torch.bfloat16)
    with torch.no_grad():
        ours, _ = LayerPass(policy.model.vlm_with_expert).run([prefix, suffix], mask, positions)
        theirs, _ = policy.model.vlm_with_expert.forward(attention_mask=mask, position_ids=positions,
                                                         past_key_values=None, inputs_embeds=[prefix, suffix],
                                                         use_cache=False)
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == b.dtype == torch.bfloat16 and torch.equal(a, b)


def test_cached_prefix_then_suffix_equals_the_joint_pass_and_leaves_the_cache_alone():
    policy = tiny_policy().eval()
    prefix, suffix, mask, positions = _streams(policy, seed=3)
    n = prefix.shape[1]
    runner = LayerPass(policy.model.vlm_with_expert)
    with torch.no_grad():
        (joint_prefix, joint_suffix), _ = runner.run([prefix, suffix], mask, positions)
        (prefix_out, none), cache = runner.run([prefix, None], mask[:, :n, :n], positions[:, :n], keep_cache=True)
        snapshot = {i: {k: t.clone() for k, t in kv.items()} for i, kv in cache.items()}
        first, _ = runner.run([None, suffix], mask[:, n:], positions[:, n:], cache=cache)
        second, _ = runner.run([None, suffix], mask[:, n:], positions[:, n:], cache=cache)
    assert none is None and first[0] is None
    assert torch.allclose(prefix_out, joint_prefix, atol=1e-6)
    assert torch.allclose(first[1], joint_suffix, atol=1e-5), (first[1] - joint_suffix).abs().max()
    assert torch.equal(first[1], second[1])
    assert sorted(cache) == list(range(len(runner.vlm_layers)))
    for i, kv in cache.items():
        assert kv["key_states"].shape[1] == n
        assert torch.equal(kv["key_states"], snapshot[i]["key_states"])
        assert torch.equal(kv["value_states"], snapshot[i]["value_states"])


def test_bad_calls_name_what_is_missing():
    policy = tiny_policy().eval()
    _prefix, suffix, mask, positions = _streams(policy)
    runner = LayerPass(policy.model.vlm_with_expert)
    with pytest.raises(ValueError, match="cache=None"):
        runner.run([None, suffix], mask, positions)
    with pytest.raises(ValueError, match="embeds\\[0\\] is None"):
        runner.run([None, suffix], mask, positions, cache={}, keep_cache=True)


def test_rotation_keeps_norms_and_is_relative():
    """RoPE is a rotation (norm kept) and q·k depends only on the position difference."""
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)
    at = lambda x, p: rotate(x, torch.tensor([[p]]))
    assert torch.allclose(at(q, 7).norm(), q.norm(), atol=1e-5)
    assert torch.allclose((at(q, 5) * at(k, 2)).sum(), (at(q, 13) * at(k, 10)).sum(), atol=1e-4)
    assert not torch.allclose((at(q, 5) * at(k, 2)).sum(), (at(q, 5) * at(k, 3)).sum(), atol=1e-4)
