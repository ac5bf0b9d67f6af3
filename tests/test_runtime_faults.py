"""Fault injection: a backend wrapper raises, returns NaN or stalls at chosen/random calls. Episodes go
on with safe actions, each fault is reported on its tick and counted, and the chain recovers."""

from __future__ import annotations

import time

import numpy as np
import pytest

try:
    from tests.fake_artifacts import cached_fake_artifacts, make_observation
except ImportError:
    from fake_artifacts import cached_fake_artifacts, make_observation

from runtime.backend import Backend, BackendError
from runtime.backend_onnxruntime import OnnxRuntimeBackend
from runtime.gate import observing_gate
from runtime.manifest import Manifest
from runtime.policy import EdgePolicy

GRAPHS = ("prefix", "main_expert", "delta_expert", "plan_encoder")


class FaultyBackend(Backend):
    """Wraps a real backend. `plan[(tick, graph)] = kind` or random faults with probability `p`."""

    name = "faulty"

    def __init__(self, inner: Backend, p: float = 0.0, kinds=("raise", "nan"), seed: int = 0, sleep_s: float = 0.0):
        self.inner, self.p, self.kinds, self.sleep_s = inner, p, kinds, sleep_s
        self.rng = np.random.default_rng(seed)
        self.plan: dict[tuple[int, str], str] = {}
        self.tick = 0
        self.injected: list[tuple[int, str, str]] = []

    def _maybe(self, graph: str, out):
        kind = self.plan.get((self.tick, graph))
        if kind is None and self.p and self.rng.random() < self.p:
            kind = self.kinds[self.rng.integers(len(self.kinds))]
        if kind is None:
            return out()
        self.injected.append((self.tick, graph, kind))
        if kind == "raise":
            raise BackendError(f"injected failure in {graph}")
        if kind == "sleep":
            time.sleep(self.sleep_s)
            return out()
        res = out()
        if kind == "zero":  # the CLS output gone silent: all zeros, finite, no direction
            if isinstance(res, tuple):
                return res[0], np.zeros_like(res[1])
            if hasattr(res, "obs_cls"):
                res.obs_cls = np.zeros_like(res.obs_cls)
                return res
            return np.zeros_like(res)
        # "nan": poison the first output
        if isinstance(res, tuple):
            return (np.full_like(res[0], np.nan),) + tuple(res[1:])
        if hasattr(res, "obs_cls"):
            res.obs_cls = np.full_like(res.obs_cls, np.nan)
            return res
        return np.full_like(res, np.nan)

    def run_prefix(self, *a):
        return self._maybe("prefix", lambda: self.inner.run_prefix(*a))

    def run_main_expert(self, *a):
        return self._maybe("main_expert", lambda: self.inner.run_main_expert(*a))

    def run_delta_expert(self, *a):
        return self._maybe("delta_expert", lambda: self.inner.run_delta_expert(*a))

    def run_plan_encoder(self, *a):
        return self._maybe("plan_encoder", lambda: self.inner.run_plan_encoder(*a))


def _faulty(art_options: dict | None = None, **kw) -> tuple[FaultyBackend, str]:
    art = cached_fake_artifacts(**(art_options or {}))
    return FaultyBackend(OnnxRuntimeBackend(art, Manifest.load(art), intra_op_threads=1), **kw), art


def _safe(policy, action):
    b = policy.manifest.action_bounds
    return np.all(np.isfinite(action)) and np.all(action >= b.low) and np.all(action <= b.high)


@pytest.mark.parametrize("gate, refine", [("interval:2", True), ("consistency:0.05", True), ("drift:0.01", False)])
def test_random_faults_keep_the_episode_safe_and_are_reported(gate, refine):
    fb, art = _faulty(p=0.08, seed=1)
    pol = EdgePolicy(art, backend=fb, gate=gate, refine=refine, seed=0)
    faulty_ticks = set()
    for t in range(250):
        fb.tick = t
        action = pol.step(make_observation(t % 17))
        assert _safe(pol, action), (t, action)
        if pol.last_info.fault:
            faulty_ticks.add(t)
    injected_ticks = {t for t, _, _ in fb.injected}
    assert len(injected_ticks) > 15
    assert faulty_ticks == injected_ticks  # every injected fault reported on its own tick, no false alarms
    assert pol.counters.faults >= len(injected_ticks)
    assert pol.counters.resamples > 20  # the chain keeps recovering


