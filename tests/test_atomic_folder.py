"""atomic_folder: the new folder appears whole or not at all, and the folder it replaces is never lost."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from export.atomic_folder import AtomicFolderError, atomic_folder


def _write(folder: Path, text: str) -> None:
    (folder / "manifest.json").write_text(text)


def _siblings(dst: Path) -> list[str]:
    return sorted(p.name for p in dst.parent.iterdir() if p.name.startswith("."))


def test_replaces_a_folder_and_leaves_no_temporary_sibling(tmp_path):
    dst = tmp_path / "onnx"
    dst.mkdir()
    _write(dst, "old")
    with atomic_folder(dst) as tmp:
        _write(tmp, "new")
        assert (dst / "manifest.json").read_text() == "old"  # not visible before it is complete
    assert (dst / "manifest.json").read_text() == "new" and _siblings(dst) == []


@pytest.mark.parametrize("exc", [RuntimeError("export failed"), KeyboardInterrupt()])
def test_a_failed_export_leaves_the_old_folder_as_it_was(tmp_path, exc):
    dst = tmp_path / "onnx"
    dst.mkdir()
    _write(dst, "old")
    with pytest.raises(type(exc)), atomic_folder(dst) as tmp:
        _write(tmp, "half")
        raise exc
    assert (dst / "manifest.json").read_text() == "old" and _siblings(dst) == []


def test_a_symlinked_destination_keeps_its_link_and_gets_the_new_folder(tmp_path):
    target = tmp_path / "onnx-v1"
    target.mkdir()
    _write(target, "old")
    link = tmp_path / "onnx"
    link.symlink_to(target.name)
    with atomic_folder(link) as tmp:
        _write(tmp, "new")
    assert link.is_symlink() and (link / "manifest.json").read_text() == "new"
    assert _siblings(link) == []


def test_a_folder_that_cannot_be_emptied_is_not_lost(tmp_path, monkeypatch):
    """The old way deleted `dst` before the move: one undeletable file left a half-deleted folder and lost the new
    one. Now the swap is two renames; a failing delete of the replaced folder only leaves it beside."""
    import shutil

    dst = tmp_path / "onnx"
    dst.mkdir()
    _write(dst, "old")
    real_rmtree = shutil.rmtree
    monkeypatch.setattr(shutil, "rmtree", lambda p, ignore_errors=False: None if ".old" in str(p) else real_rmtree(
        p, ignore_errors=ignore_errors))
    with atomic_folder(dst) as tmp:
        _write(tmp, "new")
    assert (dst / "manifest.json").read_text() == "new"
    assert [n for n in _siblings(dst) if n.endswith(".old")]  # left beside, named in a warning


def test_a_failed_move_restores_the_old_folder_and_names_both(tmp_path, monkeypatch):
    dst = tmp_path / "onnx"
    dst.mkdir()
    _write(dst, "old")
    real_rename = Path.rename

    def rename(self, target):
        if str(self).endswith(".partial"):
            raise OSError("device busy")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(AtomicFolderError, match="is unchanged") as err, atomic_folder(dst) as tmp:
        _write(tmp, "new")
    assert (dst / "manifest.json").read_text() == "old"
    kept = Path(str(err.value).rsplit("stays at ", 1)[1])
    assert (kept / "manifest.json").read_text() == "new"


def test_concurrent_exports_get_their_own_temporary_folders(tmp_path):
    dst = tmp_path / "onnx"
    with atomic_folder(dst) as a, atomic_folder(dst) as b:
        assert a != b
        _write(a, "a")
        _write(b, "b")
    assert (dst / "manifest.json").read_text() in ("a", "b") and _siblings(dst) == []


def test_a_file_in_the_way_is_refused_before_any_work(tmp_path):
    dst = tmp_path / "onnx"
    dst.write_text("not a folder")
    with pytest.raises(AtomicFolderError, match="not a folder"), atomic_folder(dst):
        pytest.fail("the body must not run")
    assert os.path.isfile(dst)
