"""Artifact folders get the permissions a plain mkdir/open would give (umask respected), so the runtime's own
account on the robot can read them; every file-system failure of the swap, and an unreadable folder or file on
the runtime side, is one line naming the folder or file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

try:
    from tests.fake_artifacts import INT8_DRIFT_THRESHOLD, cached_fake_artifacts
except ImportError:
    from fake_artifacts import INT8_DRIFT_THRESHOLD, cached_fake_artifacts

from runtime import atomic_folder as atomic_module
from runtime.atomic_folder import AtomicFolderError, atomic_folder, process_umask
from runtime.manifest import Manifest, ManifestError
from runtime.tokenizer import InstructionTokenizer


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def restore_umask():
    mask = os.umask(0o022)
    os.umask(mask)
    yield
    os.umask(mask)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mask=st.sampled_from([0o002, 0o022, 0o027, 0o077, 0o007]), replace=st.booleans())
def test_the_folder_and_its_files_get_normal_permissions(tmp_path_factory, restore_umask, mask, replace):
    """mkdtemp made the folder owner-only (0700) and onnx writes external data 0600: another account (the
    runtime's service user) could not read an export. Now: 0777 / 0666 minus the umask, whatever was written."""
    os.umask(mask)
    assert process_umask() == mask
    dst = tmp_path_factory.mktemp("perm") / "onnx"
    if replace:
        dst.mkdir()
        (dst / "manifest.json").write_text("old")
    with atomic_folder(dst) as tmp:
        (tmp / "manifest.json").write_text("new")
        fd = os.open(tmp / "prefix.onnx.data", os.O_WRONLY | os.O_CREAT, 0o600)  # as onnx writes external data
        os.close(fd)
        (tmp / "sub").mkdir(mode=0o700)
        (tmp / "sub" / "x").write_text("x")
    assert _mode(dst) == 0o777 & ~mask and _mode(dst / "sub") == 0o777 & ~mask
    for f in ("manifest.json", "prefix.onnx.data", "sub/x"):
        assert _mode(dst / f) == 0o666 & ~mask, f


def test_a_quantized_folder_respects_the_umask(tmp_path, restore_umask):
    from export.int8.quantization import quantize_artifacts

    os.umask(0o027)
    dst = tmp_path / "onnx-int8"
    quantize_artifacts(cached_fake_artifacts(drift_threshold=INT8_DRIFT_THRESHOLD), dst, progress=False, check_load=False)
    assert _mode(dst) == 0o750
    assert {_mode(p) for p in dst.iterdir()} == {0o640}


def test_a_destination_that_cannot_be_created_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(AtomicFolderError, match="cannot create a folder next to"), atomic_folder(blocker / "onnx"):
        pytest.fail("the body must not run")


def _old_destination(tmp_path, monkeypatch, before_rename) -> Path:
    """An export folder holding an "old" manifest, swapped by two renames; `before_rename(src, target)` runs first."""
    monkeypatch.setattr(atomic_module, "exchange", lambda a, b: False)  # the two-rename path
    dst = tmp_path / "onnx"
    dst.mkdir()
    (dst / "manifest.json").write_text("old")
    real_rename = Path.rename

    def rename(self, target):
        before_rename(self, Path(target))
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    return dst


def _kept_folder(err: pytest.ExceptionInfo) -> Path:
    return Path(str(err.value).rsplit("stays at ", 1)[1])


def test_a_destination_that_cannot_be_moved_aside_keeps_both(tmp_path, monkeypatch):
    """A mount point (EBUSY) or a parent made read-only: the old folder stays, the new one is named."""
    def busy(src, _target):
        if src == tmp_path / "onnx":
            raise OSError(16, "Device or resource busy")

    dst = _old_destination(tmp_path, monkeypatch, busy)
    with pytest.raises(AtomicFolderError, match="could not move .* aside") as err, atomic_folder(dst) as tmp:
        (tmp / "manifest.json").write_text("new")
    assert (dst / "manifest.json").read_text() == "old"
    assert (_kept_folder(err) / "manifest.json").read_text() == "new"


def test_a_racing_writer_that_takes_the_destination_is_named(tmp_path, monkeypatch):
    """Two exports swapping at once: the other one's folder appears between our two renames; ours and the
    replaced one are both named, nothing is lost, no traceback."""
    def other_writer(src, target):
        if str(src).endswith(".partial"):
            target.mkdir()
            (target / "manifest.json").write_text("other")

    dst = _old_destination(tmp_path, monkeypatch, other_writer)
    with pytest.raises(AtomicFolderError, match="another writer") as err, atomic_folder(dst) as tmp:
        (tmp / "manifest.json").write_text("new")
    assert (dst / "manifest.json").read_text() == "other"
    assert (_kept_folder(err) / "manifest.json").read_text() == "new"


def _deny(monkeypatch, name: str, method: str) -> None:
    real = getattr(Path, method)

    def denied(self, *args, **kwargs):
        if self.name == name:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, method, denied)


def test_an_unreadable_folder_is_a_manifest_error(monkeypatch):
    """An owner-only export read by another account: a ManifestError naming the file, not a PermissionError."""
    folder = cached_fake_artifacts()
    _deny(monkeypatch, "manifest.json", "stat")
    with pytest.raises(ManifestError, match=r"'manifest.json' .* cannot be read \(Permission denied\).*a\+rX"):
        Manifest.load(folder)


def test_an_unreadable_tokenizer_is_a_manifest_error(monkeypatch):
    """verify_hashes=False does not read the tokenizer at load: the tokenizer's own read names it."""
    m = Manifest.load(cached_fake_artifacts(), verify_hashes=False)
    _deny(monkeypatch, m.tokenizer.file, "read_bytes")
    with pytest.raises(ManifestError, match=r"'tokenizer.json' .* cannot be read \(Permission denied\)"):
        InstructionTokenizer(m.tokenizer_path, m.tokenizer)
