"""Model-free retrieval ceilings (smolvla_cls/retrieval_oracle.py)."""

import numpy as np
import pytest

from simtask import TaskConfig
from simtask.config import STATE_KEY
from smolvla_cls.alignment import collect_heldout
from smolvla_cls.retrieval_oracle import oracle_chunk, oracle_top1


@pytest.fixture(scope="module")
def heldout():
    return collect_heldout(10, n_episodes=48)


def test_every_frame_records_the_goal_its_first_action_points_at(heldout):
    cfg = TaskConfig()
    for obs, goal, chunk in zip(heldout.observations, heldout.goals, heldout.chunks, strict=True):
        d = goal - np.asarray(obs[STATE_KEY], dtype=np.float64)
        expected = d * min(1.0, cfg.max_step / np.linalg.norm(d))
        np.testing.assert_allclose(chunk[0], expected, atol=1e-5)


def test_goals_switch_at_the_jump_tick_and_the_first_reaction_points_at_the_new_goal():
    from simtask import ReachEnv, ScriptedExpert, run_expert_episode

    ep = run_expert_episode(ReachEnv(TaskConfig()), ScriptedExpert(noise_std=0.02, seed=1), seed=11, perturb=True)
    p = ep.perturb_tick
    assert len(ep.goals) == len(ep.actions) and p is not None and p < len(ep.goals)
    assert not np.allclose(ep.goals[p - 1], ep.goals[p]) and np.allclose(ep.goals[0], ep.goals[p - 1])
    toward = ep.goals[p] - np.asarray(ep.observations[p][STATE_KEY], dtype=np.float64)
    assert float(np.dot(ep.actions[p], toward)) > 0.9 * np.linalg.norm(ep.actions[p]) * np.linalg.norm(toward)


def test_a_perturbed_frame_before_its_jump_holds_instead_of_ending():
    rows = oracle_chunk(np.zeros(2), np.array([0.1, 0.0]), 6, 0.06, 0.06, ends_at_success=False)
    assert np.allclose(rows[:2].sum(axis=0), [0.1, 0.0]) and np.allclose(rows[2:], 0.0)


def test_the_exact_oracle_finds_every_first_action_and_noise_costs_precision(heldout):
    cfg = TaskConfig()
    exact = oracle_top1(heldout, 0.0, cfg.max_step, cfg.success_radius, STATE_KEY)
    blurred = oracle_top1(heldout, 0.05, cfg.max_step, cfg.success_radius, STATE_KEY)
    assert exact["first_action_top1"] == 1.0
    assert blurred["first_action_top1"] < exact["first_action_top1"]
    assert 0.0 <= exact["chunk_top1"] <= 1.0


@pytest.mark.parametrize("dist", [0.01, 0.1, 0.5])
def test_oracle_chunk_moves_at_most_max_step_and_holds_its_last_row_after_arrival(dist):
    rows = oracle_chunk(np.zeros(2), np.array([dist, 0.0]), 12, max_step=0.06, success_radius=0.06)
    assert rows.shape == (12, 2)
    assert np.linalg.norm(rows, axis=1).max() <= 0.06 + 1e-12
    reached = int(np.ceil(dist / 0.06))
    assert np.allclose(rows[reached:], rows[reached - 1])  # the episode ended: lerobot repeats the last row


def test_bad_inputs_are_refused(heldout):
    from smolvla_cls.alignment import HeldOut

    with pytest.raises(ValueError, match="goal positions"):
        oracle_top1(HeldOut(observations=heldout.observations[:2], chunks=heldout.chunks[:2]), 0.0, 0.06, 0.06, STATE_KEY)
    with pytest.raises(ValueError, match="sigma"):
        oracle_top1(heldout, -1.0, 0.06, 0.06, STATE_KEY)
