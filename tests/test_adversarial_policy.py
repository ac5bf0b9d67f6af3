"""Adversarial use of the runtime's public API (issue #18): arguments, threads, instructions, backend outputs,
timeouts, masked arrays, a changed instruction, and the evaluation CLI's --json target.

Every wrong argument is a PolicyArgumentError naming it; every malformed backend output becomes a reported
fault with a safe action; concurrent step() calls never mix observations.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

try:
    from tests.fake_artifacts import cached_fake_artifacts, make_observation
except ImportError:
    from fake_artifacts import cached_fake_artifacts, make_observation

from evaluation.episodes import main as episodes_main
from runtime.backend import Backend, PrefixState
from runtime.backend_onnxruntime import OnnxRuntimeBackend
from runtime.manifest import Manifest
from runtime.observation import ObservationError
from runtime.policy import EdgePolicy
from runtime.policy_arguments import PolicyArgumentError
from runtime.tokenizer import MAX_INSTRUCTION_BYTES

ART = cached_fake_artifacts()
ZERO_NOISE = lambda shape, rng: np.zeros(shape, dtype=np.float32)


# ------------------------------------------------------------------ constructor arguments
BAD_ARGUMENTS = [
    ("num_steps", 10**9), ("num_steps", 0), ("num_steps", -1), ("num_steps", "5"), ("num_steps", 1.5),
    ("num_steps", True), ("tick_budget_ms", "5"), ("tick_budget_ms", float("nan")), ("tick_budget_ms", float("inf")),
    ("tick_budget_ms", -1.0), ("tick_budget_ms", 0), ("tick_budget_ms", True), ("seed", -1), ("seed", "0"),
    ("seed", 1.5), ("check_every", 0), ("check_every", 10**9), ("check_every", "1"),
    ("state_tolerance", float("nan")), ("state_tolerance", -1.0), ("state_tolerance", "1"), ("refine", "yes"),
    ("refine", 1), ("fallback", "explode"), ("fallback", 5), ("out_of_bounds", "ignore"), ("device", "tpu"),
    ("on_bad_observation", "ignore"), ("backend", "tflite"), ("backend", 5), ("gate", "drift:nan"),
    ("gate", "x" * 1000), ("gate", "drift:-1"), ("gate", "bogus"), ("gate", "consistency:2"), ("gate", 5),
    ("gate", "any:drift"), ("noise_fn", 5), ("backend_options", [1]), ("artifacts_dir", 5),
    ("expected_digest", "abc"), ("trusted_keys", [5]), ("verify_hashes", "no"),
]


@pytest.mark.parametrize("name, value", BAD_ARGUMENTS, ids=[f"{n}={str(v)[:12]}" for n, v in BAD_ARGUMENTS])
def test_bad_constructor_argument_is_named(name, value):
    kwargs = {"artifacts_dir": ART, name: value}
    t0 = time.perf_counter()
    with pytest.raises(PolicyArgumentError) as exc:  # one error type for every argument, the gate spec included
        EdgePolicy(**kwargs)
    msg = str(exc.value)
    named = name.split("_")[0] if name in ("artifacts_dir",) else name
    assert (named in msg or "gate" in msg or "threshold" in msg) and "\n" not in msg and len(msg) < 300, msg
    assert time.perf_counter() - t0 < 10  # refused, not run


def test_manifest_num_steps_is_bounded_too():
    """num_steps=10**9 in the manifest is a schema error, so step() can never loop forever."""
    from runtime.manifest_schema import MAX_NUM_STEPS

    assert MAX_NUM_STEPS <= 1000
    p = EdgePolicy(ART, num_steps=MAX_NUM_STEPS, gate="always", noise_fn=ZERO_NOISE)
    t0 = time.perf_counter()
    p.step(make_observation(0))
    assert time.perf_counter() - t0 < 30


def test_warmup_and_reset_arguments_are_checked():
    p = EdgePolicy(ART)
    with pytest.raises(PolicyArgumentError, match="runs"):
        p.warmup(make_observation(0), runs=10**9)
    with pytest.raises(PolicyArgumentError, match="seed"):
        p.reset(seed="1")


# ------------------------------------------------------------------ threads
def test_concurrent_steps_never_mix_observations():
    """With resampling every tick and zero noise the action is a function of the observation alone; from four
    threads at once each action must equal the one computed alone for that thread's observation."""
    obs = [make_observation(i) for i in range(4)]
    solo = EdgePolicy(ART, gate="always", noise_fn=ZERO_NOISE)
    want = [solo.step(o).copy() for o in obs]
    shared = EdgePolicy(ART, gate="always", noise_fn=ZERO_NOISE)
    mismatches, errors = [], []

    def loop(i: int) -> None:
        try:
            for _ in range(40):
                a = shared.step(obs[i])
                if not np.allclose(a, want[i], atol=1e-6):
                    mismatches.append(i)
        except Exception as exc:  # noqa: BLE001 — surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not mismatches
    assert shared.counters.ticks == 160


