"""The training augmentation of image changes that should not matter for the action (`train.py
--irrelevant-augment P`): each training image gets, with probability P, one brightness offset, colour cast or
sensor-noise burst, so obs-CLS — which VICReg ties to the plan — is pushed to ignore them (the plan does not
change when the light does).

The changes and their ranges are not defined here: they are `simtask.image_changes` (the one definition, shared
with the gate benchmark), sampled from `TRAINING`, a superset of the benchmark's `BENCHMARK` ranges. A
non-target disc moving (the benchmark's fourth irrelevant change) needs the scene re-rendered and is left to
the benchmark. Images are float in [0, 1] (lerobot training items, [..., 3, H, W]).
"""

from __future__ import annotations

import numpy as np

from simtask.image_changes import KINDS, TRAINING, perturb_float


def random_change(img: np.ndarray, probability: float, rng: np.random.Generator) -> np.ndarray:
    """Training augmentation: with `probability`, one uniformly chosen kind (ranges `TRAINING`) applied to a
    float CHW image."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"irrelevant augmentation probability={probability}: expected a number in [0, 1]")
    if rng.random() >= probability:
        return img
    return perturb_float(img, KINDS[int(rng.integers(len(KINDS)))], rng, TRAINING)
