"""Make the installed `tensorrt-stubs` parseable and put a fixed copy in `.typings/` for mypy (see mypy.ini).

tensorrt-stubs 10.13 is generated from the pybind11 docstrings and has two kinds of invalid Python:
parameters named `in` (a keyword) and a parameter without default after defaulted ones (add_scale_nd).
Mypy cannot parse the file at all, so we rewrite just those signatures: `in` → `in_`, and missing
defaults → `= ...`. Every other line is copied untouched, so the API checked is exactly the stubs'.

    python scripts/patch_tensorrt_stubs.py      # idempotent; exits 1 if tensorrt-stubs is not installed
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / ".typings"
PACKAGES = ("tensorrt", "tensorrt_bindings")
_KEYWORD_PARAM = re.compile(r"(?<=[(,\s])(in|from|lambda|is|not|and|or|if|else|for|with|as|def|class|pass): ")


def _split_params(params: str) -> list[str]:
    """Split a parameter list on top-level commas."""
    parts, depth, current = [], 0, ""
    for ch in params:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    return parts


def _fix_defaults(line: str) -> str:
    """Give `= ...` to parameters that follow a defaulted one (invalid in Python)."""
    match = re.match(r"^(\s*def \w+\()(.*)(\)\s*->.*:\s*)$", line)
    if not match:
        return line
    head, params, tail = match.groups()
    fixed, seen_default = [], False
    for param in _split_params(params):
        bare = param.strip()
        if "=" in bare:
            seen_default = True
        elif seen_default and bare not in ("*", "/") and not bare.startswith("*"):
            param = f"{param} = ..."
        fixed.append(param)
    return head + ",".join(fixed) + tail


def patch_source(source: str) -> str:
    """The stub text with the invalid signatures repaired (lines outside `def` are untouched)."""
    lines = []
    for line in source.splitlines():
        if line.lstrip().startswith("def "):
            line = _fix_defaults(_KEYWORD_PARAM.sub(lambda m: f"{m.group(1)}_: ", line))
        lines.append(line)
    return "\n".join(lines) + "\n"


def main() -> int:
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        locations = list(spec.submodule_search_locations or []) if spec else []
        stubs = [Path(p) for p in locations if any(Path(p).glob("*.pyi"))]
        if not stubs:
            print(
                f"patch_tensorrt_stubs: no {package} stubs found (pip install --no-deps tensorrt-stubs)",
                file=sys.stderr,
            )
            return 1
        out_dir = TARGET / package
        out_dir.mkdir(parents=True, exist_ok=True)
        for pyi in sorted(stubs[0].glob("*.pyi")):
            text = patch_source(pyi.read_text(encoding="utf-8"))
            ast.parse(text, filename=str(pyi))  # fail here, loudly, if a new stubs release breaks differently
            (out_dir / pyi.name).write_text(text, encoding="utf-8")
    print(f"patch_tensorrt_stubs: wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