# ------------------------------------------------------------------ instructions
def test_huge_instruction_is_refused_fast_with_a_bounded_message():
    p = EdgePolicy(ART)
    obs = make_observation(0, task="reach " * 1_000_000)
    t0 = time.perf_counter()
    with pytest.raises(ObservationError) as exc:
        p.step(obs)
    assert time.perf_counter() - t0 < 0.5
    assert len(str(exc.value)) < 400 and str(MAX_INSTRUCTION_BYTES) in str(exc.value)


def test_too_many_tokens_message_is_bounded_and_failure_remembered(monkeypatch):
    p = EdgePolicy(ART, on_bad_observation="fallback")
    calls = []
    real = p.tokenizer._encode
    monkeypatch.setattr(p.tokenizer, "_encode", lambda text: calls.append(1) or real(text))
    obs = make_observation(0, task="red " * 400)
    for _ in range(5):
        a = p.step(obs)
        assert np.all(np.isfinite(a)) and p.last_info.fault and len(p.last_info.fault) < 400
    assert len(calls) == 1  # tokenised once, then remembered


@pytest.mark.parametrize("task", ["\ud800", "a\x00b", "reach" + "\u0301" * 500])
def test_odd_instructions_are_handled(task):
    p = EdgePolicy(ART)
    try:
        a = p.step(make_observation(0, task=task))
        assert np.all(np.isfinite(a))
    except ObservationError as exc:
        assert "task" in str(exc) and len(str(exc)) < 400


def test_changed_instruction_forces_a_resample():
    p = EdgePolicy(ART, gate="interval:100", noise_fn=ZERO_NOISE)
    obs = make_observation(0, task="reach the red target")
    p.step(obs)
    p.step(obs)
    assert not p.last_info.resampled
    p.step({**obs, "task": "reach the blue target"})
    assert p.last_info.resampled and p.last_info.gate_reason == "instruction_changed"
    p.step({**obs, "task": "reach the blue target"})
    assert not p.last_info.resampled


# ------------------------------------------------------------------ masked arrays
@pytest.mark.parametrize("field", ["observation.images.top", "observation.state"])
def test_masked_arrays_are_refused(field):
    obs = make_observation(0)
    value = obs[field]
    if value.dtype.kind == "f":
        value = value.copy()
        value[0] = np.nan
    obs[field] = np.ma.masked_array(value, mask=np.zeros(value.shape, dtype=bool) | (np.arange(value.size)
                                                                                     .reshape(value.shape) == 0))
    with pytest.raises(ObservationError, match="masked"):
        EdgePolicy(ART).step(obs)


# ------------------------------------------------------------------ image size when the manifest allows no resize
@pytest.mark.parametrize("size", [(48, 64), (64, 63), (128, 128), (1, 1)])
def test_wrong_image_size_without_resize_is_named_and_falls_back(tmp_path, size):
    import shutil

    try:
        from tests.fake_artifacts import load_manifest_dict, write_manifest_dict
    except ImportError:
        from fake_artifacts import load_manifest_dict, write_manifest_dict
    art = tmp_path / "art"
    shutil.copytree(ART, art)
    raw = load_manifest_dict(art)
    raw["image_preprocess"]["resize"] = "none"
    write_manifest_dict(art, raw)
    good, bad = make_observation(0), make_observation(1, size=size)
    with pytest.raises(ObservationError, match="observation.images.top.*allows no resize"):
        EdgePolicy(art).step(bad)
    p = EdgePolicy(art, on_bad_observation="fallback")
    first = p.step(good)
    action = p.step(bad)  # the fault is reported, the queued plan continues: no exception from preprocessing
    assert p.last_info.fault and "observation.images.top" in p.last_info.fault
    assert np.all(np.isfinite(action)) and np.all(np.isfinite(first))


