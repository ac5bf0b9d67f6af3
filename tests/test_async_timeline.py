"""Deterministic pieces of asynchronous execution: the action timeline (no replay, no reordering, alignment),
seam handling (inpainting keeps the executing rows, blend cross-fades), the chunk planner's fault, retry and
deadline rules, and the simulated latency loop (L = 0 is the synchronous runtime)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

try:
    from tests.fake_artifacts import cached_fake_artifacts, make_observation
except ImportError:
    from fake_artifacts import cached_fake_artifacts, make_observation

from evaluation.latency_loop import LatencyLoop, seam_steps
from runtime.async_planner import AsyncChunkPlanner
from runtime.backend import Backend, BackendError
from runtime.gate import Gate, GateDecision, make_gate
from runtime.policy import EdgePolicy
from runtime.seam import InpaintingBackend, blend, overlap_weights, world_changed
from runtime.timeline import ActionTimeline, TimedChunk


def _policy(gate="always", **kw):
    kw.setdefault("backend_options", {"intra_op_threads": 1})
    return EdgePolicy(cached_fake_artifacts(chunk_size=8), gate=gate, seed=0, **kw)


# ------------------------------------------------------------------ timeline
@settings(max_examples=60, deadline=None)
@given(align=st.booleans(),
       events=st.lists(st.tuples(st.integers(1, 3), st.integers(0, 6), st.booleans()), min_size=1, max_size=40))
def test_no_row_runs_twice_or_out_of_order_across_chunk_swaps(align, events):
    """Random ticks (with gaps), chunks arriving with random delays: each (chunk, row) runs at most once,
    rows of a chunk run in increasing order, and aligned rows run exactly at planned_tick + index."""
    tl = ActionTimeline(align=align)
    tick, cid = -1, 0
    planned: dict[int, int] = {}
    seen: set[tuple[int, int]] = set()
    last_index: dict[int, int] = {}
    for gap, delay, install in events:
        if install:
            p = max(tl.next_tick - delay, 0)
            rows = np.arange(6, dtype=np.float32)[:, None] + 100 * cid
            tl.install(TimedChunk(p, rows, cid))
            planned[cid] = p
            cid += 1
        tick += gap
        got = tl.take(tick)
        if got.row is None:
            continue
        assert (got.chunk_id, got.index) not in seen
        seen.add((got.chunk_id, got.index))
        assert got.index > last_index.get(got.chunk_id, -1)
        last_index[got.chunk_id] = got.index
        assert got.row[0] == got.index + 100 * got.chunk_id
        if align:
            assert got.index == tick - planned[got.chunk_id]
    with pytest.raises(ValueError, match="already taken"):
        tl.take(tick)


def test_aligned_install_skips_elapsed_rows_and_drops_stale_chunks():
    tl = ActionTimeline(align=True)
    for t in range(5):
        tl.take(t)
    assert tl.install(TimedChunk(2, np.zeros((6, 1), np.float32), 0))
    assert tl.take(5).index == 3 and tl.counters.skipped_actions == 3
    assert not tl.install(TimedChunk(0, np.ones((4, 1), np.float32), 1))  # rows 0..3 all elapsed
    assert tl.counters.stale_chunks == 1 and tl.take(6).chunk_id == 0  # the old plan keeps running
    un = ActionTimeline(align=False)
    for t in range(5):
        un.take(t)
    un.install(TimedChunk(2, np.zeros((6, 1), np.float32), 0))
    assert un.take(5).index == 0  # unaligned: the late chunk starts from its first row


# ------------------------------------------------------------------ seams
@settings(max_examples=30, deadline=None)
@given(delay=st.integers(0, 8), seed=st.integers(0, 2**16))
def test_inpainting_keeps_the_rows_that_execute_during_inference(delay, seed):
    pol = _policy()
    rng = np.random.default_rng(seed)
    old = rng.standard_normal((6, pol.manifest.dims.max_action_dim)).astype(np.float32)
    obs = pol.validator.validate(make_observation(seed))
    prefix = pol._prefix(obs, pol.last_info)
    inp = InpaintingBackend(pol.backend)
    noise = rng.standard_normal(pol.manifest.plan_shape).astype(np.float32)
    inp.set_prior(old, delay)
    x = inp.denoise(noise, 4, prefix)
    d = min(delay, len(old))
    np.testing.assert_allclose(x[0, :d], old[:d], atol=1e-6)
    free = pol.backend.denoise(noise, 4, prefix)
    end = min(len(old), delay + 3) if delay else 0
    np.testing.assert_allclose(x[0, end:], free[0, end:], atol=1e-5)  # beyond the fade-out: untouched
    np.testing.assert_allclose(inp.denoise(noise, 4, prefix), free, atol=1e-6)  # the prior was one-shot


def test_overlap_weights_and_blend():
    w = overlap_weights(8, 2, 6)
    assert w[:2].tolist() == [1.0, 1.0] and np.all(np.diff(w[1:6]) < 0) and np.all(w[6:] == 0) and 0 < w[5] < 1
    old, new = np.zeros((5, 2), np.float32), np.ones((8, 2), np.float32)
    out = blend(new, old, start=2, width=3)
    assert np.all(out[:2] == 0) and np.all(np.diff(out[1:5, 0]) > 0) and np.all(out[5:] == 1)


# ------------------------------------------------------------------ planner rules
class _FailingDenoise(Backend):
    """Delegates; `fail` makes the next main-expert calls raise."""

    name = "failing"

    def __init__(self, inner):
        self.inner, self.fail = inner, False

    def run_prefix(self, *a):
        return self.inner.run_prefix(*a)

    def run_main_expert(self, *a):
        if self.fail:
            raise BackendError("injected main_expert failure")
        return self.inner.run_main_expert(*a)

    def run_delta_expert(self, *a):
        return self.inner.run_delta_expert(*a)


@pytest.mark.parametrize("seam", ["none", "inpaint"])
def test_failed_resample_keeps_the_plan_and_is_retried(seam):
    base = _policy()
    fb = _FailingDenoise(base.backend)
    pol = _policy(backend=fb)
    planner = AsyncChunkPlanner(pol, seam=seam)
    first = planner.plan(make_observation(0), 0, None, 0, 1)
    assert first.chunk is not None and first.chunk.planned_tick == 0
    fb.fail = True
    second = planner.plan(make_observation(1), 2, first.chunk.actions[2:], 2, 1)
    assert second.chunk is None and "main_expert" in second.info.fault
    fb.fail = False
    pol.gate = make_gate("never")  # only the retry rule can resample now
    third = planner.plan(make_observation(2), 3, first.chunk.actions[3:], 3, 1)
    assert third.chunk is not None and third.info.gate_reason == "pending"


def test_deadline_defers_and_the_next_job_resamples():
    pol = _policy(tick_budget_ms=1e-6)
    planner = AsyncChunkPlanner(pol, seam="none")
    first = planner.plan(make_observation(0), 0, None, 0, 1)
    assert first.chunk is not None  # an empty queue is never deferred
    second = planner.plan(make_observation(1), 1, first.chunk.actions[1:], 1, 1)
    assert second.chunk is None and second.info.deferred
    third = planner.plan(make_observation(2), 2, first.chunk.actions[2:], 2, 1)
    assert third.chunk is not None and third.info.gate_reason == "pending"


class _ChangeGate(Gate):
    """Fires every check: as drift over its threshold when `changed`, else as a plain refill (`always`)."""

    name = "scripted"

    def __init__(self):
        super().__init__()
        self.changed = False

    def _decide(self, inp):
        return GateDecision(True, True, 1.0, 0.5, "drift") if self.changed else GateDecision(True, True, reason="always")


def test_world_changed_reads_the_gate_decision():
    assert world_changed("drift", 0.2, 0.1) and world_changed("consistency", 0.2, 0.1)
    assert world_changed("instruction_changed", None, None)
    assert not world_changed("drift", 0.05, 0.1) and not world_changed("always", None, None)
    assert not world_changed("queue_empty", None, None) and not world_changed("interval", 9.0, 3.0)


@pytest.mark.parametrize("seam", ["inpaint", "blend"])
def test_a_change_triggered_resample_is_not_pulled_toward_the_old_plan(seam):
    """Refill: the rows after the delay fade from the old plan. Gate fired (the world changed): only the d rows
    that execute during inference are the old plan's; the rest is the model's fresh chunk."""
    gate = _ChangeGate()
    pol = _policy(gate=gate)
    planner = AsyncChunkPlanner(pol, seam=seam, seam_width=3)
    assert planner.plan(make_observation(0), 0, None, 0, 2).chunk is not None
    a, d = pol.manifest.dims.max_action_dim, 2
    old = np.full((6, a), 3.0, dtype=np.float32)  # the executing plan, far from anything the model plans
    noise = np.random.default_rng(5).standard_normal(pol.manifest.plan_shape).astype(np.float32)
    chunks = {}
    for changed in (False, True):
        gate.changed = changed
        pol.next_noise = noise
        res = planner.plan(make_observation(1), 2, old, 2, d)
        assert res.chunk is not None and planner.last_reacted == changed
        chunks[changed] = res.chunk.actions
    refill, react = chunks[False], chunks[True]
    np.testing.assert_allclose(refill[:d], old[:d], atol=1e-6)
    np.testing.assert_allclose(react[:d], old[:d], atol=1e-6)  # what runs during inference is kept either way
    gap = lambda x: np.abs(x[d:d + 3] - old[d:d + 3]).mean(axis=1)
    assert np.all(gap(refill) < gap(react) - 1e-3)  # the refill is pulled toward the old plan, the reaction not
    if seam == "inpaint":  # the reaction is exactly the denoise with a react_width prior (d rows + a short fade)
        inp = pol.backend
        inp.set_prior(old, d, planner.react_width)
        pol.reset()
        prefix = pol._prefix(pol.validator.validate(make_observation(1)), pol.last_info)
        x = inp.denoise(noise.copy(), pol.num_steps, prefix)[0, : len(react)]
        np.testing.assert_allclose(react, x, atol=1e-5)
    reflex = AsyncChunkPlanner(_policy(gate=gate), seam=seam, seam_width=3, reactive=False)
    reflex.plan(make_observation(0), 0, None, 0, 2)
    reflex.policy.next_noise = noise
    np.testing.assert_allclose(reflex.plan(make_observation(1), 2, old, 2, d).chunk.actions, refill, atol=1e-5)


def test_the_retry_of_a_failed_reaction_still_reacts():
    gate = _ChangeGate()
    fb = _FailingDenoise(_policy().backend)
    pol = _policy(backend=fb, gate=gate)
    planner = AsyncChunkPlanner(pol, seam="inpaint")
    first = planner.plan(make_observation(0), 0, None, 0, 1)
    assert not planner.last_reacted  # queue_empty: a refill
    gate.changed, fb.fail = True, True
    assert planner.plan(make_observation(1), 2, first.chunk.actions[2:], 2, 1).chunk is None
    fb.fail, gate.changed = False, False
    pol.gate = make_gate("never")  # only the retry rule can resample now
    third = planner.plan(make_observation(2), 3, first.chunk.actions[3:], 3, 1)
    assert third.chunk is not None and third.info.gate_reason == "pending" and planner.last_reacted


def test_a_plan_that_runs_out_during_inference_forces_a_resample():
    planner = AsyncChunkPlanner(_policy(gate="never"), seam="none")
    first = planner.plan(make_observation(0), 0, None, 0, 3)
    rows = first.chunk.actions[5:]  # 3 rows left, all of them run during the 3-tick inference
    again = planner.plan(make_observation(1), 5, rows, 5, 3)
    assert again.chunk is not None and again.info.gate_reason == "queue_empty"
    kept = planner.plan(make_observation(2), 6, again.chunk.actions[1:], 1, 3)
    assert kept.chunk is None


def test_the_refill_is_requested_margin_rows_before_the_plan_runs_out():
    """Latency-aware trigger: with delay d and margin m the next chunk is requested once the plan has at most
    d + m rows left (so it lands with m rows of the old plan still queued), not earlier."""
    planner = AsyncChunkPlanner(_policy(gate="never"), seam="none", margin=2)
    first = planner.plan(make_observation(0), 0, None, 0, 3)
    assert first.chunk is not None and len(first.chunk.actions) == 8
    kept = planner.plan(make_observation(1), 2, first.chunk.actions[2:], 2, 3)  # 6 rows left > 3 + 2
    assert kept.chunk is None and kept.info.gate_reason == "never"
    due = planner.plan(make_observation(2), 3, first.chunk.actions[3:], 3, 3)  # 5 rows left = 3 + 2
    assert due.chunk is not None and due.info.gate_reason == "queue_empty"
    with pytest.raises(ValueError, match="margin"):
        AsyncChunkPlanner(_policy(), margin=-1)
    with pytest.raises(ValueError, match="react_width"):
        AsyncChunkPlanner(_policy(), seam_width=2, react_width=3)


@pytest.mark.parametrize("margin", [8, 100, 1.5, True])
def test_a_margin_that_would_bypass_the_gate_is_refused(margin):
    """margin >= n_action_steps (8 here) would make every job resample: the gate would never be consulted."""
    with pytest.raises(ValueError, match=r"margin must be an integer in \[0, n_action_steps=8\)"):
        AsyncChunkPlanner(_policy(gate="never"), seam="none", margin=margin)


def test_delay_plus_margin_covering_the_plan_warns_once(caplog):
    planner = AsyncChunkPlanner(_policy(gate="never"), seam="none", margin=3)
    first = planner.plan(make_observation(0), 0, None, 0, 2)  # 2 + 3 < 8: quiet
    assert first.chunk is not None and "never consulted" not in caplog.text
    with caplog.at_level("WARNING", logger="runtime.async_planner"):
        for tick in (1, 2):  # 5 + 3 >= 8: every job would resample
            planner.plan(make_observation(tick), tick, first.chunk.actions[tick:], tick, 5)
    assert caplog.text.count("never consulted") == 1 and "margin 3" in caplog.text


def test_a_reaction_keeps_a_short_fade_of_react_width_rows():
    """A chunk that reacts to a change is pulled toward the old plan on exactly react_width rows after the
    delay (weights of `overlap_weights`), and not at all beyond them."""
    gate = _ChangeGate()
    pol = _policy(gate=gate)
    planner = AsyncChunkPlanner(pol, seam="blend", seam_width=3, react_width=1)
    planner.plan(make_observation(0), 0, None, 0, 2)
    a, d = pol.manifest.dims.max_action_dim, 2
    old = np.full((6, a), 3.0, dtype=np.float32)
    noise = np.random.default_rng(5).standard_normal(pol.manifest.plan_shape).astype(np.float32)
    gate.changed = True
    pol.next_noise = noise
    react = planner.plan(make_observation(1), 2, old, 2, d).chunk.actions
    free = AsyncChunkPlanner(_policy(gate=gate), seam="none")
    free.plan(make_observation(0), 0, None, 0, 2)
    free.policy.next_noise = noise
    fresh = free.plan(make_observation(1), 2, old, 2, d).chunk.actions
    np.testing.assert_allclose(react[:d], old[:d], atol=1e-6)
    np.testing.assert_allclose(react[d], 0.5 * old[d] + 0.5 * fresh[d], atol=1e-5)
    np.testing.assert_allclose(react[d + 1:], fresh[d + 1:], atol=1e-5)


# ------------------------------------------------------------------ simulated loop
def test_latency_zero_is_the_synchronous_runtime():
    from simtask import ReachEnv, TaskConfig

    class Recording(ReachEnv):
        def reset(self, **kw):
            self.sent = []
            return super().reset(**kw)

        def step(self, action):
            self.sent.append(np.array(action))
            return super().step(action)

    env = ReachEnv(TaskConfig(max_steps=25, perturb_window=(5, 10)))
    pol = _policy(gate="interval:3")
    obs = env.reset(seed=7, perturb=True)
    pol.reset(seed=7)
    done, sync_actions = False, []
    while not done:
        sync_actions.append(pol.step(obs))
        obs, done, _ = env.step(sync_actions[-1])
    for mode, waypoints in [(m, False) for m in ("aligned", "aligned+inpaint", "aligned+blend", "async", "sync")] + \
            [("aligned", True)]:  # a position-controlled robot reaches each waypoint: the same displacements
        rec_env = Recording(env.config)
        rec = LatencyLoop(_policy(gate="interval:3"), mode, 0, waypoints=waypoints).episode(rec_env, 7, perturb=True)
        assert rec["resamples"] == pol.episode_counters.resamples
        np.testing.assert_allclose(np.asarray(rec_env.sent), np.asarray(sync_actions), atol=1e-5)


@pytest.mark.parametrize("waypoints", [False, True])
@pytest.mark.parametrize("mode", ["sync", "async", "aligned", "aligned+blend", "aligned+inpaint"])
def test_every_mode_emits_safe_actions_under_latency(mode, waypoints):
    from simtask import ReachEnv, TaskConfig

    pol = _policy(gate="drift")
    loop = LatencyLoop(pol, mode, 3, waypoints=waypoints)
    rec = loop.episode(ReachEnv(TaskConfig(max_steps=30, perturb_window=(5, 10))), 3, perturb=True)
    assert rec["steps"] >= 1 and rec["faults"] == 0
    assert (rec["paused_ticks"] > 0) == (mode == "sync")
    if mode.startswith("aligned"):
        assert loop.timeline.counters.skipped_actions >= 3 * (loop.timeline.counters.chunks_installed - 1)


def test_seam_steps_split_boundaries_from_within_chunk_steps():
    actions = np.array([[0, 0], [1, 0], [1, 1], [5, 1], [5, 2], [9, 9]], dtype=np.float32)
    ids = np.array([0, 0, 0, 1, 1, -1])
    seam, within = seam_steps(actions, ids)
    assert seam.tolist() == [4.0] and sorted(within.tolist()) == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("align", [True, False])
def test_a_continuation_runs_on_its_own_ticks_in_both_modes(align):
    """A refined plan (`continues=True`) replaces the executing rows tick for tick: nothing replayed, nothing
    skipped or counted skipped, whether or not fresh chunks are aligned."""
    tl = ActionTimeline(align=align)
    first = np.arange(10, dtype=np.float32)[:, None]
    tl.install(TimedChunk(0, first, 0))
    rows = [tl.take(t).row[0] for t in range(4)]
    refined = first + 100.0
    assert tl.install(TimedChunk(2, refined[2:], 1, continues=True))  # pinned to tick 2; ticks 2, 3 ran
    rows += [tl.take(t).row[0] for t in range(4, 7)]
    assert rows == [0, 1, 2, 3, 104, 105, 106]
    assert tl.counters.skipped_actions == 0 and tl.take(7).skipped is None


@pytest.mark.parametrize("mode", ["sync", "aligned"])
def test_latency_loop_models_resample_latency_only(mode):
    """A refinement of the running plan is spliced in at once: it neither pauses the robot (sync) nor counts as a
    resample; the same episode with refinement off pauses exactly as often."""
    from simtask import ReachEnv, TaskConfig

    runs = {}
    for refine in (False, True):
        pol = EdgePolicy(cached_fake_artifacts(chunk_size=16), gate="never", refine=refine, seed=0,
                         backend_options={"intra_op_threads": 1})
        rec = LatencyLoop(pol, mode, 4).episode(ReachEnv(TaskConfig(max_steps=40)), 7, perturb=False)
        runs[refine] = (rec, pol.counters.refines)
    (plain, _), (refined, refines) = runs[False], runs[True]
    assert refines > 5
    assert refined["paused_ticks"] == plain["paused_ticks"] and refined["resamples"] == plain["resamples"]


def _counting(plan, jobs: list[int]):
    """`plan` that appends to `jobs` on every call (how many jobs the loop ran)."""
    def counted(*a, **k):
        jobs.append(1)
        return plan(*a, **k)
    return counted


@pytest.mark.parametrize("delay", [0, 1, 2, 3])
def test_the_never_consulted_warning_comes_exactly_when_every_job_resamples(delay, caplog):
    """A 4-row plan (chunk 8, n_action_steps 4), gate `never`: whether every job must refill depends on the delay,
    the margin and how soon the next job comes (a job's tick is after its plan's, so at least one row has run):
    before, the warning only knew delay + margin >= n_action_steps and stayed silent when e.g. delay 1 +
    margin 2 (or delay 2 in the simulation) left every job resampling. Each margin is judged on one episode."""
    from simtask import ReachEnv, TaskConfig

    art = cached_fake_artifacts(chunk_size=8, n_action_steps=4)
    for margin in range(4):
        caplog.clear()
        loop = LatencyLoop(EdgePolicy(art, gate="never", seed=0, backend_options={"intra_op_threads": 1}), "aligned",
                           delay, margin=margin)
        jobs: list[int] = []
        loop.planner.plan = _counting(loop.planner.plan, jobs)
        with caplog.at_level("WARNING", logger="runtime.async_planner"):
            rec = loop.episode(ReachEnv(TaskConfig()), 0, False)
        every = rec["resamples"] == len(jobs)
        assert caplog.text.count("never consulted") == every, (delay, margin, rec["resamples"], len(jobs))
