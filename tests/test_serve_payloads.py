"""The payload codecs of `runtime serve` against the real lerobot classes: the restricted unpickler reads
what the stock client pickles (numpy arrays of any numeric dtype and shape, numpy scalars, plain values),
and the opcode-written replies unpickle into lerobot TimedActions with float32 CPU torch tensors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from runtime.serve import safe_pickle
from runtime.serve.action_pickle import timed_actions

helpers = pytest.importorskip("lerobot.async_inference.helpers")
torch = pytest.importorskip("torch")

DTYPES = st.sampled_from([np.uint8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_])


@settings(max_examples=60, deadline=None)
@given(arr=hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=4, max_side=6)),
       scalar=st.floats(allow_nan=False, width=32), step=st.integers(0, 2**40), must_go=st.booleans(),
       fortran=st.booleans(), protocol=st.integers(2, 5))
def test_stock_observations_decode_exactly(arr, scalar, step, must_go, fortran, protocol):
    arr = np.asfortranarray(arr) if fortran else arr
    obs = {"cam": arr, "m.pos": np.float32(scalar), "n.pos": float(scalar), "task": "reach", "k": [1, 2]}
    data = pickle.dumps(helpers.TimedObservation(12.5, step, obs, must_go), protocol=protocol)
    got = safe_pickle.loads(data, safe_pickle.TimedObservation)
    assert (got.timestep, got.must_go, got.timestamp) == (step, must_go, 12.5)
    np.testing.assert_array_equal(got.observation["cam"], arr)
    assert got.observation["cam"].dtype == arr.dtype
    assert got.observation["m.pos"] == pytest.approx(float(np.float32(scalar)))
    assert got.observation["task"] == "reach"


def test_setup_must_be_a_policy_config():
    data = pickle.dumps(helpers.TimedObservation(0.0, 0, {}, False))
    with pytest.raises(safe_pickle.PayloadError, match="expected a RemotePolicyConfig"):
        safe_pickle.loads(data, safe_pickle.RemotePolicyConfig)


@pytest.mark.parametrize("bad", [np.zeros(3, dtype="U4"), np.zeros(2, dtype=[("a", "f4"), ("b", "O")])])
def test_non_numeric_dtypes_refused(bad):
    data = pickle.dumps(helpers.TimedObservation(0.0, 0, {"cam": bad}, False))
    with pytest.raises(safe_pickle.PayloadError, match="refused"):
        safe_pickle.loads(data, safe_pickle.TimedObservation)


@settings(max_examples=40, deadline=None)
@given(acts=hnp.arrays(np.float32, st.tuples(st.integers(0, 12), st.integers(1, 7)),
                       elements=st.floats(-1e6, 1e6, width=32)),
       first=st.integers(0, 2**62), t0=st.floats(0, 2e9), dt=st.floats(1e-3, 1.0))
def test_replies_unpickle_as_lerobot_timed_actions(acts, first, t0, dt):
    out = pickle.loads(timed_actions(acts, first, t0, dt))
    assert isinstance(out, list) and len(out) == len(acts)
    for i, ta in enumerate(out):
        assert isinstance(ta, helpers.TimedAction)
        assert ta.get_timestep() == first + i and ta.get_timestamp() == pytest.approx(t0 + i * dt)
        a = ta.get_action()
        assert isinstance(a, torch.Tensor) and a.dtype == torch.float32 and a.device.type == "cpu"
        np.testing.assert_array_equal(a.numpy(), acts[i])


def test_shared_references_cannot_blow_up_the_check():
    tree = [0.0] * 4000
    for _ in range(3):  # 60 kB of pickle, 6.4e13 values once expanded
        tree = [tree] * 4000
    data = pickle.dumps(helpers.TimedObservation(0.0, 0, {"a": tree}, True))
    assert len(data) < 100_000
    with pytest.raises(safe_pickle.PayloadError, match="more than"):
        safe_pickle.loads(data, safe_pickle.TimedObservation)


def test_a_pickle_cannot_retune_numpys_shared_dtypes():
    # dtype("f4") then BUILD with a big-endian state: whatever numpy does with it, float32 stays native
    evil = (b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00f4\x89\x88\x87R"
            b"(K\x03X\x01\x00\x00\x00>NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb.")
    with pytest.raises(safe_pickle.PayloadError):
        safe_pickle.loads(evil, safe_pickle.TimedObservation)
    assert np.dtype("f4").byteorder == "=" and np.zeros(1, np.float32).dtype.isnative


class _ForgedDtype:
    """Pickles as numpy.dtype('f8') followed by a BUILD whose flags claim the dtype holds object pointers."""

    def __reduce__(self):
        return (np.dtype, ("f8", False, True), (3, "<", None, None, None, -1, -1, 63))


def test_forged_dtype_state_is_refused():
    """A numeric dtype re-flagged by BUILD as an object dtype would let an array free attacker bytes as pointers."""
    from runtime.serve.safe_pickle import PayloadError, TimedObservation, loads

    with pytest.raises(PayloadError, match="dtype state"):
        loads(pickle.dumps(_ForgedDtype(), protocol=2), TimedObservation)
    honest = pickle.dumps(np.dtype("f8"), protocol=2)  # the canonical state passes the BUILD check
    with pytest.raises(PayloadError, match="expected a TimedObservation"):
        loads(honest, TimedObservation)
