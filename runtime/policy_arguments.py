"""Types and bounds of EdgePolicy's constructor arguments, checked before anything is loaded.

A wrong argument is a `PolicyArgumentError` (both a ValueError and a TypeError) naming the argument and what
was expected — never a TypeError from deep inside numpy, and never a value that hangs the robot
(`num_steps=10**9`) or silently disables a safety rule (`tick_budget_ms=nan`).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from runtime.artifact_identity import IdentityError, check_digest_text, load_public_key
from runtime.backend import Backend
from runtime.manifest_schema import MAX_NUM_STEPS

MAX_TICK_BUDGET_MS = 60_000.0
MAX_CHECK_EVERY = 10_000
MAX_STATE_TOLERANCE = 1e6
MAX_GATE_SPEC = 64
MAX_TRUSTED_KEYS = 64


class PolicyArgumentError(ValueError, TypeError):
    """A constructor argument has the wrong type or lies outside its range; the message names it."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def integer(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, int) and not hasattr(value, "__index__"):
        raise PolicyArgumentError(f"{name} must be an integer in [{low}, {high}], got {_shown(value)}")
    value = int(value.__index__())
    if not low <= value <= high:
        raise PolicyArgumentError(f"{name} must be an integer in [{low}, {high}], got {value}")
    return value


