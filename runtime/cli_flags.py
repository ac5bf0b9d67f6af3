"""Error messages in the words of the command line: a Python field name becomes the flag the user typed.

The argument checks (runtime.policy_arguments, ServeConfig, the onnxruntime backend) name the Python field
(`expected_digest must look like ...`), which is right for the API. A command-line user typed
`--expect-digest`, so the CLIs (`python -m runtime ...`, `python -m evaluation run`) pass their error text
through `as_flags` before printing it. Only a field name at the start of the message is replaced (optionally
after ServeConfig's `serve: ` prefix), so a path or a manifest key inside a message is never rewritten.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

FLAGS = {  # field → flag; the field names of EdgePolicy / backend_options / ServeConfig that a CLI flag sets
    "expected_digest": "--expect-digest", "trusted_keys": "--trusted-key", "check_every": "--check-every",
    "num_steps": "--num-steps", "tick_budget_ms": "--tick-budget-ms", "run_timeout_ms": "--run-timeout-ms",
    "seed": "--seed", "port": "--port", "max_sessions": "--max-sessions", "stream_deadline_s": "--stream-deadline-s",
}
_FIELD = re.compile(r"(?:serve: )?(" + "|".join(map(re.escape, FLAGS)) + r")(?=[ =])")


def as_flags(text: str, own: Mapping[str, str] | None = None) -> str:
    """`check_every must be ...` → `--check-every must be ...`; any other message unchanged. `own`: a command's
    own field → flag names, tried after the shared ones (e.g. evaluation run's `runs` → `--warmup`)."""
    m = _FIELD.match(text)
    if m:
        return FLAGS[m.group(1)] + text[m.end():]
    for name, flag in (own or {}).items():
        if text.startswith(name + " "):
            return flag + text[len(name):]
    return text
