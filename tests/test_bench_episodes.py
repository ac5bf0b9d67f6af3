"""Properties of the gate benchmark's episodes (simtask.events + simtask.bench_env): irrelevant changes leave
the expert's optimal action unchanged while the image changes, relevant ones change it, the deadline is the
expert's reaction plus the slack, and everything is a function of the seed."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simtask import IMAGE_KEY, ReachEnv
from simtask.bench_env import MIN_ACTION_CHANGE, BenchEnv, expert_action
from simtask.events import EPISODE_KINDS, IRRELEVANT_KINDS, RELEVANT_KINDS, sample_schedule
from simtask.seeding import STREAMS, episode_seeds

seeds = st.integers(0, 2**40)
MAX_STEP = BenchEnv().config.max_step


def _roll(env: BenchEnv, seed: int, kind: str, action_fn):
    """Run one episode; per tick: (started change types, expert action before/after the tick's changes,
    image before/after)."""
    obs = env.reset(seed, kind)
    out, done = [], False
    while not done:
        a = action_fn(env)
        goal_before, img_before = env.goal_position, obs[IMAGE_KEY]
        obs, done, info = env.step(a)
        agent = env.agent_position
        out.append((info["started"], expert_action(goal_before, agent, MAX_STEP), env.expert_action(),
                    img_before, obs[IMAGE_KEY]))
    return out


def _still(env: BenchEnv) -> np.ndarray:
    return np.zeros(2)


@settings(max_examples=25, deadline=None)
@given(seed=seeds, kind=st.sampled_from(IRRELEVANT_KINDS))
def test_irrelevant_changes_keep_the_expert_action_and_change_the_image(seed, kind):
    env = BenchEnv()
    ticks = _roll(env, seed, kind, _still)  # a still agent: only the scheduled changes alter the image
    started = [t for t in ticks if t[0]]
    assert started and all(not set(t[0]) & {"jump", "move"} for t in ticks)
    for _, before, after, img0, img1 in started:
        assert np.array_equal(before, after)
        assert np.abs(img1.astype(int) - img0.astype(int)).mean() > 0.5


@settings(max_examples=25, deadline=None)
@given(seed=seeds, kind=st.sampled_from(RELEVANT_KINDS))
def test_relevant_changes_change_the_expert_action(seed, kind):
    env = BenchEnv(slack=10_000)  # the agent stands still through the change: no deadline may end the episode
    env.reset(seed, kind)
    change = env.schedule[0]
    while env.t < change.tick - 1:  # follow the expert up to the change (where a policy would be), then stop
        env.step(env.expert_action())
    goal0 = env.goal_position
    while env.t < change.end:
        env.step(np.zeros(2))
    # by the end of the first relevant change the goal moved enough to change the expert's action
    moved = np.linalg.norm(env.expert_action() - expert_action(goal0, env.agent_position, MAX_STEP))
    assert moved >= MIN_ACTION_CHANGE * MAX_STEP - 1e-9


@settings(max_examples=20, deadline=None)
@given(seed=seeds, kind=st.sampled_from(EPISODE_KINDS))
def test_the_expert_succeeds_and_the_deadline_is_its_reaction_plus_slack(seed, kind):
    env = BenchEnv(slack=4)
    _roll(env, seed, kind, lambda e: e.expert_action())
    assert env.success and env.t <= env.deadline
    assert env.deadline == env.last_start + env.expert_ticks + 4
    assert env.t >= env.arm_tick


@settings(max_examples=15, deadline=None)
@given(seed=seeds, kind=st.sampled_from(("jump", "multi_jump")))
def test_a_policy_that_ignores_the_change_fails(seed, kind):
    env = BenchEnv()
    env.reset(seed, kind)
    goal0 = env.goal_position
    done = False
    while not done:  # heads for where the goal was at the start, forever
        _, done, _ = env.step(expert_action(goal0, env.agent_position, MAX_STEP))
    assert not env.success


@settings(max_examples=15, deadline=None)
@given(seed=seeds, kind=st.sampled_from(EPISODE_KINDS), actions=st.lists(
    st.tuples(st.floats(-0.1, 0.1), st.floats(-0.1, 0.1)), min_size=40, max_size=40))
def test_same_seed_same_episode(seed, kind, actions):
    a, b = BenchEnv(), BenchEnv()
    oa, ob = a.reset(seed, kind), b.reset(seed, kind)
    for act in actions:
        assert np.array_equal(oa[IMAGE_KEY], ob[IMAGE_KEY])
        if a.done:
            break
        (oa, da, _), (ob, db, _) = a.step(act), b.step(act)
        assert da == db
    assert a.schedule == b.schedule == sample_schedule(seed, kind, a.config)


@pytest.mark.parametrize("kind", EPISODE_KINDS)
def test_schedules_have_the_advertised_changes(kind):
    for seed in range(30):
        types = {c.type for c in sample_schedule(seed, kind, BenchEnv().config)}
        want = {"jump": {"jump"}, "multi_jump": {"jump"}, "moving": {"move"}, "distractor": {"distractor"},
                "lighting": {"lighting"}, "noise": {"noise"},
                "mixed": {"jump", "distractor", "lighting", "noise"}}[kind]
        assert types == want
    with pytest.raises(ValueError, match="episode kind"):
        sample_schedule(0, "earthquake", BenchEnv().config)


def test_scenes_match_reach_env_and_seed_streams_stay_apart():
    env, reach = BenchEnv(), ReachEnv()
    for seed in range(5):
        env.reset(seed, "jump")
        reach.reset(seed=seed)
        assert np.array_equal(env.target_positions, reach.target_positions)
    assert len(set(STREAMS.values())) == len(STREAMS)
    bench = set(episode_seeds(0, 50, "bench")) | set(episode_seeds(0, 50, "bench_calibration"))
    assert not bench & (set(episode_seeds(0, 50, "train")) | set(episode_seeds(0, 50, "eval")))
    with pytest.raises(ValueError, match="slack"):
        BenchEnv(slack=-1)


def _lagged_run(env: BenchEnv, seed: int, kind: str, lag: int) -> dict:
    """The noise-free scripted expert that sees the goal `lag` ticks late; the last step's info."""
    env.reset(seed, kind)
    seen, done, info = [env.goal_position], False, {}
    while not done:
        _, done, info = env.step(expert_action(seen[max(0, len(seen) - 1 - lag)], env.agent_position, MAX_STEP))
        seen.append(env.goal_position)
    return info