@pytest.mark.parametrize("kind", ["raise", "nan"])
def test_plan_encoder_fault_keeps_the_queued_plan(kind):
    """plan_only wiring: a failing plan_encoder (the consistency gate's act-CLS) is a reported fault, the
    queued action is emitted unchanged, and the next check runs the graph again."""
    clean_backend, art = _faulty({"act_cls_wiring": "plan_only"})
    clean = EdgePolicy(art, backend=clean_backend, gate=observing_gate("consistency"), seed=3)
    fb, _ = _faulty({"act_cls_wiring": "plan_only"})
    fb.plan[(2, "plan_encoder")] = kind
    faulty = EdgePolicy(art, backend=fb, gate=observing_gate("consistency"), seed=3)
    for t in range(5):
        fb.tick = t
        obs = make_observation(t)
        a = faulty.step(obs)
        np.testing.assert_array_equal(a, clean.step(obs))
        assert _safe(faulty, a) and not faulty.last_info.fallback
        assert (faulty.last_info.fault is not None) == (t == 2)
        if t == 2:
            assert faulty.last_info.fault.startswith("plan_encoder:") and not faulty.last_info.resampled
    assert fb.injected == [(2, "plan_encoder", kind)]
    assert faulty.counters.faults == 1 and faulty.counters.plan_encoder_passes == clean.counters.plan_encoder_passes - 1


@pytest.mark.parametrize("graph, output, gate, wiring", [
    ("prefix", "obs_cls", "drift", "seed"), ("prefix", "obs_cls", "consistency", "plan_only"),
    ("plan_encoder", "act_cls", "consistency", "plan_only"), ("delta_expert", "act_cls", "consistency", "seed"),
])
def test_an_all_zero_cls_output_is_a_reported_fault(graph, output, gate, wiring):
    """A CLS output of zeros passes the finiteness check but has no direction: every cosine distance would read
    1.0 and the gate would silently never (or always) fire. It is a fault naming the output, on its tick; the
    queued plan runs on unchanged and the next check computes the gate again."""
    clean_backend, art = _faulty({"act_cls_wiring": wiring})
    clean = EdgePolicy(art, backend=clean_backend, gate=observing_gate(gate), seed=3)
    fb, _ = _faulty({"act_cls_wiring": wiring})
    fb.plan[(2, graph)] = "zero"
    faulty = EdgePolicy(art, backend=fb, gate=observing_gate(gate), seed=3)
    for t in range(5):
        fb.tick = t
        obs = make_observation(t)
        a = faulty.step(obs)
        np.testing.assert_array_equal(a, clean.step(obs))
        info = faulty.last_info
        assert _safe(faulty, a) and not info.fallback and info.resampled == (t == 0)
        if t == 2:
            assert info.fault is not None and info.fault.startswith(f"{graph}:")
            assert f"'{output}'" in info.fault and "degenerate" in info.fault and not info.gate_checked
        else:
            assert info.fault is None and info.gate_checked == (t > 0)
    assert fb.injected == [(2, graph, "zero")] and faulty.counters.faults == 1


def test_plan_only_gate_refuses_a_backend_without_the_plan_encoder():
    """Otherwise every gate check would fault and the consistency gate would silently act as `never`."""
    from runtime.policy_arguments import PolicyArgumentError

    class NoPlanEncoder(FaultyBackend):
        run_plan_encoder = Backend.run_plan_encoder

    art = cached_fake_artifacts(act_cls_wiring="plan_only")
    inner = OnnxRuntimeBackend(art, Manifest.load(art), intra_op_threads=1)
    with pytest.raises(PolicyArgumentError, match="run_plan_encoder.*consistency.*plan_only"):
        EdgePolicy(art, backend=NoPlanEncoder(inner), gate="consistency:0.5")
    EdgePolicy(art, backend=NoPlanEncoder(inner), gate="drift:0.5")  # drift never needs act-CLS: accepted
    seed_art = cached_fake_artifacts()
    EdgePolicy(seed_art, backend=NoPlanEncoder(OnnxRuntimeBackend(seed_art, Manifest.load(seed_art))),
               gate="consistency:0.5")  # seed wiring uses the delta expert: accepted


