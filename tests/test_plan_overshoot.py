"""scripts/plan_overshoot.py: the overshoot of a plan integrated from the agent's position."""

import numpy as np
import pytest

from scripts.plan_overshoot import overshoot


def test_a_plan_that_stops_at_the_goal_does_not_overshoot():
    rows = np.array([[0.06, 0.0]] * 3 + [[0.0, 0.0]] * 5)
    assert overshoot(np.zeros(2), np.array([0.18, 0.0]), rows, 0.06) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("extra", [1, 3, 7])
def test_every_row_past_the_goal_adds_its_length(extra):
    rows = np.array([[0.06, 0.0]] * (3 + extra))
    assert overshoot(np.zeros(2), np.array([0.18, 0.0]), rows, 0.06) == pytest.approx(0.06 * extra)


def test_rows_are_clipped_to_the_maximum_step_and_moving_away_counts_from_the_start():
    big = np.array([[1.0, 0.0]] * 4)  # clipped to 0.06 each, like the task executes them
    assert overshoot(np.zeros(2), np.array([0.12, 0.0]), big, 0.06) == pytest.approx(0.12)
    away = np.array([[-0.06, 0.0]] * 2)
    assert overshoot(np.zeros(2), np.array([0.12, 0.0]), away, 0.06) == pytest.approx(0.12)