# ------------------------------------------------------------------ backend outputs at the policy boundary
class Mangling(Backend):
    """Wraps the real backend and mangles one output kind."""

    name = "mangling"

    def __init__(self, inner: Backend, graph: str, mangle):
        self.inner, self.graph, self.mangle = inner, graph, mangle

    def run_prefix(self, *a):
        out = self.inner.run_prefix(*a)
        if self.graph == "prefix":
            return self.mangle(out)
        return out

    def run_main_expert(self, *a):
        out = self.inner.run_main_expert(*a)
        return self.mangle(out) if self.graph == "main_expert" else out

    def run_delta_expert(self, *a):
        out = self.inner.run_delta_expert(*a)
        return self.mangle(out) if self.graph == "delta_expert" else out

    def run_plan_encoder(self, *a):
        out = self.inner.run_plan_encoder(*a)
        return self.mangle(out) if self.graph == "plan_encoder" else out


def _prefix_with(obs_cls) -> object:
    return lambda p: PrefixState(obs_cls=obs_cls(p.obs_cls), handle=p.handle)


MANGLES = [
    ("main_expert", lambda v: v[:, :-1], "shape"),
    ("main_expert", lambda v: v.tolist(), "numpy array"),
    ("main_expert", lambda v: v.astype(np.int32), "dtype"),
    ("main_expert", lambda v: None, "numpy array"),
    ("main_expert", lambda v: np.ma.masked_array(v), "numpy array"),
    ("main_expert", lambda v: v * np.inf, "non-finite"),
    ("prefix", _prefix_with(lambda c: c[:, :1]), "obs_cls"),
    ("prefix", _prefix_with(lambda c: c.tolist()), "obs_cls"),
    ("prefix", _prefix_with(lambda c: np.full_like(c, np.nan)), "obs_cls"),
    ("prefix", lambda p: (p.obs_cls, p.handle), "PrefixState"),
    ("delta_expert", lambda out: out[0], "delta, act_cls"),
    ("delta_expert", lambda out: (out[0][:, :2], out[1]), "delta"),
    ("delta_expert", lambda out: (out[0], out[1][:, :, :3]), "act_cls"),
    ("delta_expert", lambda out: (out[0], out[1], out[1]), "delta, act_cls"),
    ("plan_encoder", lambda c: np.full_like(c, np.nan), "act_cls"),  # plan_only artifacts (PLAN_ONLY_ART)
    ("plan_encoder", lambda c: c[:, :, :3], "act_cls"),
    ("plan_encoder", lambda c: c.tolist(), "act_cls"),
]
PLAN_ONLY_ART = cached_fake_artifacts(act_cls_wiring="plan_only")


@pytest.mark.parametrize("graph, mangle, needle", MANGLES, ids=[f"{g}-{n}-{i}" for i, (g, _, n) in enumerate(MANGLES)])
def test_malformed_backend_output_is_a_fault_with_a_safe_action(graph, mangle, needle):
    art = PLAN_ONLY_ART if graph == "plan_encoder" else ART
    m = Manifest.load(art)
    backend = Mangling(OnnxRuntimeBackend(art, m), graph, mangle)
    p = EdgePolicy(art, backend=backend, gate="consistency", refine=True)
    faults = []
    for i in range(6):
        a = p.step(make_observation(i))
        assert a.shape == (m.dims.action_dim,) and np.all(np.isfinite(a))
        assert np.all(a >= m.action_bounds.low) and np.all(a <= m.action_bounds.high)
        if p.last_info.fault:
            faults.append(p.last_info.fault)
    assert faults and needle in faults[0], faults


def test_float64_backend_output_is_accepted_as_float32():
    m = Manifest.load(ART)
    backend = Mangling(OnnxRuntimeBackend(ART, m), "main_expert", lambda v: v.astype(np.float64))
    p = EdgePolicy(ART, backend=backend, gate="always")
    a = p.step(make_observation(0))
    assert p.last_info.fault is None and a.dtype == np.float32


# ------------------------------------------------------------------ per-call timeout (onnxruntime run options)
class _ImmediateTimer:
    """Stands in for threading.Timer: fires at start(), as if the graph call had already run too long."""

    def __init__(self, interval, function, args=()):
        self.function, self.args, self.daemon = function, args, True

    def start(self):
        self.function(*self.args)

    def cancel(self):
        pass


