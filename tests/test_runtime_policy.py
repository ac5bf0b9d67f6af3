"""The per-tick chain against the contract's math, computed independently from the backend's graphs."""

from __future__ import annotations

import numpy as np
import pytest

try:
    from tests.fake_artifacts import CAMERA_KEY, STATE_KEY, cached_fake_artifacts, make_observation
except ImportError:
    from fake_artifacts import CAMERA_KEY, STATE_KEY, cached_fake_artifacts, make_observation

from runtime.gate import observing_gate
from runtime.policy import EdgePolicy, delta_input

ACTION_STD = 0.03  # fake manifest: action mean 0, std 0.03


def _policy(gate="never", refine=False, **kw):
    art = cached_fake_artifacts(**kw.pop("art", {}))
    kw.setdefault("backend_options", {"intra_op_threads": 1})
    return EdgePolicy(art, gate=gate, refine=refine, **kw)


def _prefix(policy, obs):
    """Prefix pass with inputs built independently: 64→32 bilinear = 2x2 block mean; LeRobot state norm."""
    img = obs[CAMERA_KEY].astype(np.float64) / 255.0
    small = img.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3)).transpose(2, 0, 1)[None, None].astype(np.float32)
    state = np.zeros((1, 4), np.float32)
    state[0, :2] = (obs[STATE_KEY] - np.float32(0.5)) / np.float32(0.29)
    ids, mask = policy.tokenizer.encode(obs["task"])
    return policy.backend.run_prefix(small, ids, mask, state)


def _denoise(policy, noise, prefix, n):
    x = noise.copy()
    for i in range(n):
        x = x - (1.0 / n) * policy.backend.run_main_expert(x, 1.0 - i / n, prefix)
    return x[0]


def _raw(row):
    return row[:2] * ACTION_STD


def _noise(seed):
    return np.random.default_rng(seed).standard_normal((1, 6, 4)).astype(np.float32)


def test_resample_tick_follows_contract_math():
    p = _policy()
    obs, noise = make_observation(1), _noise(1)
    p.next_noise = noise
    action = p.step(obs)
    plan = _denoise(p, noise, _prefix(p, obs), p.manifest.dims.num_steps)
    np.testing.assert_allclose(action, _raw(plan[0]), atol=1e-6)
    info = p.last_info
    assert info.resampled and info.prefix_ran and info.queue_left == 5 and info.gate_reason == "queue_empty"
    assert info.denoise_ms > 0 and info.prefix_ms > 0 and info.total_ms >= info.denoise_ms
    assert action.dtype == np.float32 and action.shape == (2,)


@pytest.mark.parametrize("gate", ["never", observing_gate("drift"), observing_gate("consistency"), "interval:100"])
def test_skip_path_executes_the_queued_plan_never_noise(gate):
    """Observations change every tick, the gate keeps the plan: emitted actions are exactly its rows."""
    p = _policy(gate)
    obs0, noise = make_observation(2), _noise(2)
    plan = _denoise(p, noise, _prefix(p, obs0), p.manifest.dims.num_steps)
    p.next_noise = noise
    emitted = [p.step(obs0)]
    for k in range(1, 6):
        emitted.append(p.step(make_observation(100 + k)))
        assert not p.last_info.resampled and p.last_info.queue_left == 5 - k
    np.testing.assert_allclose(np.array(emitted), np.array([_raw(r) for r in plan]), atol=1e-6)
    assert not np.allclose(np.array(emitted), noise[0, :, :2] * ACTION_STD, atol=1e-3)
    p.step(make_observation(7))  # queue ran out → resample regardless of gate
    assert p.last_info.resampled and p.counters.resamples == 2


def test_prefix_only_runs_when_needed():
    p = _policy("interval:2")
    for k in range(12):
        p.step(make_observation(k))
    assert p.counters.resamples == 6 and p.counters.prefix_passes == 6  # kept ticks skip the prefix
    q = _policy(observing_gate("drift"))
    for k in range(12):
        q.step(make_observation(k))
    assert q.counters.resamples == 2 and q.counters.prefix_passes == 12 and q.counters.gate_checks == 10


def test_n_action_steps_shorter_than_chunk():
    p = _policy(art={"n_action_steps": 3})
    for k in range(9):
        p.step(make_observation(k))
    assert p.counters.resamples == 3


def test_refine_path_applies_delta_to_remaining_plan():
    p = _policy(refine=True)
    obs0, obs1, noise = make_observation(3), make_observation(4), _noise(3)
    pre0 = _prefix(p, obs0)
    plan = _denoise(p, noise, pre0, p.manifest.dims.num_steps)
    plan = plan + p.backend.run_delta_expert(plan[None], pre0)[0][0]  # delta step after the fresh chunk
    p.next_noise = noise
    a0 = p.step(obs0)
    np.testing.assert_allclose(a0, _raw(plan[0]), atol=1e-6)
    assert p.last_info.refined and p.last_info.resampled
    # kept tick: remaining 5 rows shifted to index 0, tail repeats the last row, delta against obs1's K/V
    remaining = plan[1:]
    inp = np.concatenate([remaining, remaining[-1:]], axis=0)[None]
    refined = remaining + p.backend.run_delta_expert(inp, _prefix(p, obs1))[0][0, :5]
    a1 = p.step(obs1)
    np.testing.assert_allclose(a1, _raw(refined[0]), atol=1e-6)
    assert p.last_info.refined and not p.last_info.resampled
    assert p.counters.delta_passes == 2 and p.counters.refines == 2


