"""Observation validation: every field is checked before any graph runs.

A robot driver can hand the policy anything (a dropped camera frame, a NaN from a sensor, a BGR float
image in [0,255], an instruction in the wrong type). Each such case raises `ObservationError` naming the
field and what was expected, instead of letting garbage reach the graphs or a cryptic numpy error escape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from runtime.manifest import TASK_KEY, Manifest  # TASK_KEY re-exported: the key of the instruction
from runtime.tokenizer import InstructionTokenizer

MAX_IMAGE_SIDE = 8192  # anything larger is a driver bug, not a camera frame
_FLOAT_RANGE_TOL = 1e-3  # float images may overshoot [0,1] by rounding noise, not by a 0..255 scale
_REAL_KINDS = ("f", "i", "u")  # dtype kinds of a numeric state: float, signed, unsigned (not bool, complex)


def _refuse_masked(key: str, value: object) -> None:
    """A masked array's hidden entries (NaN, stale values) would be used as data: the driver must fill them."""
    if isinstance(value, np.ma.MaskedArray):
        raise ObservationError(key, "masked arrays are not accepted; fill the masked entries explicitly "
                                    "(e.g. value.filled(...)) before calling the policy")


class ObservationError(ValueError):
    """An observation field is missing or malformed; `field` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"observation field '{field}': {message}")
        self.field = field


@dataclass
class ValidatedObservation:
    images: list[np.ndarray]  # one per manifest camera, uint8 HWC or float32 CHW, as given
    state: np.ndarray  # float32 [state_dim], raw units
    task: str
    lang_tokens: np.ndarray  # int64 [1, L]
    lang_mask: np.ndarray  # bool [1, L]


class ObservationValidator:
    """Checks an observation dict against the manifest (camera keys, state dim, task encodability).

    `state_tolerance` bounds how far the state may leave the dataset's `state_bounds`, as a multiple of
    the per-dimension span (None disables the check); a far-out-of-range state means a unit or wiring
    error, and the model's actions for it would be meaningless.
    """

    def __init__(self, manifest: Manifest, tokenizer: InstructionTokenizer, state_tolerance: float | None = 1.0):
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.state_dim = manifest.dims.state_dim
        self.camera_keys = manifest.camera_keys
        self.state_key = manifest.state_key
        self.state_tolerance = state_tolerance
        if state_tolerance is None:
            self._state_lo = self._state_hi = None
        else:
            b = manifest.state_bounds
            span = np.maximum(b.high - b.low, 1e-6)
            self._state_lo = b.low - state_tolerance * span
            self._state_hi = b.high + state_tolerance * span

    def with_tokenizer(self, tokenizer: InstructionTokenizer) -> ObservationValidator:
        """The same checks with another tokenizer (one per thread): one validator configuration, never a second."""
        return ObservationValidator(self.manifest, tokenizer, self.state_tolerance)

    def validate(self, obs: object) -> ValidatedObservation:
        if not isinstance(obs, Mapping):
            raise ObservationError("<observation>", f"expected a dict-like mapping, got {type(obs).__name__}")
        images = [self._image(obs, key) for key in self.camera_keys]
        state = self._state(obs)
        task, tokens, mask = self._task(obs)
        return ValidatedObservation(images, state, task, tokens, mask)

    def _image(self, obs: Mapping, key: str) -> np.ndarray:
        if key not in obs:
            raise ObservationError(key, "missing camera image")
        img = obs[key]
        _refuse_masked(key, img)
        if not isinstance(img, np.ndarray):
            raise ObservationError(key, f"expected a numpy array (uint8 HWC or float32 CHW), got {type(img).__name__}")
        if img.ndim != 3:
            raise ObservationError(key, f"expected 3 dims (uint8 HxWx3 or float32 3xHxW), got shape {img.shape}")
        if img.dtype.kind == "f" and not img.dtype.isnative:  # big-endian floats (a file, another host): same values
            img = img.astype(img.dtype.newbyteorder("="))
        if img.dtype == np.uint8:
            h, w, c = img.shape
            layout = "uint8 images must be HxWx3 (RGB)"
        elif img.dtype in (np.float32, np.float64, np.float16):
            c, h, w = img.shape
            layout = "float images must be 3xHxW (CHW, RGB)"
        else:
            raise ObservationError(key, f"dtype {img.dtype} unsupported; expected uint8 HWC or float32 CHW")
        if c != 3:
            raise ObservationError(key, f"{layout}, got shape {img.shape}")
        if not (1 <= h <= MAX_IMAGE_SIDE and 1 <= w <= MAX_IMAGE_SIDE):
            raise ObservationError(key, f"image size {h}x{w} outside 1..{MAX_IMAGE_SIDE}")
        spec = self.manifest.image
        if spec.resize == "none" and (h, w) != (spec.height, spec.width):
            raise ObservationError(key, f"image is {h}x{w}; the manifest expects {spec.height}x{spec.width} and "
                                        "allows no resize (image_preprocess.resize = 'none')")
        if img.dtype != np.uint8:
            lo, hi = float(img.min()), float(img.max())  # NaN/inf propagate into min/max: one pass each
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise ObservationError(key, "contains non-finite values (NaN or inf)")
            if lo < -_FLOAT_RANGE_TOL or hi > 1.0 + _FLOAT_RANGE_TOL:
                raise ObservationError(key, f"float images must be in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
        return img

    def _state(self, obs: Mapping) -> np.ndarray:
        key = self.state_key
        if key not in obs:
            raise ObservationError(key, "missing robot state")
        raw = obs[key]
        _refuse_masked(key, raw)
        if not isinstance(raw, (np.ndarray, list, tuple)):
            raise ObservationError(key, f"expected a numeric array of {self.state_dim} values, got {type(raw).__name__}")
        try:
            arr = np.asarray(raw)
        except (ValueError, TypeError) as exc:
            raise ObservationError(key, f"not convertible to a numeric array ({exc})") from None
        if arr.dtype.kind not in _REAL_KINDS:
            raise ObservationError(key, f"expected a real numeric dtype, got {arr.dtype}")
        if arr.shape not in ((self.state_dim,), (1, self.state_dim)):
            raise ObservationError(key, f"expected shape ({self.state_dim},) or (1, {self.state_dim}), got {arr.shape}")
        arr = arr.reshape(self.state_dim).astype(np.float32)
        if not np.isfinite(arr).all():
            raise ObservationError(key, "contains non-finite values (NaN or inf)")
        if self._state_lo is not None and ((arr < self._state_lo).any() or (arr > self._state_hi).any()):
            raise ObservationError(key, f"value {arr.tolist()} is far outside the training range "
                                        f"[{self.manifest.state_bounds.low.tolist()}, {self.manifest.state_bounds.high.tolist()}]")
        return arr

    def check_task(self, task: object) -> str:
        """An instruction alone, as `validate` checks it (str, not empty, encodable); ObservationError naming it."""
        return self._task({TASK_KEY: task})[0]

    def _task(self, obs: Mapping) -> tuple[str, np.ndarray, np.ndarray]:
        if TASK_KEY not in obs:
            raise ObservationError(TASK_KEY, "missing instruction string")
        task = obs[TASK_KEY]
        if isinstance(task, (list, tuple)) and len(task) == 1:  # LeRobot batches carry ["instruction"]
            task = task[0]
        if not isinstance(task, str):
            raise ObservationError(TASK_KEY, f"expected a str instruction, got {type(task).__name__}")
        if not task.strip():
            raise ObservationError(TASK_KEY, "instruction is empty")
        try:
            tokens, mask = self.tokenizer.encode(task)
        except Exception as exc:  # noqa: BLE001 — too long, or a tokenizer failure on odd input
            raise ObservationError(TASK_KEY, str(exc)) from None
        return task, tokens, mask
