"""The runtime is deployable alone: it must not pull in torch, lerobot, transformers, smolvla_cls or export."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"torch", "lerobot", "transformers", "smolvla_cls", "export"}


def test_runtime_import_graph_is_clean():
    forbidden = repr(sorted(FORBIDDEN))
    code = (
        "import runtime, runtime.policy, runtime.backend_onnxruntime, runtime.gate, runtime.cli, runtime.safety; "
        f"import sys; bad = sorted({{m.split('.')[0] for m in sys.modules}} & set({forbidden})); "
        "assert not bad, bad; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_runtime_sources_do_not_import_forbidden_packages():
    """Static check too: a lazy import inside a function would escape the subprocess test."""
    import ast

    offenders = []
    for path in sorted((ROOT / "runtime").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders, offenders
