"""Every repository name the docs cite exists, so a rename or removal cannot leave a stale pointer behind.

Checked by text only (no imports, so it stays fast): repository paths and test files in code spans and
code blocks, `tests/x.py::test_y` ids and `pytest … -k word` selections, `python -m pkg.mod` modules and the
long flags their commands pass, dotted names like `runtime.strict_json.loads` and `EdgePolicy.step`, bare
module files like `masks.py`, `make` targets, and relative markdown links with their `#anchor`s.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PACKAGES = ("runtime", "export", "evaluation", "scripts", "robot_adapters", "simtask", "smolvla_cls", "plugins")
TOP = (*PACKAGES, "tests", "docs")
EXTENSIONS = (".py", ".md", ".json", ".txt", ".toml", ".sh", ".yaml", ".yml", ".cfg", ".ini")

SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
PATH = re.compile(r"(?<![\w./<-])((?:{})/[\w./-]*[\w/])".format("|".join(TOP)))
BARE_TEST = re.compile(r"(?<![\w/])(test_\w+\.py)\b")
TEST_ID = re.compile(r"(?<![\w/])((?:tests/)?test_\w+\.py)::(\w+)")
K_SELECT = re.compile(r"(?<![\w/])((?:tests/)?test_\w+\.py)\s+-k\s+([A-Za-z_]\w*)(?=[\s`]|$)")
MODULE = re.compile(r"\bpython3? -m ((?:{})(?:\.\w+)*)\b([^\n`|;&#]*)".format("|".join(PACKAGES)))
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)(?![\w.])")
DOTTED = re.compile(r"^((?:{})(?:\.\w+)+)(?:\(.*\))?$".format("|".join(PACKAGES)))
MAKE = re.compile(r"\bmake ((?:[a-z][\w.-]*\s*)+)")
# flags of other tools the docs quote (venv, trtexec, polygraphy, pip, systemd ...), not of this repository
FOREIGN_FLAGS = {"--abi", "--atol", "--dest", "--find-links", "--implementation", "--mount", "--only-binary",
                 "--onnxrt", "--platform", "--propagation", "--python-version", "--restore", "--rtol",
                 "--system-site-packages", "--trt", "--no-deps", "--no-index", "--target",
                 "--help", "--bogus"}  # argparse's own; the example of a flag no command reads
QUALIFIED = re.compile(r"^(\w+)\.(\w+)(?:\(.*\))?$")  # `EdgePolicy.step`, `timeline.slew_step`
BARE_FILE = re.compile(r"^(\w+\.py)$")  # `masks.py`: a module named by its file alone
FOREIGN_FILES = {"lerobot_record.py"}  # lerobot's own scripts the docs compare with
INHERITED = {"from_pretrained"}  # lerobot's, not defined in this repository
# `gate.default`, `safety.stop_action`: manifest keys that share a name with a module, not code
MANIFEST_SECTIONS = {"gate", "manifest", "config", "tokenizer", "safety", "dims", "robot"}
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _code(text: str) -> list[str]:
    """The code spans and fenced blocks of a markdown text: where the docs name files, modules and commands."""
    blocks = [b.replace("\\\n", " ") for b in FENCE.findall(text)]  # a command continued over lines is one
    rest = FENCE.sub("", text)
    return blocks + SPAN.findall(rest)


def _refs() -> list[tuple[str, str, str]]:
    """(kind, reference, doc) for every checkable reference in every doc."""
    out: list[tuple[str, str, str]] = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        name = doc.relative_to(ROOT).as_posix()
        for code in _code(text):
            out += [("path", p, name) for p in PATH.findall(code) if p.endswith(("/", *EXTENSIONS))]
            out += [("test file", t, name) for t in BARE_TEST.findall(code)]
            out += [("test id", f"tests/{f.removeprefix('tests/')}::{t}", name) for f, t in TEST_ID.findall(code)]
            out += [("-k", f"tests/{f.removeprefix('tests/')} -k {k}", name) for f, k in K_SELECT.findall(code)]
            for mod, args in MODULE.findall(code):
                out.append(("module", mod, name))
                out += [("flag", f"{mod} {flag}", name) for flag in FLAG.findall(args)]
            out += [("any flag", flag, name) for flag in FLAG.findall(code)]
            out += [("dotted", d, name) for d in DOTTED.findall(code.strip())]
            out += [("qualified", ".".join(q), name) for q in QUALIFIED.findall(code.strip())
                    if q[0] in _owners() and q[0] not in (*PACKAGES, *MANIFEST_SECTIONS)
                    and q[1] not in (*INHERITED, "py", "json", "md")]
            out += [("bare file", f, name) for f in BARE_FILE.findall(code.strip())
                    if not f.startswith("test_") and f not in FOREIGN_FILES]
            for targets in MAKE.findall(code):
                out += [("make", t, name) for t in targets.split() if not t.startswith("-") and "=" not in t]
        out += [("link", link, name) for link in LINK.findall(FENCE.sub("", text))]
    return sorted(set(out))


@cache
def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _module_file(dotted: str) -> Path | None:
    """The source file of a module or package named by dots, or None."""
    base = ROOT.joinpath(*dotted.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _package_sources(module: str) -> str:
    """All source text a `python -m module` command's flags could be defined in: its top package and runtime."""
    tops = {module.split(".")[0], "runtime"}
    return "\n".join(_text(p) for top in sorted(tops) for p in sorted((ROOT / top).rglob("*.py")))


