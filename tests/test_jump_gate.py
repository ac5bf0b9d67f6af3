"""The per-tick `jump[:thr]` gate: obs-CLS now vs the previous prefix tick's, its spec parsing, and its wiring
in EdgePolicy (the previous embedding is kept per episode) and in the async planner."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from runtime.async_planner import AsyncChunkPlanner
from runtime.gate import DriftGate, GateInputs, JumpGate, make_gate
from runtime.manifest import GateCalibration, Manifest, ManifestError
from runtime.policy import EdgePolicy
from runtime.seam import world_changed
from tests.fake_artifacts import CAMERA_KEY, build_fake_artifacts, cached_fake_artifacts, make_observation


def _unit(angle: float) -> np.ndarray:
    return np.array([np.cos(angle), np.sin(angle), 0.0])


def test_fires_on_a_step_change_but_not_on_slow_drift():
    """A slow rotation (0.05 rad a tick) accumulates a large distance from planning time, which fires drift,
    but never moves more than 0.0013 between ticks; a 90-degree step between two ticks fires jump."""
    jump, drift = JumpGate(0.25), DriftGate(0.25)
    angles = np.arange(0.0, 1.5, 0.05)
    for prev, now in pairwise(angles):
        d = jump.decide(GateInputs(5, 1, obs_emb=_unit(now), prev_obs_emb=_unit(prev), plan_obs_emb=_unit(0.0)))
        assert not d.resample and d.distance < 0.002
    late = GateInputs(5, 1, obs_emb=_unit(angles[-1]), prev_obs_emb=_unit(angles[-2]), plan_obs_emb=_unit(0.0))
    assert drift.decide(late).resample  # the same slow motion fires the since-plan gate
    step = jump.decide(GateInputs(5, 1, obs_emb=_unit(np.pi / 2), prev_obs_emb=_unit(0.0)))
    assert step.resample and step.distance == pytest.approx(1.0) and step.reason == "jump"
    assert world_changed(step.reason, step.distance, step.threshold)  # the async seam treats it as a change


def test_no_previous_embedding_never_fires():
    d = JumpGate(0.0).decide(GateInputs(5, 1, obs_emb=_unit(1.0), prev_obs_emb=None))
    assert not d.resample and d.checked and d.distance is None and d.reason == "jump_no_previous"
    with pytest.raises(ValueError, match="obs_emb"):
        JumpGate(0.1).decide(GateInputs(5, 1, prev_obs_emb=_unit(0.0)))


@pytest.mark.parametrize("spec", ["jump:0.25", "any:jump:0.25,drift:0.7,interval:6", "any:jump:0.1,pixel:2"])
def test_spec_round_trips(spec):
    g = make_gate(spec)
    assert g.spec == spec and make_gate(g.spec).spec == spec
    assert g.needs_obs_cls


def test_threshold_from_the_manifest_or_a_clear_error():
    assert make_gate("jump", {"jump": GateCalibration({}, 0.3)}).threshold == 0.3
    with pytest.raises(ValueError, match=r"gate\.jump\.default_threshold"):
        make_gate("jump", {"drift": GateCalibration({}, 0.3)})
    with pytest.raises(ValueError, match=r"gate\.jump\.default_threshold"):
        make_gate("any:jump,interval:6")
    for bad, msg in (("jump:abc", "must be a number"), ("jump:nan", "finite"), ("jump:inf", "finite")):
        with pytest.raises(ValueError, match=msg):
            make_gate(bad)
    with pytest.raises(ValueError, match="jump"):
        make_gate("jumpy:0.1")


class _Recording(JumpGate):
    def __init__(self, threshold: float):
        super().__init__(threshold)
        self.seen: list[GateInputs] = []

    def _decide(self, inp: GateInputs):
        self.seen.append(inp)
        return super()._decide(inp)


def test_policy_keeps_the_previous_prefix_tick_and_clears_it_on_reset():
    gate = _Recording(1e-6)
    p = EdgePolicy(cached_fake_artifacts(), gate=gate, backend_options={"intra_op_threads": 1})
    a, b = make_observation(3), make_observation(3)
    b[CAMERA_KEY] = 255 - a[CAMERA_KEY]
    p.step(a)  # forced first plan: the gate is not consulted, the prefix runs
    assert p.last_info.resampled and not gate.seen
    first = p._last_obs_emb.copy()
    p.step(a)  # same observation: distance 0 → keep
    assert not p.last_info.resampled and gate.seen[-1].prev_obs_emb is not None
    np.testing.assert_allclose(gate.seen[-1].prev_obs_emb, first)
    assert p.last_info.gate_distance == pytest.approx(0.0, abs=1e-9)
    p.step(b)  # a step change between two ticks → resample, reason jump
    assert p.last_info.resampled and p.last_info.gate_reason == "jump" and p.last_info.gate_distance > 1e-6
    np.testing.assert_allclose(gate.seen[-1].obs_emb, p._last_obs_emb)
    p.reset()
    assert p._prev_obs_emb is None and p._last_obs_emb is None  # no embedding crosses an episode boundary
    p.step(b)  # the new episode's first plan: its own observation becomes the reference, nothing older
    np.testing.assert_allclose(p._prev_obs_emb, p._plan_obs_emb)
    np.testing.assert_allclose(p._prev_obs_emb, p._last_obs_emb)


def test_async_planner_runs_the_jump_gate():
    pol = EdgePolicy(cached_fake_artifacts(chunk_size=8), gate="jump:1e-6", seed=0,
                     backend_options={"intra_op_threads": 1})
    planner = AsyncChunkPlanner(pol, seam="inpaint", seam_width=3)
    a, b = make_observation(0), make_observation(0)
    b[CAMERA_KEY] = 255 - a[CAMERA_KEY]
    first = planner.plan(a, 0, None, 0, 1)
    assert first.chunk is not None and not planner.last_reacted
    kept = planner.plan(a, 2, first.chunk.actions[2:], 2, 1)  # same scene: keep the plan
    assert kept.chunk is None and not kept.info.resampled and kept.info.gate_distance == pytest.approx(0.0, abs=1e-9)
    moved = planner.plan(b, 3, first.chunk.actions[3:], 3, 1)  # the scene jumped: a reaction
    assert moved.chunk is not None and moved.info.gate_reason == "jump" and planner.last_reacted


def test_step_pairs_label_the_jump_tick_only():
    from export.graphs.gate_calibration import step_pairs

    cls = [np.array([[[1.0, 0.0]]]), np.array([[[1.0, 0.0]]]), np.array([[[0.0, 1.0]]]), np.array([[[0.0, 1.0]]])]
    assert step_pairs(cls, 2) == [(1, False, 0.0), (1, True, 1.0), (1, False, 0.0)]
    assert [c for _, c, _ in step_pairs(cls, None)] == [False] * 3


def _with_jump(tmp_path, value, name="j"):
    def edit(m):
        if value is not None:
            m["gate"]["jump"] = {"stats": {"p95": 0.2}, "default_threshold": value}

    return build_fake_artifacts(tmp_path / name, edit_manifest=edit)


def test_manifest_gate_jump_is_optional_and_validated(tmp_path):
    assert EdgePolicy(_with_jump(tmp_path, 0.2), gate="jump").gate.spec == "jump:0.2"
    assert EdgePolicy(_with_jump(tmp_path, 0.2, "k"), gate="any:jump,interval:6").gate.spec == "any:jump:0.2,interval:6"
    plain = Manifest.load(cached_fake_artifacts())
    assert "jump" not in plain.gate_calibration and plain.gate_threshold("jump") is None
    with pytest.raises(ValueError, match=r"gate\.jump\.default_threshold"):
        EdgePolicy(cached_fake_artifacts(), gate="jump")
    for i, bad in enumerate((3.0, -0.1, "high")):
        with pytest.raises(ManifestError, match=r"gate\.jump\.default_threshold"):
            Manifest.load(_with_jump(tmp_path, bad, f"bad{i}"))


@pytest.mark.parametrize("case", ["refine_on_an_unchecked_tick", "fault_on_the_jump_tick"])
def test_a_jump_seen_only_on_a_pass_the_gate_did_not_decide_is_not_lost(case):
    """A prefix pass the gate did not decide on (a refine-only tick between checks; a check that faulted in
    another part's graph) must not become the jump gate's reference: the next check still sees the jump."""
    a, b = make_observation(3), make_observation(3)
    b[CAMERA_KEY] = 255 - a[CAMERA_KEY]
    art = cached_fake_artifacts(chunk_size=12)
    if case == "refine_on_an_unchecked_tick":
        p = EdgePolicy(art, gate="jump:1e-3", check_every=2, refine=True, backend_options={"intra_op_threads": 1})
    else:
        p = EdgePolicy(art, gate="any:jump:1e-3,consistency:1.9", backend_options={"intra_op_threads": 1})
        for name in ("run_delta_expert", "run_plan_encoder"):  # whichever graph this wiring's act-CLS uses
            real = getattr(p.backend, name)

            def flaky(*x, real=real):
                if p.counters.ticks == 4:  # the jump tick (the 4th step)
                    raise RuntimeError("injected fault")
                return real(*x)

            setattr(p.backend, name, flaky)
    reasons = []
    for obs in (a, a, a, b, b, b):
        p.step(obs)
        reasons.append(p.last_info.gate_reason if p.last_info.resampled else None)
    assert "jump" in reasons[3:], reasons


def test_async_planner_warns_when_a_manifest_jump_threshold_meets_a_delay(tmp_path):
    from runtime.gate import jump_lag_mismatch

    art = _with_jump(tmp_path, 0.2, "w")

    def why(gate: str, lag: int) -> str | None:
        p = EdgePolicy(art, gate=gate)
        return jump_lag_mismatch(p.gate, p.manifest.gate_calibration, lag)

    assert why("jump", 1) is None  # a 1-tick delay keeps lag-1 pairs
    w = why("any:jump,interval:6", 5)
    assert w is not None and "lag-1" in w and "5 ticks" in w
    assert why("jump:0.5", 5) is None  # an explicit threshold: the caller chose it
    assert why("drift", 5) is None


def test_policy_warns_when_check_every_stretches_a_manifest_jump_threshold(tmp_path, caplog):
    art = _with_jump(tmp_path, 0.2, "c")
    with caplog.at_level("WARNING", logger="runtime.policy"):
        EdgePolicy(art, gate="jump", check_every=1)
    assert "lag-1" not in caplog.text
    with caplog.at_level("WARNING", logger="runtime.policy"):
        EdgePolicy(art, gate="jump", check_every=3)
    assert "lag-1 threshold" in caplog.text and "3 ticks" in caplog.text
