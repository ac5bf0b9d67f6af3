"""`EdgePolicy.step` may answer None — send nothing this tick (a position robot whose guard has no safe target yet,
runtime.safety). Every simulated closed loop that drives it takes that as a tick where nothing was sent: the
displacement agent stays where it is, the episode goes on, and the tick is counted as held — never a crash on
`None.shape`, never a tick counted as a bad action or an env error."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluation.bench_runner import run_episode as bench_episode
from evaluation.episodes import _RecordingPolicy
from evaluation.gate_runner import run_episode as gate_episode
from runtime.backend import Backend, BackendError
from runtime.policy import EdgePolicy
from simtask import ReachEnv, TaskConfig, evaluate_policy
from simtask.bench_env import BenchEnv
from simtask.reach_env import clip_action
from tests.backend_wrappers import Delegating
from tests.fake_artifacts import cached_fake_artifacts

POSITION_ROBOT = {"fps": 30, "action_names": ["x.pos", "y.pos"], "state_names": ["x", "y"],
                  "cameras": {"observation.images.top": {"height": 64, "width": 64, "channels": 3}}}


def _position_robot(m: dict) -> None:
    m["robot"] = POSITION_ROBOT


class FailFirst(Delegating):
    """Delegates; the first `fail` resamples raise (a fault before the first plan: the guard has no target)."""

    name = "fail-first"

    def __init__(self, inner: Backend, fail: int):
        super().__init__(inner)
        self.fail = fail

    def denoise(self, *a):
        if self.fail > 0:
            self.fail -= 1
            raise BackendError("injected: no plan yet")
        return self.inner.denoise(*a)


class Spy:
    """Wraps `policy.step`, recording each answer (so a test knows which ticks sent nothing)."""

    def __init__(self, policy: EdgePolicy):
        self.answers: list[np.ndarray | None] = []
        inner = policy.step

        def step(obs):
            a = inner(obs)
            self.answers.append(a)
            return a
        policy.step = step


def _policy(fail: int) -> tuple[EdgePolicy, FailFirst, Spy]:
    pol = EdgePolicy(cached_fake_artifacts(edit_manifest=_position_robot), gate="drift", seed=0,
                     backend_options={"intra_op_threads": 1})
    pol.backend = FailFirst(pol.backend, fail)
    return pol, pol.backend, Spy(pol)


def test_a_position_policy_with_no_plan_yet_sends_nothing():
    pol, _, spy = _policy(fail=1)
    env = ReachEnv(TaskConfig())
    pol.step(env.reset(seed=0))
    assert spy.answers == [None] and pol.last_info.fallback  # the premise of every test below


def test_nothing_sent_moves_a_simulated_agent_nowhere():
    assert np.array_equal(clip_action(None, 0.05), np.zeros(2))
    env = ReachEnv(TaskConfig())
    env.reset(seed=3)
    before = env.agent_position.copy()
    _, done, info = env.step(None)
    assert np.array_equal(env.agent_position, before) and info["t"] == 1 and not done
    with pytest.raises(ValueError, match="action: expected 2 numbers"):
        env.step(np.zeros(3))  # a wrong action is still refused by name


@settings(max_examples=6, deadline=None)
@given(fail=st.integers(1, 8), seed=st.integers(0, 50))
def test_the_gate_evaluation_counts_held_ticks_and_finishes_the_episode(fail, seed):
    pol, _, spy = _policy(fail)
    env = ReachEnv(TaskConfig())
    rec = gate_episode(pol, env, seed, perturb=True, timeline=True)
    held = sum(a is None for a in spy.answers)
    assert held >= 1 and rec["held"] == held and rec["bad_actions"] == 0
    assert rec["steps"] == len(spy.answers)  # every tick stepped the env, the held ones too
    assert sum(t["held"] for t in rec["_timeline"]) == held


def test_the_gate_benchmark_episode_steps_through_held_ticks():
    pol, _, spy = _policy(fail=3)
    rec = bench_episode(pol, BenchEnv(), 1, "jump")
    assert sum(a is None for a in spy.answers) >= 1 and rec["held"] == sum(a is None for a in spy.answers)
    assert rec["steps"] == len(spy.answers)


def test_simtask_evaluation_steps_through_held_ticks():
    pol, _, spy = _policy(fail=2)
    report = evaluate_policy(_RecordingPolicy(pol), n_episodes=1, seed=0, perturb=True)
    assert sum(a is None for a in spy.answers) >= 1 and report.episodes[0].steps == len(spy.answers)


def test_the_soak_counts_held_ticks_not_bad_actions_or_errors(monkeypatch):
    import evaluation.soak as soak_module

    def failing_first(*a, **kw):
        pol = EdgePolicy(*a, **kw)
        pol.backend = FailFirst(pol.backend, 4)
        return pol
    monkeypatch.setattr(soak_module, "EdgePolicy", failing_first)
    s = soak_module.soak(cached_fake_artifacts(edit_manifest=_position_robot), ticks=80, gate="drift", progress=False,
                         threads=1)
    assert s["held"] >= 1 and s["errors"] == 0, s["error_examples"]
    assert s["bad_actions"] == 0, s["bad_action_examples"]
    assert s["ticks"] == 80 and f"held {s['held']}" in soak_module.format_summary(s)


def test_the_gate_calibration_recorder_steps_through_held_ticks():
    from evaluation.bench_calibration import record_distances

    made: list[Spy] = []

    def make_policy(gate):
        pol = EdgePolicy(cached_fake_artifacts(edit_manifest=_position_robot), gate=gate, seed=0,
                         backend_options={"intra_op_threads": 1})
        pol.backend = FailFirst(pol.backend, 2)
        made.append(Spy(pol))
        return pol
    out = record_distances(make_policy, BenchEnv(), "drift", [(1, "jump")])
    assert sum(a is None for a in made[0].answers) >= 1 and sum(map(len, out.values())) > 0


@pytest.mark.parametrize("latency", [0, 2])
def test_the_latency_loop_steps_through_ticks_with_nothing_to_send(latency):
    """Before the first chunk lands (latency ticks) a position robot's emitter has no target: nothing is sent."""
    from evaluation.latency_loop import LatencyLoop

    pol, _, _ = _policy(fail=2)
    loop = LatencyLoop(pol, "aligned", latency)
    env = ReachEnv(TaskConfig())
    rec = loop.episode(env, 0, True)
    assert rec["held"] >= 2 and rec["steps"] == env.t and len(rec["seam_steps"]) + len(rec["within_steps"]) > 0