def number(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise PolicyArgumentError(f"{name} must be a number in {'(' if low_open else '['}{low:g}, {high:g}], "
                                  f"got {_shown(value)}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise PolicyArgumentError(f"{name} must be a number, got {_shown(value)}") from None
    if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
        raise PolicyArgumentError(f"{name} must be a finite number in {'(' if low_open else '['}{low:g}, {high:g}], "
                                  f"got {value!r}")
    return value


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise PolicyArgumentError(f"{name} must be True or False, got {_shown(value)}")
    return bool(value)


def choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in options:
        raise PolicyArgumentError(f"{name} must be one of {options}, got {_shown(value)}")
    return value


def function(name: str, value: Any) -> Any:
    if not callable(value):
        raise PolicyArgumentError(f"{name} must be callable, got {type(value).__name__}")
    return value


def artifacts_path(value: Any) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise PolicyArgumentError(f"artifacts_dir must be a folder path, got {_shown(value)}")
    return Path(value)


def gate_spec(value: Any) -> Any:
    """A gate spec string is bounded in length; a Gate object passes through."""
    if isinstance(value, str) and len(value) > MAX_GATE_SPEC:
        raise PolicyArgumentError(f"gate must be a short spec like 'drift:0.1' (at most {MAX_GATE_SPEC} "
                                  f"characters), got {_shown(value)}")
    return value


def build_gate(spec: Any, calibration: Any, check_every: Any, seed: Any) -> Any:
    """A Gate passes through; a spec is parsed by `runtime.gate.make_gate`, whose refusal (a ValueError naming
    the spec) becomes a PolicyArgumentError like every other constructor argument's."""
    from runtime.gate import Gate, make_gate

    if isinstance(spec, Gate):
        return spec
    if not isinstance(spec, str):
        raise PolicyArgumentError(f"gate must be a spec string like 'drift:0.1' or a Gate, got {_shown(spec)}")
    try:
        return make_gate(gate_spec(spec), calibration, check_every, seed)
    except PolicyArgumentError:
        raise
    except (ValueError, TypeError) as exc:
        raise PolicyArgumentError(str(exc)) from None


def check_gate_threshold(gate: Any) -> None:
    """A NaN / negative threshold would disable the gate silently (NaN never compares greater)."""
    for part in getattr(gate, "parts", None) or [gate]:  # an `any:` gate: every part's threshold
        thr = getattr(part, "threshold", None)
        if thr is not None and (not isinstance(thr, (int, float)) or not math.isfinite(thr) or thr < 0):
            raise PolicyArgumentError(f"gate threshold must be a finite number >= 0, got {_shown(thr)}")


def check_plan_encoder(gate: Any, act_cls_wiring: str, backend: Any) -> None:
    """plan_only wiring computes the gate's act-CLS with the plan_encoder graph: a backend that does not run it
    would fault on every gate check, silently turning the gate into `never`."""
    if getattr(gate, "needs_act_cls", False) and act_cls_wiring == "plan_only" and \
            getattr(type(backend), "run_plan_encoder", None) is Backend.run_plan_encoder:
        raise PolicyArgumentError(
            f"backend '{getattr(backend, 'name', type(backend).__name__)}' does not implement run_plan_encoder, "
            f"which gate '{gate.spec}' needs with this export's act_cls wiring 'plan_only'")


def warn_gate_lag(why: str | None) -> None:
    """Log a gate/threshold mismatch the caller may have chosen on purpose (e.g. `runtime.gate.jump_lag_mismatch`)."""
    if why is not None:
        logging.getLogger("runtime.policy").warning("%s", why)


def optional(name: str, value: Any, check: Any, *args: Any, **kwargs: Any) -> Any:
    return None if value is None else check(name, value, *args, **kwargs)


def num_steps(value: Any) -> int | None:
    return optional("num_steps", value, integer, 1, MAX_NUM_STEPS)


def backend_options(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise PolicyArgumentError(f"backend_options must be a dict with str keys, got {_shown(value)}")
    return dict(value)


def expected_digest(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return check_digest_text(value, "expected_digest")
    except IdentityError as exc:
        raise PolicyArgumentError(str(exc)) from None


def trusted_keys(value: Any) -> list[Any]:
    """Public keys from PEM paths, PEM bytes or key objects (anything with `verify`)."""
    if value is None:
        return []
    if isinstance(value, (str, bytes, os.PathLike)):
        value = [value]
    if not isinstance(value, Iterable):
        raise PolicyArgumentError(f"trusted_keys must be a list of public-key files, got {_shown(value)}")
    items = list(value)
    if len(items) > MAX_TRUSTED_KEYS:
        raise PolicyArgumentError(f"trusted_keys lists {len(items)} keys, more than {MAX_TRUSTED_KEYS}")
    keys = []
    for item in items:
        if hasattr(item, "verify") and hasattr(item, "public_bytes"):
            keys.append(item)
            continue
        if not isinstance(item, (str, bytes, os.PathLike)):
            raise PolicyArgumentError(f"trusted_keys entries must be PEM file paths or keys, got {_shown(item)}")
        try:
            keys.append(load_public_key(item if isinstance(item, bytes) else Path(item)))
        except IdentityError as exc:
            raise PolicyArgumentError(str(exc)) from None
    return keys


def add_identity_arguments(p: argparse.ArgumentParser) -> None:
    """--expect-digest / --trusted-key: which export this machine accepts (runtime info / serve / robot, evaluation)."""
    p.add_argument("--expect-digest", default=None, metavar="SHA256",
                   help="refuse any artifact folder whose digest differs (printed by export and `info`)")
    p.add_argument("--trusted-key", action="append", default=None, metavar="PEM",
                   help="require a signature by this Ed25519 public key (repeatable; python -m export.signing)")


def add_engines_argument(p: argparse.ArgumentParser) -> None:
    """--engines: the TensorRT engine folder (runtime serve / robot, evaluation run)."""
    p.add_argument("--engines", default=None, metavar="DIR",
                   help="with --backend tensorrt: the engine folder (default: <artifacts>/../engines)")


def engine_options(backend: str, engines: str | None) -> dict[str, Any]:
    """--engines → backend_options. Refused without --backend tensorrt: the user meant TensorRT engines, and
    running on onnxruntime instead would be a silent surprise."""
    if engines is None:
        return {}
    if backend != "tensorrt":
        raise PolicyArgumentError(f"--engines {engines} needs --backend tensorrt (the backend is {backend})")
    return {"engines": engines}
