"""Per-role install lists: the requirement files and pyproject extras agree, and each package imports only
what its role installs (so 'what do I install on the robot' is answered by one file)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
ROLES = {  # extra -> (requirement files, the package that role runs, the other backend's modules it never loads)
    "robot-ort": (["runtime/requirements.txt"], "runtime", {"cuda"}),
    "robot-trt": (["runtime/requirements-tensorrt.txt"], "runtime", {"onnxruntime"}),
    "eval": (["runtime/requirements.txt", "evaluation/requirements.txt"], "evaluation", {"cuda"}),
}
# distribution name -> import name, for those that differ; tensorrt comes from JetPack, not pip
IMPORT_NAME = {"cuda-python": "cuda", "onnxruntime": "onnxruntime", "grpcio": "grpc", "protobuf": "google"}
FIRST_PARTY = {"runtime", "evaluation", "simtask"}
OUTSIDE_PIP = {"tensorrt"}  # JetPack's bindings


def _names(lines: list[str]) -> set[str]:
    out = set()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            out.add(re.split(r"[<>=!~\[ ;]", line, maxsplit=1)[0].lower())
    return out


def _imports(package: str) -> set[str]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"__future__"}


@pytest.mark.parametrize("extra", sorted(ROLES))
def test_requirement_files_match_pyproject_extras(extra):
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    files = ROLES[extra][0]
    listed = _names([ln for f in files for ln in (ROOT / f).read_text().splitlines()])
    assert listed == _names(extras[extra]), f"{extra}: {files} list {sorted(listed)}, pyproject {sorted(extras[extra])}"


@pytest.mark.parametrize("extra", sorted(ROLES))
def test_role_installs_everything_its_package_imports(extra):
    files, package, other_backend = ROLES[extra]
    installed = {IMPORT_NAME.get(n, n) for n in _names([ln for f in files for ln in (ROOT / f).read_text().splitlines()])}
    used = _imports(package) | (_imports("runtime") | _imports("simtask") if package == "evaluation" else set())
    missing = used - installed - FIRST_PARTY - OUTSIDE_PIP - other_backend
    assert not missing, f"{package} imports {sorted(missing)}, which role {extra} does not install"


def test_lerobot06_requirements_pin_everything_the_project_needs():
    """The lerobot 0.6.x environment (scripts/lerobot06_env.sh) installs exact pins only, covering every
    dependency of the main environment (other versions allowed) and the test tools, on lerobot 0.6 /
    transformers 5."""
    lines = [ln.split("#", 1)[0].strip() for ln in (ROOT / "requirements-lerobot06.txt").read_text().splitlines()]
    pins = dict(ln.split("==", 1) for ln in lines if ln)
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9.\-]*==[0-9][0-9A-Za-z.+\-]*", ln) for ln in lines if ln), \
        [ln for ln in lines if ln and "==" not in ln]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _names(project["dependencies"]) | {"pytest", "hypothesis"}
    assert wanted <= set(pins), f"not pinned for lerobot 0.6: {sorted(wanted - set(pins))}"
    assert pins["lerobot"].startswith("0.6.") and pins["transformers"].startswith("5.")


@pytest.mark.parametrize("python", ["3.10", "3.11", "3.12", "3.13"])
def test_pyproject_installs_one_pin_per_package_and_beside_lerobot06_its_pins(python):
    """Each Python sees one exact pin per dependency; from 3.12 on they are requirements-lerobot06.txt's, so
    `pip install` of the project (or the plugin, which depends on it) beside lerobot 0.6.1 keeps the user's lerobot
    (before: lerobot==0.4.4 for every Python, unresolvable on 3.12+ and a downgrade where it resolved)."""
    from packaging.requirements import Requirement

    env = {"python_version": python, "python_full_version": f"{python}.0"}
    reqs = [Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    applies = [r for r in reqs if r.marker is None or r.marker.evaluate(env)]
    names = [r.name.lower() for r in applies]
    assert len(names) == len(set(names)), f"Python {python}: more than one pin for {sorted(n for n in names if names.count(n) > 1)}"
    pins = {r.name.lower(): str(r.specifier) for r in applies}
    assert all(p.startswith("==") for p in pins.values()), pins
    if python < "3.12":
        assert pins["lerobot"] == "==0.4.4" and pins["transformers"].startswith("==4.")
    else:
        lines = [ln.split("#", 1)[0].strip() for ln in (ROOT / "requirements-lerobot06.txt").read_text().splitlines()]
        lerobot06 = dict(ln.split("==", 1) for ln in lines if ln)
        differ = {n: (p, lerobot06.get(n)) for n, p in pins.items() if p != f"=={lerobot06.get(n)}"}
        assert not differ, f"Python {python}: pyproject pin vs requirements-lerobot06.txt: {differ}"