@cache
def _all_sources() -> str:
    """Every Python source of the repository, for flags the docs name outside a command."""
    return "\n".join(_text(p) for top in PACKAGES for p in sorted((ROOT / top).rglob("*.py")))


@cache
def _owners() -> dict[str, list[Path]]:
    """Module file stems and class names of the repository's packages, each with the files defining it."""
    owners: dict[str, list[Path]] = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            owners.setdefault(path.stem, []).append(path)
            for cls in re.findall(r"^class (\w+)", _text(path), re.MULTILINE):
                owners.setdefault(cls, []).append(path)
    return owners


def _anchors(doc: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped except '-' and '_', spaces to '-'."""
    heads = re.findall(r"^#{1,6}\s+(.*?)\s*$", FENCE.sub("", _text(doc)), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower().replace("`", "")).replace(" ", "-") for h in heads}


def _check(kind: str, ref: str, doc: str) -> str | None:
    """None when the reference resolves, else why not."""
    if kind == "path":
        return None if (ROOT / ref).exists() else "no such file or folder"
    if kind == "test file":
        return None if (ROOT / "tests" / ref).is_file() else "no such test file in tests/"
    if kind == "test id":
        file, test = ref.split("::")
        if not (ROOT / file).is_file():
            return "no such test file"
        ok = re.search(rf"^\s*def {test}\(", _text(ROOT / file), re.MULTILINE)
        return None if ok else f"no test {test} in {file}"
    if kind == "-k":
        file, word = ref.split(" -k ")
        if not (ROOT / file).is_file():
            return "no such test file"
        ok = re.search(rf"^\s*def test_\w*{word}\w*\(", _text(ROOT / file), re.MULTILINE)
        return None if ok else f"no test in {file} matches -k {word}"
    if kind == "module":
        base = ROOT.joinpath(*ref.split("."))
        return None if base.with_suffix(".py").is_file() or (base / "__main__.py").is_file() else "no such module"
    if kind == "flag":
        module, flag = ref.split()
        return None if re.search(rf"[\"']{re.escape(flag)}[\"'=]", _package_sources(module)) else "flag defined nowhere"
    if kind == "any flag":
        ok = ref in FOREIGN_FLAGS or re.search(rf"[\"']{re.escape(ref)}[\"'=]", _all_sources())
        return None if ok else "no command of this repository defines it"
    if kind == "dotted":
        parts = ref.split("(")[0].split(".")
        for i in range(len(parts), 0, -1):
            source = _module_file(".".join(parts[:i]))
            if source is not None:
                break
        else:
            return "no such module"
        text = _text(source)
        for j, attr in enumerate(parts[i:]):
            top = "" if j == 0 else r"\s*"
            if not re.search(rf"^{top}(?:def|class|async def) {attr}\b|^{top}{attr}\s*[:=]", text, re.MULTILINE):
                return f"{attr} is not defined in {source.relative_to(ROOT)}"
        return None
    if kind == "qualified":
        owner, attr = ref.split(".")
        pattern = rf"^\s*(?:def|class|async def) {attr}\b|^\s*{attr}\s*[:=]|self\.{attr}\s*[:=]"
        ok = any(re.search(pattern, _text(f), re.MULTILINE) for f in _owners().get(owner, []))
        return None if ok else f"{attr} is defined in no file of {owner}"
    if kind == "bare file":
        return None if any(ROOT.glob(f"*/**/{ref}")) else "no file of that name in the repository"
    if kind == "make":
        ok = re.search(rf"^{re.escape(ref)}\s*:", _text(ROOT / "Makefile"), re.MULTILINE)
        return None if ok else "no such make target"
    if kind == "link":
        if re.match(r"^[a-z]+:", ref):
            return None
        target, _, anchor = ref.partition("#")
        path = (ROOT / doc).parent / target if target else ROOT / doc
        if not path.exists():
            return "link target missing"
        if anchor and path.suffix == ".md" and anchor not in _anchors(path):
            return f"no heading #{anchor} in {path.relative_to(ROOT)}"
        return None
    raise AssertionError(kind)


REFS = _refs()
KINDS = ("path", "test file", "test id", "-k", "module", "flag", "any flag", "dotted", "qualified", "bare file", "make",
         "link")


def test_the_docs_cite_something():
    """The extraction finds each kind (a regex broken into matching nothing would pass every check)."""
    kinds = {k for k, _, _ in REFS}
    assert kinds == set(KINDS), kinds
    assert len(REFS) > 300


@pytest.mark.parametrize("kind", KINDS)
def test_every_reference_resolves(kind):
    """One line per stale reference: doc, kind, what it names, and why it does not resolve."""
    bad = [f"{doc}: {kind} {ref!r}: {why}" for k, ref, doc in REFS if k == kind
           for why in [_check(k, ref, doc)] if why]
    assert not bad, "\n" + "\n".join(bad)


@pytest.mark.parametrize(("kind", "ref"), [
    ("path", "runtime/no_such_module.py"), ("test file", "test_no_such.py"),
    ("test id", "tests/test_runtime_imports.py::test_no_such"), ("-k", "tests/test_runtime_imports.py -k zzz"),
    ("module", "runtime.no_such"), ("flag", "runtime --no-such-flag"), ("any flag", "--no-such-flag"),
    ("dotted", "runtime.policy.NoSuch"), ("qualified", "EdgePolicy.no_such"), ("bare file", "no_such.py"),
    ("make", "no-such-target"), ("link", "docs/06-runtime.md#no-such-heading"),
])
def test_a_stale_reference_is_caught(kind, ref):
    """Each check refuses a name that does not exist (a check that accepted anything would hide staleness)."""
    assert _check(kind, ref, "README.md") is not None


@pytest.mark.parametrize(("kind", "ref"), [
    ("path", "runtime/policy.py"), ("test id", "tests/test_runtime_imports.py::test_import_graph_is_clean"),
    ("module", "runtime"), ("dotted", "runtime.policy.EdgePolicy.step"), ("make", "test"),
    ("qualified", "timeline.slew_step"), ("bare file", "masks.py"),
    ("link", "docs/06-runtime.md#gates"),
])
def test_a_live_reference_resolves(kind, ref):
    """And accepts names that do exist."""
    assert _check(kind, ref, "README.md") is None
