"""Dataset instructions longer than the policy's language length.

Training (lerobot's tokenizer step, truncation on) cuts such an instruction to its first `max_length` tokens;
the runtime refuses it (runtime/tokenizer.py), since a cut instruction may mean something else. Both the
training run and the export warn, naming the instructions, so a deployment does not find out on the robot.
"""

from __future__ import annotations

import sys
from pathlib import Path

_SHOWN = 3  # instructions quoted in one warning


def dataset_tasks(root: Path) -> list[str]:
    """The instruction strings of a LeRobotDataset (empty if the dataset has no task table)."""
    import pandas as pd  # a lerobot dependency; its own loader moved between 0.4 and 0.6 (utils → io_utils)

    path = Path(root) / "meta" / "tasks.parquet"  # v3.0 layout: one row per task, indexed by its text
    return [str(t) for t in pd.read_parquet(path).index] if path.exists() else []


def token_count(tokenizer, text: str) -> int:
    """Tokens the policy's processor chain makes of `text`: SmolVLA appends "\\n", special tokens included."""
    return len(tokenizer(text if text.endswith("\n") else text + "\n", truncation=False)["input_ids"])


def overlong_instructions(tasks: list[str], tokenizer, max_length: int) -> list[tuple[str, int]]:
    """(instruction, token count) for each instruction that encodes to more than `max_length` tokens."""
    counts = ((t, token_count(tokenizer, t)) for t in tasks)
    return [(t, n) for t, n in counts if n > max_length]


def overlong_message(where: str, long: list[tuple[str, int]], n_tasks: int, max_length: int) -> str:
    shown = "; ".join(f"{t!r} ({n} tokens)" for t, n in long[:_SHOWN])
    more = f" and {len(long) - _SHOWN} more" if len(long) > _SHOWN else ""
    return (f"{where}: {len(long)} of {n_tasks} dataset instructions encode to more than the language length "
            f"{max_length} (tokenizer_max_length): {shown}{more}. Training truncates them; the runtime refuses "
            "them. Shorten them, or train with a longer tokenizer_max_length.")


def warn_overlong(where: str, root: Path, tokenizer, max_length: int) -> list[tuple[str, int]]:
    """Print one warning to stderr if the dataset at `root` has overlong instructions; returns them."""
    tasks = dataset_tasks(root)
    long = overlong_instructions(tasks, tokenizer, max_length)
    if long:
        print(f"WARNING {overlong_message(where, long, len(tasks), max_length)}", file=sys.stderr)
    return long
