"""Expert episodes that continue past success (``hold_after_success``): every pre-success frame has
K future actions inside the episode, the extra actions are the expert's hold at the goal, and K = 0
records exactly what it did before the option existed."""

from __future__ import annotations

import numpy as np
import pytest

from simtask import STATE_KEY, ReachEnv, ScriptedExpert, run_expert_episode
from simtask.reach_env import clip_action


@pytest.mark.parametrize("perturb", [False, True])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_hold_extends_every_episode_by_k_frames_of_hold_action(perturb, k):
    env = ReachEnv()
    for seed in range(12):
        ep = run_expert_episode(env, ScriptedExpert(noise_std=0.02, seed=seed), seed=seed, perturb=perturb,
                                hold_after_success=k)
        assert ep.success and ep.success_length is not None
        assert len(ep) == len(ep.observations) == ep.success_length + k
        # Each pre-success frame i has its own action and >= k later ones inside the episode.
        assert all(len(ep) - 1 - i >= k for i in range(ep.success_length))
        goal = env.goal_position
        for obs, action in zip(ep.observations[ep.success_length:], ep.actions[ep.success_length:]):
            # The hold action is the clean expert action from the frame's own state: back to the goal centre.
            expected = clip_action(goal - obs[STATE_KEY].astype(np.float64), env.config.max_step)
            assert np.allclose(action, expected, atol=1e-6)
            assert np.linalg.norm(obs[STATE_KEY] - goal) <= env.config.success_radius + 0.1
        assert env.success and env.done and env.t == len(ep)


def test_hold_keeps_the_agent_at_the_goal():
    env = ReachEnv()
    ep = run_expert_episode(env, ScriptedExpert(noise_std=0.0), seed=4, hold_after_success=20)
    held = ep.observations[ep.success_length + 1:]
    # Without execution noise the first hold action lands on the centre and every later one is zero.
    assert all(np.allclose(o[STATE_KEY], env.goal_position, atol=1e-6) for o in held)
    assert all(np.allclose(a, 0.0, atol=1e-6) for a in ep.actions[ep.success_length + 1:])
    assert np.linalg.norm(ep.actions[ep.success_length]) <= env.config.success_radius + 1e-6


@pytest.mark.parametrize("perturb", [False, True])
def test_k0_is_the_old_episode_and_k_only_appends(perturb):
    env = ReachEnv()
    for seed in range(10):
        base = run_expert_episode(env, ScriptedExpert(noise_std=0.02, seed=seed), seed=seed, perturb=perturb)
        held = run_expert_episode(env, ScriptedExpert(noise_std=0.02, seed=seed), seed=seed, perturb=perturb,
                                  hold_after_success=7)
        assert len(base) == base.success_length == held.success_length
        for a, b in zip(base.actions, held.actions):
            assert np.array_equal(a, b)
        for a, b in zip(base.observations, held.observations):
            assert np.array_equal(a[STATE_KEY], b[STATE_KEY])


def test_bad_hold_and_step_after_success_before_success_are_refused():
    env = ReachEnv()
    with pytest.raises(ValueError, match="hold_after_success"):
        run_expert_episode(env, ScriptedExpert(), seed=0, hold_after_success=-1)
    env.reset(seed=0)
    with pytest.raises(RuntimeError, match="not ended in success"):
        env.step_after_success(np.zeros(2))
