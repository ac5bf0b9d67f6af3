"""Image resize/pad, state normalisation and action unnormalisation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.manifest import ImageSpec, NormStats
from runtime.preprocess import (
    ActionUnnormalizer,
    StateNormalizer,
    resize_bilinear,
    resize_pad,
    resized_size,
    to_chw_float,
)


def _reference_bilinear(img: np.ndarray, oh: int, ow: int) -> np.ndarray:
    """Scalar re-statement of torch's bilinear (align_corners=False) kernel, written independently."""
    c, h, w = img.shape
    out = np.zeros((c, oh, ow), dtype=np.float64)
    for y in range(oh):
        sy = max((y + 0.5) * h / oh - 0.5, 0.0)
        y0 = int(sy)
        y1 = y0 + (1 if y0 < h - 1 else 0)
        ly = sy - y0
        for x in range(ow):
            sx = max((x + 0.5) * w / ow - 0.5, 0.0)
            x0 = int(sx)
            x1 = x0 + (1 if x0 < w - 1 else 0)
            lx = sx - x0
            out[:, y, x] = ((1 - ly) * ((1 - lx) * img[:, y0, x0] + lx * img[:, y0, x1])
                            + ly * ((1 - lx) * img[:, y1, x0] + lx * img[:, y1, x1]))
    return out


SPEC = ImageSpec(height=16, width=16, resize="keep_aspect_pad", pad_side="left_top", pad_value=0.0)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), oh=st.integers(1, 24), ow=st.integers(1, 24), seed=st.integers(0, 99))
def test_bilinear_matches_reference(h, w, oh, ow, seed):
    img = np.random.default_rng(seed).random((3, h, w)).astype(np.float32)
    np.testing.assert_allclose(resize_bilinear(img, oh, ow), _reference_bilinear(img, oh, ow), atol=1e-5)


@settings(max_examples=80, deadline=None)
@given(h=st.integers(1, 120), w=st.integers(1, 120), H=st.integers(4, 48), W=st.integers(4, 48),
       pad_value=st.sampled_from([0.0, -1.0, 0.5]), side=st.sampled_from(["left_top", "right_bottom"]))
def test_resize_pad_geometry(h, w, H, W, pad_value, side):
    spec = ImageSpec(H, W, "keep_aspect_pad", side, pad_value)
    img = np.full((3, h, w), 0.25, dtype=np.float32)
    out = resize_pad(img, spec)
    assert out.shape == (3, H, W) and out.dtype == np.float32
    rh, rw = resized_size(h, w, H, W)
    # aspect kept: one side fills the target (LeRobot's int() may floor 12.999.. to 12), nothing exceeds it
    assert rh <= H and rw <= W and (rh >= H - 1 or rw >= W - 1)
    content = out[:, H - rh:, W - rw:] if side == "left_top" else out[:, :rh, :rw]
    np.testing.assert_allclose(content, 0.25, atol=1e-6)  # bilinear keeps a constant image constant
    pad_mask = np.ones((H, W), dtype=bool)
    if side == "left_top":
        pad_mask[H - rh:, W - rw:] = False
    else:
        pad_mask[:rh, :rw] = False
    assert np.all(out[:, pad_mask] == pad_value)


def test_resized_size_matches_lerobot_formula():
    # 640x480 into 512x512: ratio = max(640/512, 480/512) = 1.25 → 384 x 512, padded 128 rows on top
    assert resized_size(480, 640, 512, 512) == (384, 512)
    assert resized_size(64, 64, 32, 32) == (32, 32)
    assert resized_size(10, 20, 64, 64) == (32, 64)  # upscaling keeps the aspect too


def test_identity_fast_path_returns_same_pixels():
    img = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    assert resize_pad(img, SPEC) is img
    buf = np.empty((3, 16, 16), np.float32)
    assert resize_pad(img, SPEC, out=buf) is buf and np.array_equal(buf, img)


def test_uint8_hwc_to_float_chw():
    img = np.zeros((4, 5, 3), np.uint8)
    img[1, 2] = (255, 0, 51)
    chw = to_chw_float(img)
    assert chw.shape == (3, 4, 5) and chw.dtype == np.float32
    assert chw[:, 1, 2].tolist() == pytest.approx([1.0, 0.0, 0.2])


def test_left_top_padding_puts_content_bottom_right():
    img = np.ones((3, 8, 16), np.float32)  # wide image into 16x16 → 8 rows of content at the bottom
    out = resize_pad(img, SPEC)
    assert np.all(out[:, :8] == 0.0) and np.all(out[:, 8:] == 1.0)


STD = NormStats("mean_std", np.array([1.0, -2.0], np.float32), np.array([0.5, 2.0], np.float32), None, None, 1e-8)
MINMAX = NormStats("min_max", None, None, np.array([-1.0, 0.0], np.float32), np.array([3.0, 0.0], np.float32), 1e-8)


@settings(max_examples=50, deadline=None)
@given(x=st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=2, max_size=2))
def test_state_normalisation_and_padding(x):
    norm = StateNormalizer(STD, max_dim=5)
    out = norm(np.array(x, np.float32))
    assert out.shape == (1, 5) and out.dtype == np.float32
    want = (np.array(x, np.float32) - STD.mean) / (STD.std + np.float32(1e-8))
    np.testing.assert_array_equal(out[0, :2], want)  # same op order as LeRobot → bit-identical
    assert np.all(out[0, 2:] == 0.0)


def test_mean_std_round_trip():
    unnorm = ActionUnnormalizer(STD, action_dim=2)
    a = np.array([[0.3, -1.2, 9.0, 9.0]], np.float32)  # padding columns must be dropped
    raw = unnorm(a)
    assert raw.shape == (1, 2)
    np.testing.assert_allclose(raw[0], a[0, :2] * STD.std + STD.mean, rtol=1e-6)
    np.testing.assert_allclose(StateNormalizer(STD, 2)(raw[0])[0], a[0, :2], rtol=1e-5, atol=1e-6)


def test_min_max_round_trip_and_zero_span():
    x = np.array([1.0, 0.0], np.float32)
    n = StateNormalizer(MINMAX, 2)(x)[0].copy()
    assert n[0] == pytest.approx(0.0)  # midpoint of [-1, 3]
    back = ActionUnnormalizer(MINMAX, 2)(n)
    np.testing.assert_allclose(back, x, atol=1e-6)
    assert np.all(np.isfinite(n))  # zero span uses eps, never divides by zero
