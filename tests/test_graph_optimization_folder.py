"""`python -m export.int8.graph_optimization GRAPH.onnx` on a graph of an artifact folder: refused in place (the
manifest hashes it, and the folder would stop loading), allowed to a new file next to it."""

from __future__ import annotations

import json

import pytest

from export.int8.graph_optimization import main
from runtime.manifest import Manifest
from tests.fake_artifacts import build_fake_artifacts


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_fake_artifacts(tmp_path_factory.mktemp("go") / "onnx")


def _graphs(folder):
    return [name for name in json.loads((folder / "manifest.json").read_text())["files"] if name.endswith(".onnx")]


def test_every_graph_of_a_folder_is_refused_in_place_and_the_folder_still_loads(folder, capsys):
    graphs = _graphs(folder)
    assert graphs
    for name in graphs:
        before = (folder / name).read_bytes()
        for out in ([], ["--out", str(folder / name)]):
            assert main([str(folder / name), *out]) == 2
            err = capsys.readouterr().err
            assert "artifact folder" in err and "--out" in err and "Traceback" not in err
            assert (folder / name).read_bytes() == before
    Manifest.load(folder)


def test_a_copy_next_to_it_is_written_and_the_folder_still_loads(folder, capsys):
    name = _graphs(folder)[0]
    assert main([str(folder / name), "--out", str(folder / f"opt_{name}")]) == 0
    assert (folder / f"opt_{name}").is_file()
    Manifest.load(folder)
