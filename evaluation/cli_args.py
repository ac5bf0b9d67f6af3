"""argparse `type=` functions for the evaluation / bench / closed-loop command lines.

Why: a value out of range must be refused by argparse, before any episode runs, as one line that names the
flag ("argument --episodes: expected an integer >= 1, got 0"). Left to the library code it surfaced as a
traceback, a message naming an internal field (`evaluate_policy: n_episodes …`), an empty report with exit
status 0, or a failure after minutes of work. Each function raises `argparse.ArgumentTypeError`, which
argparse reports with the flag's name and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

MAX_SEED = 2**63 - 1  # the largest seed EdgePolicy takes (numpy's 63-bit episode seeds)


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (episode, tick, repetition counts; every-N-ticks periods)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def int_in(low: int, high: int):
    """An `argparse` type for an integer in [low, high] (e.g. --warmup: 0 = none, up to the runtime's 1000)."""

    def check(text: str) -> int:
        value = _int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {value}")
        return value

    return check


def non_negative_int(text: str) -> int:
    """An integer >= 0 (warm-up counts; thread counts where 0 means the library's default)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (rates, time limits)."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (slack, margins)."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _writable_below(path: Path, what: str) -> None:
    """The nearest existing folder above `path` must be a writable folder (not a file)."""
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{parent} is a file, so {path} cannot be created; pick another {what}")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise argparse.ArgumentTypeError(f"{parent} is not writable by this user; pick another {what}")
            return


def output_file(text: str) -> Path:
    """A file path to write: not an existing folder, and no file where a folder above it must go."""
    path = Path(text)
    if not text or path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, expected a file path to write (e.g. {text or '.'}/report.json)")
    _writable_below(path, "file path")
    return path


def output_dir(text: str) -> Path:
    """A folder to write into (created if missing): not an existing file, and no file where a folder above it must go."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, expected a folder to write into")
    _writable_below(path, "folder")
    return path


def read_json_file(path: str | Path, flag: str) -> Any:
    """A JSON file named by `flag`, or SystemExit with one line naming the flag and what is wrong."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SystemExit(f"error: {flag} {path}: no such file") from None
    except IsADirectoryError:
        raise SystemExit(f"error: {flag} {path}: is a folder, expected a JSON file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"error: {flag} {path}: unreadable ({exc})") from None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: {flag} {path}: not JSON ({exc})") from None


def episode_max_steps(text: str) -> int:
    """An episode tick limit the simulated task accepts: past the last tick its target may jump at."""
    from simtask.config import TaskConfig  # numpy-only

    value = positive_int(text)
    last = TaskConfig().perturb_window[1]
    if value <= last:
        raise argparse.ArgumentTypeError(f"expected more than {last} ticks (the task's target may jump until tick "
                                         f"{last}), got {value}")
    return value
