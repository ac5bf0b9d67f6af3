"""Fuzz: >= 1,000 malformed observations. Raise mode: every one is an ObservationError naming a field,
nothing else escapes. Fallback mode: never raises, every emitted action is finite and inside bounds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

try:
    from tests.fake_artifacts import CAMERA_KEY, STATE_KEY, cached_fake_artifacts
except ImportError:
    from fake_artifacts import CAMERA_KEY, STATE_KEY, cached_fake_artifacts

from runtime.observation import ObservationError
from runtime.policy import EdgePolicy

FIELDS = {CAMERA_KEY, STATE_KEY, "task", "<observation>"}
N_MALFORMED = 1000


def _valid(draw) -> dict:
    h, w = draw(st.integers(4, 80)), draw(st.integers(4, 80))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if draw(st.booleans()):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    else:
        img = rng.random((3, h, w)).astype(draw(st.sampled_from([np.float32, np.float64])))
    state = rng.uniform(0, 1, 2).astype(np.float32)
    return {CAMERA_KEY: img, STATE_KEY: state, "task": draw(st.sampled_from(["reach the red target", "reach the blue target"]))}


def _bad_image(draw, img):
    h, w = draw(st.integers(4, 40)), draw(st.integers(4, 40))
    choice = draw(st.integers(0, 11))
    if choice == 0:
        return draw(st.sampled_from([None, "image", 3, [[1, 2]], {"a": 1}]))
    if choice == 1:
        return np.zeros((h, w), np.uint8)  # 2-D
    if choice == 2:
        return np.zeros((1, h, w, 3), np.uint8)  # batched
    if choice == 3:
        return np.zeros((h, w, draw(st.sampled_from([1, 2, 4]))), np.uint8)  # wrong channels
    if choice == 4:
        return np.zeros((h, w, 3), np.float32)  # float but HWC (h >= 4 so never reads as CHW)
    if choice == 5:
        return np.zeros((3, h, w), draw(st.sampled_from([np.int32, np.int64, np.bool_, np.complex64, np.uint16])))
    if choice == 6:
        return np.zeros((3, 0, w), np.float32) if draw(st.booleans()) else np.zeros((0, w, 3), np.uint8)
    if choice == 7:
        a = np.random.default_rng(h).random((3, h, w)).astype(np.float32)
        a[draw(st.integers(0, 2)), draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = draw(
            st.sampled_from([np.nan, np.inf, -np.inf]))
        return a
    if choice == 8:
        return np.full((3, h, w), draw(st.floats(1.01, 1e6)), np.float32)  # 0..255 scale or worse
    if choice == 9:
        return np.full((3, h, w), draw(st.floats(-1e6, -0.01)), np.float64)
    if choice == 10:
        return np.empty((3, h, w), dtype=object)
    return img.tolist()  # nested list instead of an array


def _bad_state(draw):
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(st.sampled_from([None, "0.5 0.5", 0.5, {"x": 1}, b"\x00\x01"]))
    if choice == 1:
        return np.zeros(draw(st.sampled_from([0, 1, 3, 32])), np.float32)
    if choice == 2:
        s = np.full(2, 0.5, np.float32)
        s[draw(st.integers(0, 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        return s
    if choice == 3:
        return np.full(2, draw(st.sampled_from([1e6, -1e6, 1e30, 3.5])), np.float64)  # far outside [0, 1]
    if choice == 4:
        return np.array([True, False])
    if choice == 5:
        return np.array(["a", "b"])
    if choice == 6:
        return [[0.5, 0.5], [0.5]]  # ragged
    if choice == 7:
        return np.zeros((2, 1), np.float32)
    if choice == 8:
        return np.array([0.5 + 1j, 0.5])
    return [0.5, "x"]


def _bad_task(draw):
    choice = draw(st.integers(0, 6))
    if choice == 0:
        return draw(st.sampled_from([None, 3, b"reach the red target", 1.5, {"t": "x"}]))
    if choice == 1:
        return draw(st.sampled_from(["", "   ", "\n\t"]))
    if choice == 2:
        return " ".join(["red"] * draw(st.integers(7, 200)))  # longer than lang_len
    if choice == 3:
        return ["reach the red target", "reach the blue target"]
    if choice == 4:
        return []
    if choice == 5:
        return np.array(["reach the red target"])
    return "reach the red target " + "blue " * draw(st.integers(3, 10))


@st.composite
def malformed(draw):
    obs = _valid(draw)
    target = draw(st.sampled_from(["not_mapping", "drop", "image", "state", "task", "several"]))
    if target == "not_mapping":
        return draw(st.sampled_from([None, [], "obs", 5, np.zeros(3), (CAMERA_KEY,)]))
    if target == "drop":
        del obs[draw(st.sampled_from([CAMERA_KEY, STATE_KEY, "task"]))]
        return obs
    if target in ("image", "several"):
        obs[CAMERA_KEY] = _bad_image(draw, obs[CAMERA_KEY])
    if target in ("state", "several"):
        obs[STATE_KEY] = _bad_state(draw)
    if target in ("task", "several"):
        obs["task"] = _bad_task(draw)
    if draw(st.booleans()):
        obs["extra.key"] = object()  # unknown keys are ignored, never the cause
    return obs


@pytest.fixture(scope="module")
def policies():
    art = cached_fake_artifacts()
    opts = {"intra_op_threads": 1}
    strict = EdgePolicy(art, gate="drift", backend_options=opts)
    lenient = EdgePolicy(art, gate="consistency", refine=True, on_bad_observation="fallback", backend_options=opts)
    yield strict, lenient
    strict.close()
    lenient.close()


def _assert_safe(policy, action):
    b = policy.manifest.action_bounds
    assert action.shape == (2,) and action.dtype == np.float32
    assert np.all(np.isfinite(action)) and np.all(action >= b.low) and np.all(action <= b.high)


def test_fuzz_malformed_observations(policies):
    strict, lenient = policies
    seen = {"malformed": 0, "valid_interleaved": 0}

    @settings(max_examples=N_MALFORMED, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(bad=malformed(), valid=st.builds(lambda: None) | st.just("valid"), data=st.data())
    def run(bad, valid, data):
        if valid == "valid":  # interleave good ticks so faults hit both empty and non-empty queues
            good = _valid(data.draw)
            for pol in (strict, lenient):
                _assert_safe(pol, pol.step(good))
            seen["valid_interleaved"] += 1
        with pytest.raises(ObservationError) as exc:
            strict.step(bad)
        assert exc.value.field in FIELDS and exc.value.field in str(exc.value)
        action = lenient.step(bad)  # fallback mode: never raises
        _assert_safe(lenient, action)
        assert lenient.last_info.fault and lenient.last_info.fault.startswith("observation")
        seen["malformed"] += 1

    run()
    assert seen["malformed"] >= N_MALFORMED
    assert strict.counters.observation_errors >= N_MALFORMED
    assert lenient.counters.faults == lenient.counters.observation_errors >= N_MALFORMED
    assert seen["valid_interleaved"] > 50 and lenient.counters.resamples > 0


@pytest.mark.parametrize("order", [">", "<"])
def test_byte_order_of_a_float_image_does_not_matter(policies, order):
    """A big-endian float frame (read from a file, sent by another host) is the same picture: same action."""
    strict, _ = policies
    img = np.random.default_rng(3).random((3, 64, 64)).astype(np.float32)
    state = np.zeros(strict.manifest.dims.state_dim, np.float32)
    actions = []
    for frame in (img, img.astype(np.dtype(np.float32).newbyteorder(order))):
        strict.reset(seed=0)
        actions.append(strict.step({CAMERA_KEY: frame, STATE_KEY: state, "task": "reach the red target"}))
    np.testing.assert_array_equal(actions[0], actions[1])