def test_fault_mid_plan_continues_the_queued_plan():
    clean_backend, art = _faulty()
    clean = EdgePolicy(art, backend=clean_backend, gate=observing_gate("drift"), seed=3)
    fb, _ = _faulty()
    for t, g, kind in [(2, "prefix", "raise"), (3, "prefix", "nan")]:
        fb.plan[(t, g)] = kind
    faulty = EdgePolicy(art, backend=fb, gate=observing_gate("drift"), seed=3)
    for t in range(6):
        fb.tick = t
        obs = make_observation(t)
        np.testing.assert_array_equal(faulty.step(obs), clean.step(obs))  # identical to the plan
        assert (faulty.last_info.fault is not None) == (t in (2, 3))
        assert not faulty.last_info.fallback
    assert faulty.counters.faults == 2 and faulty.counters.fallbacks == 0


def test_failed_resample_is_retried_next_tick():
    fb, art = _faulty()
    fb.plan[(2, "main_expert")] = "raise"
    pol = EdgePolicy(art, backend=fb, gate="interval:2", seed=0)
    infos = []
    for t in range(5):
        fb.tick = t
        pol.step(make_observation(t))
        infos.append(pol.last_info)
    assert infos[2].fault and "main_expert" in infos[2].fault and not infos[2].resampled and not infos[2].fallback
    assert infos[3].resampled and infos[3].gate_reason == "pending"  # recovered on the next tick
    assert pol.counters.faults == 1


def test_fault_with_empty_queue_emits_fallback_then_recovers():
    fb, art = _faulty()
    fb.plan[(0, "main_expert")] = "nan"
    pol = EdgePolicy(art, backend=fb, gate="never", fallback="stop")
    fb.tick = 0
    a0 = pol.step(make_observation(0))
    assert a0.tolist() == [0.0, 0.0] and pol.last_info.fallback and "non-finite" in pol.last_info.fault
    fb.tick = 1
    pol.step(make_observation(1))
    assert pol.last_info.resampled and not pol.last_info.fault and pol.counters.fallbacks == 1


def test_failed_refinement_keeps_the_unrefined_plan():
    fb, art = _faulty()
    fb.plan[(1, "delta_expert")] = "raise"
    pol = EdgePolicy(art, backend=fb, gate="never", refine=True, seed=0)
    fb.tick = 0
    pol.step(make_observation(0))
    plan_before = pol._plan.copy()
    fb.tick = 1
    a1 = pol.step(make_observation(1))
    assert pol.last_info.fault and not pol.last_info.refined
    np.testing.assert_allclose(a1, plan_before[0, :2] * 0.03, atol=1e-7)


def test_stalls_count_deadline_misses_and_defer_resamples():
    fb, art = _faulty(sleep_s=0.012)
    for t in range(12):
        fb.plan[(t, "main_expert")] = "sleep"  # every denoise call stalls: ~4 x 12 ms per resample
    pol = EdgePolicy(art, backend=fb, gate="always", tick_budget_ms=25.0, seed=0)
    infos = []
    for t in range(12):
        fb.tick = t
        assert _safe(pol, pol.step(make_observation(t)))
        infos.append(pol.last_info)
    assert infos[0].resampled and infos[0].deadline_missed  # empty queue: must resample, misses
    assert infos[1].deferred and not infos[1].resampled and not infos[1].deadline_missed
    assert infos[2].resampled and infos[2].gate_reason == "pending"  # deferred once, then done
    assert pol.counters.deferred_resamples >= 4
    assert pol.counters.deadline_misses == sum(i.total_ms > 25.0 for i in infos) >= 5
    assert pol.stage_estimates_ms["denoise"] > 25.0


@pytest.mark.parametrize("graph, kind", [("prefix", "raise"), ("prefix", "zero"), ("plan_encoder", "raise")])
def test_a_check_a_fault_interrupted_is_retried_on_the_next_tick(graph, kind):
    """check_every=3: whatever faults the check (the prefix pass, a degenerate obs-CLS, the plan encoder), the
    gate looks again on the next tick — it did not see that observation — then every 3 ticks from there."""
    fb, art = _faulty({"act_cls_wiring": "plan_only"})
    pol = EdgePolicy(art, backend=fb, gate=observing_gate("consistency", check_every=3), seed=0)
    checks = []
    for t in range(10):
        fb.tick = t
        if t == 3:
            fb.plan[(3, graph)] = kind
        pol.step(make_observation(t % 17))
        if pol.last_info.gate_checked:
            checks.append(t)
    assert fb.injected and fb.injected[0][0] == 3
    # t=3 faulted: retried at 4 (not 3 ticks later); the queue runs out at 6 (n = 6) and restarts the rhythm: 9
    assert checks == [4, 9], checks