@settings(max_examples=40, deadline=None)
@given(seed=seeds, late=st.integers(3, 8))
def test_a_late_reaction_to_the_jump_fails_mixed_whether_or_not_the_jump_is_last(seed, late):
    """Every relevant change has its own reach-by deadline: reacting `slack + late` ticks late to a goal jump
    fails even when irrelevant changes follow it (before: the deadline was recomputed at the last change, from
    the late agent's own position, so lateness cost nothing)."""
    env = BenchEnv()
    info = _lagged_run(env, seed, "mixed", env.slack + late)
    jump = next(i for i, c in enumerate(env.schedule) if c.relevant)
    assert not env.success
    assert info["failed_deadline"]["rule"] == "reach" and info["failed_deadline"]["change"] == jump
    assert env.t == info["failed_deadline"]["deadline"] == env.reach_deadlines[0]["deadline"]


@settings(max_examples=40, deadline=None)
@given(seed=seeds, kind=st.sampled_from(EPISODE_KINDS))
def test_reacting_at_once_meets_every_reach_deadline(seed, kind):
    env = BenchEnv()
    info = _lagged_run(env, seed, kind, 0)
    assert env.success and info["failed_deadline"] is None
    relevant = [i for i, c in enumerate(env.schedule) if c.relevant]
    assert [d["change"] for d in env.reach_deadlines] == relevant
    for d, after in zip(env.reach_deadlines, env.reach_deadlines[1:] + [None]):
        if d["reached"] is None:  # only a later relevant change starting first may take its place
            assert after is not None and after["tick"] <= d["deadline"]
        else:
            assert d["tick"] <= d["reached"] <= d["deadline"]


@settings(max_examples=30, deadline=None)
@given(seed=seeds, lag=st.integers(0, 14))
def test_a_lone_jump_keeps_the_one_deadline_of_before(seed, lag):
    """Where the jump is the only change its reach deadline is the episode's deadline: the episode ends at the
    first armed tick within the radius or at the deadline, as before."""
    env = BenchEnv()
    info = _lagged_run(env, seed, "jump", lag)
    (reach,) = env.reach_deadlines
    assert reach["deadline"] == env.deadline == env.last_start + env.expert_ticks + env.slack
    assert env.success == (info["distance"] <= env.config.success_radius and env.t >= env.arm_tick)
    assert env.success or env.t == env.deadline
    assert (info["failed_deadline"] is None) == env.success