def test_timed_out_graph_call_is_a_fault_not_a_hang(monkeypatch):
    import runtime.backend_onnxruntime as ort_backend

    p = EdgePolicy(ART, gate="always", backend_options={"run_timeout_ms": 50})
    monkeypatch.setattr(ort_backend.threading, "Timer", _ImmediateTimer)
    a = p.step(make_observation(0))
    assert np.all(np.isfinite(a)) and p.last_info.fallback
    assert "run_timeout_ms" in p.last_info.fault
    monkeypatch.undo()
    p.step(make_observation(1))
    assert p.last_info.fault is None and p.last_info.resampled  # recovers once calls are fast again


def test_real_timeout_does_not_fire_on_fast_calls():
    p = EdgePolicy(ART, gate="always", backend_options={"run_timeout_ms": 5000})
    for i in range(5):
        p.step(make_observation(i))
        assert p.last_info.fault is None


@pytest.mark.parametrize("value", [-1, 0, "5", float("nan"), True, 10**9])
def test_bad_run_timeout_is_named(value):
    with pytest.raises(ValueError, match="run_timeout_ms"):
        EdgePolicy(ART, backend_options={"run_timeout_ms": value})


# ------------------------------------------------------------------ evaluation CLI: --json checked before running
def _json_case(tmp_path: Path, kind: str) -> str:
    if kind == "parent_is_file":
        (tmp_path / "f").write_text("x")
        return str(tmp_path / "f" / "out.json")
    if kind == "target_is_folder":
        (tmp_path / "d").mkdir()
        return str(tmp_path / "d")
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    return str(tmp_path / "ro" / "out.json")


@pytest.mark.parametrize("kind", ["parent_is_file", "target_is_folder", "unwritable"])
def test_bad_json_target_is_refused_before_any_episode(tmp_path, capsys, kind):
    if kind == "unwritable" and os.geteuid() == 0:
        pytest.skip("root can write anywhere: the unwritable case cannot be staged")
    target = _json_case(tmp_path, kind)
    t0 = time.perf_counter()
    rc = episodes_main(["run", "--artifacts", str(ART), "--episodes", "50", "--json", target])
    captured = capsys.readouterr()
    assert rc == 2 and "--json" in captured.err and captured.err.count("\n") == 1
    assert "success rate" not in captured.out and time.perf_counter() - t0 < 5


def test_evaluation_refuses_a_foreign_digest(capsys):
    rc = episodes_main(["run", "--artifacts", str(ART), "--episodes", "1", "--expect-digest", "sha256:" + "1" * 64])
    assert rc == 2 and "not the expected" in capsys.readouterr().err


@pytest.mark.parametrize("options", [{"foo": 1}, {"intra_op_threads": "4"}, {"io_binding": "yes", "foo": 2}])
def test_unknown_or_ill_typed_backend_option_is_named(options):
    with pytest.raises(PolicyArgumentError, match="backend_options"):
        EdgePolicy(ART, backend_options=options)


ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=8),
                      st.lists(st.integers(), max_size=2), st.builds(np.float32, st.floats(width=32)),
                      st.builds(np.int64, st.integers(-2**63, 2**63 - 1)))


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(["num_steps", "tick_budget_ms", "check_every", "state_tolerance", "seed"]), value=ANY_VALUE)
def test_any_argument_value_is_accepted_in_range_or_named(name, value):
    from runtime import policy_arguments as pa

    checks = {"num_steps": pa.num_steps,
              "tick_budget_ms": lambda v: pa.optional("tick_budget_ms", v, pa.number, 0.0, pa.MAX_TICK_BUDGET_MS,
                                                      low_open=True),
              "check_every": lambda v: pa.integer("check_every", v, 1, pa.MAX_CHECK_EVERY),
              "state_tolerance": lambda v: pa.optional("state_tolerance", v, pa.number, 0.0, pa.MAX_STATE_TOLERANCE),
              "seed": lambda v: pa.integer("seed", v, 0, 2**63 - 1)}
    try:
        out = checks[name](value)
    except PolicyArgumentError as exc:
        assert name in str(exc) and len(str(exc)) < 200
        return
    assert out is None or (type(out) in (int, float) and np.isfinite(out) and out >= 0)
