"""The runtime is deployable alone, and the evaluation tools stay torch-free.

- `runtime/` (what a robot installs) must not pull in torch, lerobot, transformers, smolvla_cls, export,
  nor the development packages evaluation/simtask/scripts.
- `evaluation/` (simulated episodes, gate sweep, soak, plots) may use runtime and simtask, never the
  training or export side.
- `smolvla_cls/` (the model and its training) never imports `export/`: dependencies point one way.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAINING_SIDE = {"torch", "lerobot", "transformers", "smolvla_cls", "export"}
FORBIDDEN = {
    "runtime": TRAINING_SIDE | {"evaluation", "simtask", "scripts", "tests"},
    "evaluation": TRAINING_SIDE | {"scripts", "tests"},
    "smolvla_cls": {"export", "scripts", "tests"},  # export builds on the model, never the other way round
}


def _modules(package: str) -> list[str]:
    return sorted(f"{package}." + ".".join(p.relative_to(ROOT / package).with_suffix("").parts)
                  for p in (ROOT / package).rglob("*.py") if p.name not in {"__init__.py", "__main__.py"})


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_graph_is_clean(package):
    """Import every module of the package in a clean interpreter and list the top-level packages it loaded."""
    forbidden = repr(sorted(FORBIDDEN[package]))
    mods = [package, *_modules(package)]
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except ImportError as exc:\n"  # an optional backend (tensorrt, cuda) missing here is fine
        "        if exc.name and exc.name.split('.')[0] in ('tensorrt', 'cuda'): continue\n"
        "        raise\n"
        f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & set({forbidden}))\n"
        "assert not bad, bad\n"
        "print('ok', len(" + repr(mods) + "))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok ")


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_sources_do_not_import_forbidden_packages(package):
    """Static check too: a lazy import inside a function would escape the subprocess test."""
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in FORBIDDEN[package]]
    assert not offenders, offenders


def test_forbidden_import_would_be_caught(tmp_path):
    """The static check is not vacuous: a planted lazy torch import is found."""
    planted = tmp_path / "planted.py"
    planted.write_text("def f():\n    import torch\n    return torch\n")
    tree = ast.parse(planted.read_text())
    found = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert "torch" in found and "torch" in FORBIDDEN["runtime"]


def test_serve_and_the_simulated_robot_import_without_torch():
    """`runtime serve`, `runtime robot` and the simulated robot (and its factory) load no training side."""
    mods = ["runtime.serve.server", "runtime.serve.command", "runtime.robot_command", "runtime.cli",
            "robot_adapters.sim_reach", "robot_adapters.factory"]
    code = (f"import importlib, sys\nfor m in {mods!r}: importlib.import_module(m)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lerobot', 'transformers'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert {"runtime.serve.server", "runtime.serve.safe_pickle"} <= set(_modules("runtime"))  # covered above too
