"""atomic_folder: the new folder appears whole or not at all, and the folder it replaces is never lost."""

from __future__ import annotations

import ctypes
import errno
import os
import sys
import threading
from pathlib import Path

import pytest

from runtime import atomic_folder as atomic_module
from runtime.atomic_folder import AtomicFolderError, atomic_folder


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
    monkeypatch.setattr(atomic_module, "exchange", lambda a, b: False)  # the two-rename path
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


def _exchange_works(where: Path) -> bool:
    """Whether this kernel and file system swap two folders with renameat2 (asked directly, not via the code
    under test)."""
    a, b = where / "probe-a", where / "probe-b"
    a.mkdir()
    b.mkdir()
    try:
        fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
        return fn is not None and fn(-100, bytes(a), -100, bytes(b), 2) == 0
    finally:
        a.rmdir()
        b.rmdir()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2(RENAME_EXCHANGE) is Linux's")
def test_a_reader_never_finds_the_destination_missing_during_swaps(tmp_path):
    """The two-rename swap left `dst` missing for a moment (a runtime loading then got "no manifest.json");
    the exchange replaces it in one step."""
    if not _exchange_works(tmp_path):
        pytest.skip("this file system refuses RENAME_EXCHANGE")
    dst = tmp_path / "onnx"
    dst.mkdir()
    _write(dst, "0")
    stop, missing, seen = threading.Event(), [], set()

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.add((dst / "manifest.json").read_text())
            except FileNotFoundError:
                missing.append(1)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(1, 201):
            with atomic_folder(dst) as tmp:
                _write(tmp, str(i))
    finally:
        stop.set()
        thread.join()
    assert missing == [] and len(seen) > 1
    assert (dst / "manifest.json").read_text() == "200" and _siblings(dst) == []


def _failing_renameat2(err: int):
    def fn(*args):
        ctypes.set_errno(err)
        return -1
    return lambda: fn


@pytest.mark.parametrize("err", [errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP])
def test_a_file_system_without_exchange_falls_back_to_two_renames(tmp_path, monkeypatch, err):
    monkeypatch.setattr(atomic_module, "_renameat2", _failing_renameat2(err))
    dst = tmp_path / "onnx"
    dst.mkdir()
    _write(dst, "old")
    with atomic_folder(dst) as tmp:
        _write(tmp, "new")
    assert (dst / "manifest.json").read_text() == "new" and _siblings(dst) == []


def test_an_exchange_that_fails_otherwise_keeps_both_folders_and_names_them(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic_module, "_renameat2", _failing_renameat2(errno.EBUSY))
    dst = tmp_path / "onnx"
    dst.mkdir()
    _write(dst, "old")
    with pytest.raises(AtomicFolderError, match="could not move .* aside") as err, atomic_folder(dst) as tmp:
        _write(tmp, "new")
    assert (dst / "manifest.json").read_text() == "old"
    kept = Path(str(err.value).rsplit("stays at ", 1)[1])
    assert (kept / "manifest.json").read_text() == "new"
    assert not list(tmp_path.glob(".onnx.*.lock"))  # kept for the user: no later sweep deletes it