def test_consistency_gate_delta_is_reused_for_refinement():
    p = _policy(observing_gate("consistency"), refine=True)
    for k in range(6):
        p.step(make_observation(k))
    # tick 0: one delta after denoising; ticks 1-5: one delta each, shared by the gate and the refinement
    assert p.counters.delta_passes == 6 and p.counters.gate_checks == 5 and p.counters.refines == 6


def test_delta_input_rule():
    plan = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = delta_input(plan, 6)
    assert out.shape == (1, 6, 4)
    np.testing.assert_array_equal(out[0, :3], plan)
    np.testing.assert_array_equal(out[0, 3:], np.repeat(plan[-1:], 3, axis=0))


def test_drift_gate_fires_on_a_changed_scene_only():
    p = _policy("drift:1e-6")
    same = make_observation(5)
    for _ in range(4):
        p.step(same)
    assert p.counters.resamples == 1 and p.last_info.gate_distance < 1e-6
    p.step(make_observation(6))  # different image → obs-CLS moved
    assert p.last_info.resampled and p.last_info.gate_reason == "drift" and p.last_info.gate_distance > 1e-6


def test_instruction_tokenised_once_per_string():
    p = _policy()
    calls = []
    real = p.tokenizer._tok

    class Spy:
        def encode(self, *a, **k):
            calls.append(a[0])
            return real.encode(*a, **k)

    p.tokenizer._tok = Spy()
    for k in range(10):
        p.step(make_observation(k, task="reach the green target"))
    p.step(make_observation(0, task="reach the blue target"))
    assert calls == ["reach the green target\n", "reach the blue target\n"]


def test_reset_drops_the_queue_and_seed_reproduces():
    a = _policy("interval:3", seed=4)
    acts1 = [a.step(make_observation(k)) for k in range(7)]
    a.reset(seed=4)
    assert a.episode_counters.ticks == 0 and a.counters.ticks == 7
    acts2 = [a.step(make_observation(k)) for k in range(7)]
    assert a.episode_counters.resamples == 3
    np.testing.assert_array_equal(np.array(acts1), np.array(acts2))
    b = _policy("interval:3", seed=5)
    assert not np.allclose(acts1[0], b.step(make_observation(0)))


def test_num_steps_override_and_noise_fn():
    p = _policy(num_steps=1, noise_fn=lambda shape, rng: np.full(shape, 0.5, np.float32))
    obs = make_observation(8)
    a = p.step(obs)
    plan = _denoise(p, np.full((1, 6, 4), 0.5, np.float32), _prefix(p, obs), 1)
    np.testing.assert_allclose(a, _raw(plan[0]), atol=1e-6)


def test_bad_noise_hook_raises():
    p = _policy()
    p.next_noise = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match="next_noise"):
        p.step(make_observation(0))


def test_constructor_validates_arguments():
    art = cached_fake_artifacts()
    for kw, msg in [({"backend": "jax"}, "unknown backend"), ({"gate": "magic"}, "unknown gate"),
                    ({"fallback": "dance"}, "fallback"), ({"num_steps": 0}, "num_steps"),
                    ({"tick_budget_ms": -1}, "tick_budget_ms"), ({"on_bad_observation": "ignore"}, "on_bad_observation")]:
        with pytest.raises(ValueError, match=msg):
            EdgePolicy(art, **kw)


def test_warmup_leaves_counters_noise_and_queue_untouched():
    a, b = _policy("interval:2", seed=9), _policy("interval:2", seed=9)
    b.warmup(make_observation(50), runs=2)
    assert b.counters.ticks == 0 and b._queue_left == 0 and "denoise" in b.stage_estimates_ms
    for k in range(4):
        np.testing.assert_array_equal(a.step(make_observation(k)), b.step(make_observation(k)))


def test_plan_only_consistency_gate_encodes_the_queued_rows_alone():
    """act_cls.wiring=plan_only: the gate's act-CLS comes from plan_encoder on the rows still queued (front,
    plan_valid), the delta expert is not run, and the distance equals the one computed from the graphs."""
    from runtime.gate import cosine_distance, embed
    from runtime.policy import plan_encoder_input

    p = _policy(observing_gate("consistency"), art={"act_cls_wiring": "plan_only"})
    assert p.manifest.act_cls_wiring == "plan_only"
    obs = [make_observation(k) for k in range(3)]
    p.step(obs[0])
    queued = p._plan[: p._queue_left].copy()  # 5 rows left of 6
    p.step(obs[1])
    plan, valid = plan_encoder_input(queued, p.manifest.dims.chunk_size)
    assert valid[0].tolist() == [True] * 5 + [False]
    want = cosine_distance(embed(_prefix(p, obs[1]).obs_cls), embed(p.backend.run_plan_encoder(plan, valid)))
    assert p.last_info.gate_checked and p.last_info.gate_distance == pytest.approx(want, abs=1e-6)
    assert p.counters.plan_encoder_passes == 1 and p.counters.delta_passes == 0
    with pytest.raises(ValueError, match="rows"):
        plan_encoder_input(queued[:0], 6)


def test_seed_wiring_consistency_gate_still_uses_the_delta_expert():
    p = _policy(observing_gate("consistency"))
    assert p.manifest.act_cls_wiring == "seed"
    for k in range(3):
        p.step(make_observation(k))
    assert p.counters.plan_encoder_passes == 0 and p.counters.delta_passes == 2
