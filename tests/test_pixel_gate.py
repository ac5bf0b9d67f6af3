"""The pixel-difference gate `pixel[:thr]`: its distance, its spec parsing, and its wiring in EdgePolicy (it
needs the image at planning time, never the prefix graph)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.gate import PIXEL_DEFAULT_THRESHOLD, GateInputs, PixelGate, make_gate, mean_abs_pixel_change
from runtime.manifest import GateCalibration
from runtime.policy import EdgePolicy
from tests.fake_artifacts import CAMERA_KEY, cached_fake_artifacts, make_observation


@settings(max_examples=60, deadline=None)
@given(level=st.integers(-60, 60), seed=st.integers(0, 1000))
def test_distance_is_the_mean_absolute_uint8_change(level, seed):
    img = np.random.default_rng(seed).integers(70, 186, size=(8, 8, 3), dtype=np.uint8)  # no clipping at +-60
    shifted = (img.astype(np.int16) + level).astype(np.uint8)
    assert mean_abs_pixel_change([shifted], [img]) == pytest.approx(abs(level))
    # float CHW images in [0, 1] give the same number (the runtime accepts both conventions)
    as_float = [x.transpose(2, 0, 1).astype(np.float32) / 255.0 for x in (shifted, img)]
    assert mean_abs_pixel_change([as_float[0]], [as_float[1]]) == pytest.approx(abs(level), abs=1e-3)


def test_fires_above_threshold_only_and_names_missing_inputs():
    img = np.full((4, 4, 3), 100, np.uint8)
    gate = PixelGate(2.0)
    keep = gate.decide(GateInputs(5, 1, images=[img + 2], plan_images=[img]))
    fire = gate.decide(GateInputs(5, 1, images=[img + 3], plan_images=[img]))
    assert (keep.resample, keep.distance) == (False, 2.0)
    assert (fire.resample, fire.distance, fire.threshold) == (True, 3.0, 2.0)
    with pytest.raises(ValueError, match="plan_images"):
        gate.decide(GateInputs(5, 1, images=[img]))
    moved = gate.decide(GateInputs(5, 1, images=[img[:2]], plan_images=[img]))  # resolution changed: resample
    assert (moved.resample, moved.distance, moved.reason) == (True, float("inf"), "pixel_shape_changed")


def test_spec_parsing_and_defaults():
    assert make_gate("pixel").threshold == PIXEL_DEFAULT_THRESHOLD
    assert make_gate("pixel:3.5").threshold == 3.5
    assert make_gate("pixel", {"drift": GateCalibration({}, 4.0)}).threshold == PIXEL_DEFAULT_THRESHOLD
    g = make_gate("pixel:1")
    assert g.needs_image and not (g.needs_obs_cls or g.needs_act_cls or g.needs_state)
    with pytest.raises(ValueError, match="pixel"):
        make_gate("pixel:abc")


def test_policy_keeps_the_plan_on_a_static_image_and_resamples_when_it_changes():
    p = EdgePolicy(cached_fake_artifacts(), gate="pixel:5", backend_options={"intra_op_threads": 1})
    obs = make_observation(3)
    p.step(obs)
    assert p.last_info.resampled and p.counters.prefix_passes == 1
    for _ in range(2):  # same image: kept, and the prefix graph is not run for the pixel gate
        p.step(obs)
        assert not p.last_info.resampled and p.last_info.gate_distance == 0.0
    assert p.counters.prefix_passes == 1
    changed = dict(obs)
    changed[CAMERA_KEY] = (obs[CAMERA_KEY].astype(np.int16) ^ 0x40).astype(np.uint8)  # every pixel moves by 64
    p.step(changed)
    assert p.last_info.resampled and p.last_info.gate_reason == "pixel" and p.last_info.gate_distance == 64.0
    obs[CAMERA_KEY][:] = 0  # the caller reusing its buffer must not change the stored planning image
    p.step(changed)
    assert not p.last_info.resampled and p.last_info.gate_distance == 0.0
    p.close()


def test_mixed_layouts_compare_in_one_canonical_form():
    """uint8 HWC vs float CHW of the same scene is no change, also when both have the same shape (3x3x3);
    a camera count or resolution change cannot be compared → inf."""
    img = np.random.default_rng(0).integers(0, 256, size=(3, 3, 3), dtype=np.uint8)
    chw = img.transpose(2, 0, 1).astype(np.float32) / 255.0
    assert mean_abs_pixel_change([img], [chw]) == pytest.approx(0.0, abs=1e-4)
    assert mean_abs_pixel_change([chw], [img]) == pytest.approx(0.0, abs=1e-4)
    assert mean_abs_pixel_change([img], [img, img]) == float("inf")
    assert mean_abs_pixel_change([np.zeros((4, 4, 3), np.uint8)], [img]) == float("inf")


@pytest.mark.parametrize("mode", ["raise", "fallback"])
def test_policy_survives_layout_and_resolution_changes_the_validator_accepts(mode):
    """Planned on uint8 HWC: the same scene as float CHW keeps the plan, a new resolution resamples — never an
    exception out of step()."""
    p = EdgePolicy(cached_fake_artifacts(), gate="pixel:5", on_bad_observation=mode,
                   backend_options={"intra_op_threads": 1})
    obs = make_observation(3)
    p.step(obs)
    as_float = {**obs, CAMERA_KEY: obs[CAMERA_KEY].transpose(2, 0, 1).astype(np.float32) / 255.0}
    p.step(as_float)
    assert p.last_info.gate_checked and not p.last_info.resampled and p.last_info.fault is None
    assert p.last_info.gate_distance == pytest.approx(0.0, abs=1e-4)
    smaller = {**obs, CAMERA_KEY: make_observation(4, size=(48, 48))[CAMERA_KEY]}
    action = p.step(smaller)
    assert p.last_info.resampled and p.last_info.gate_reason == "pixel_shape_changed"
    assert np.all(np.isfinite(action)) and p.last_info.fault is None
    p.close()


class _BrokenImageGate(PixelGate):
    def _decide(self, inp):
        raise ValueError("cannot compare camera 'top'")


def test_a_failing_gate_is_a_reported_fault_and_the_plan_is_kept():
    p = EdgePolicy(cached_fake_artifacts(), gate=_BrokenImageGate(1.0), backend_options={"intra_op_threads": 1})
    obs = make_observation(3)
    p.step(obs)
    left = p.last_info.queue_left
    action = p.step(obs)  # the gate raises: executing the queued plan continues
    assert np.all(np.isfinite(action)) and not p.last_info.resampled
    assert "gate" in p.last_info.fault and "camera 'top'" in p.last_info.fault
    assert p.last_info.queue_left == left - 1 and p.counters.faults == 1
    p.close()


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(["drift", "consistency", "jump", "state", "pixel"]), thr=st.floats(0.0, 1.9),
       over=st.floats(1e-3, 50.0))
def test_every_observation_change_gate_firing_counts_as_a_world_change(name, thr, over):
    """The seam rule narrows a resample that reacts to a change (the executing plan is known wrong). A pixel
    gate over its threshold says the camera image moved away from the one the plan was made from, as drift says
    of obs-CLS or state of the state: a reaction too. A resolution change (not comparable) stays a refill."""
    from runtime.seam import world_changed

    assert world_changed(name, thr + over, thr)
    assert not world_changed(name, thr, thr)
    assert not world_changed("pixel_shape_changed", float("inf"), thr)


def test_an_async_resample_fired_by_the_pixel_gate_reacts():
    from runtime.async_planner import AsyncChunkPlanner

    pol = EdgePolicy(cached_fake_artifacts(chunk_size=8), gate="pixel:5", backend_options={"intra_op_threads": 1})
    planner = AsyncChunkPlanner(pol, seam="inpaint")
    obs = make_observation(3)
    chunk = planner.plan(obs, 0, None, 0, 2).chunk.actions
    assert not planner.last_reacted  # the first plan is a refill
    changed = dict(obs)
    changed[CAMERA_KEY] = (obs[CAMERA_KEY].astype(np.int16) ^ 0x40).astype(np.uint8)
    res = planner.plan(changed, 2, chunk[2:], 2, 2)
    assert res.chunk is not None and res.info.gate_reason == "pixel" and planner.last_reacted
