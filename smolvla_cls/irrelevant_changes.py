"""Image changes that should not matter for the action: global brightness, colour shift, sensor-noise burst.

Used twice, with the same code so the two agree:
- as a training augmentation (`train.py --irrelevant-augment P`): each training image gets one of these with
  probability P, so obs-CLS — which VICReg ties to the plan — is pushed to ignore them (the plan does not
  change when the light does);
- as the "irrelevant" side of the obs-CLS drift measurement (`scripts/act_cls_wiring.py --drift`).
A non-target disc moving is the fourth irrelevant change of issue #20; it needs the scene re-rendered and is
left to the benchmark's simtask perturbations.

Images are float in [0, 1] (lerobot training items, [..., 3, H, W]) or uint8 HWC (simtask observations).
"""

from __future__ import annotations

import numpy as np

KINDS = ("brightness", "colour", "noise")
BRIGHTNESS = (0.7, 1.3)  # global gain
COLOUR_SHIFT = 0.12  # max per-channel offset (fraction of full scale)
NOISE_STD = 0.06  # sensor-noise burst (fraction of full scale)


def perturb_float(img: np.ndarray, kind: str, rng: np.random.Generator, channel_axis: int = -3) -> np.ndarray:
    """`img` float in [0, 1] with channels on `channel_axis`, changed by `kind`; clipped to [0, 1]."""
    if kind == "brightness":
        out = img * rng.uniform(*BRIGHTNESS)
    elif kind == "colour":
        shape = [1] * img.ndim
        shape[channel_axis] = img.shape[channel_axis]
        out = img + rng.uniform(-COLOUR_SHIFT, COLOUR_SHIFT, size=shape)
    elif kind == "noise":
        out = img + rng.normal(0.0, NOISE_STD, size=img.shape)
    else:
        raise ValueError(f"irrelevant change kind={kind!r}: expected one of {KINDS}")
    return np.clip(out, 0.0, 1.0).astype(img.dtype, copy=False)


def perturb_uint8_hwc(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A simtask observation image (uint8 HWC) under `kind`, rounded back to uint8."""
    out = perturb_float(img.astype(np.float32) / 255.0, kind, rng, channel_axis=-1)
    return np.round(out * 255.0).astype(np.uint8)


def random_change(img: np.ndarray, probability: float, rng: np.random.Generator) -> np.ndarray:
    """Training augmentation: with `probability`, one uniformly chosen kind applied to a float CHW image."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"irrelevant augmentation probability={probability}: expected a number in [0, 1]")
    if rng.random() >= probability:
        return img
    return perturb_float(img, KINDS[int(rng.integers(len(KINDS)))], rng)
