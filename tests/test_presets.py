"""The offline VLM preset folder gets a normal folder's mode under the umask (mkdtemp made it owner-only, 0700)."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from smolvla_cls import presets


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_preset_folder_mode_follows_the_umask(umask, tmp_path, monkeypatch):
    monkeypatch.setenv("SMOLVLA_CLS_CACHE", str(tmp_path))
    old = os.umask(umask)
    try:
        folder = presets.materialize_preset("tiny")
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask
    assert (folder / "smolvla_cls_preset.json").exists()
    assert presets.materialize_preset("tiny") == folder  # idempotent: the finished folder is reused


def _complete(folder) -> bool:
    return (folder / presets.MARKER).is_file() and (folder / "config.json").is_file()


@pytest.mark.parametrize("incomplete", [
    {},  # an empty folder left behind
    {"config.json": "{"},  # interrupted half way: some files, no marker
    {"config.json": "{", "tokenizer.json": "{}", "preprocessor_config.json": "{}"},
    {"smolvla_cls_preset.json/": None},  # the marker's name, but a folder
])
def test_a_folder_without_the_marker_is_rebuilt_whole(incomplete, tmp_path, monkeypatch):
    """An existing target without the marker file used to be returned as it was (the rename into it failed and
    was taken for a lost race): every incomplete state is now replaced by a complete folder."""
    monkeypatch.setenv("SMOLVLA_CLS_CACHE", str(tmp_path))
    target = presets.preset_dir("tiny")
    target.mkdir(parents=True)
    for name, text in incomplete.items():
        if name.endswith("/"):
            (target / name).mkdir()
        else:
            (target / name).write_text(text)
    assert presets.materialize_preset("tiny") == target
    assert _complete(target) and (target / "config.json").read_text() != "{"
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no scratch folder left
    inode = target.stat().st_ino
    assert presets.materialize_preset("tiny") == target and target.stat().st_ino == inode  # complete: reused


def test_scratch_folders_of_the_writer_before_atomic_folder_are_swept(tmp_path, monkeypatch):
    """`.<preset>-<random>` (mkdtemp of the first preset writer, no lock file) of a killed writer went unswept;
    now it goes once idle a day, on a build or a reuse; a recent one and any other name stay."""
    monkeypatch.setenv("SMOLVLA_CLS_CACHE", str(tmp_path))
    vlm = presets.preset_dir("tiny").parent
    vlm.mkdir(parents=True)
    then = time.time() - 2 * 24 * 3600

    def scratch(name: str, idle: bool) -> Path:
        folder = vlm / name
        folder.mkdir()
        (folder / "config.json").write_text("{")
        if idle:
            for p in (folder / "config.json", folder):
                os.utime(p, (then, then))
        return folder

    stale, recent = scratch(".tiny-k3x_9a0q", True), scratch(".tiny-zz99yy88", False)
    other = [scratch(".full-k3x_9a0q", True), scratch(".tiny-k3x9a0q", True), scratch("tiny-k3x_9a0q", True)]
    target = presets.materialize_preset("tiny")
    assert _complete(target) and not stale.exists() and recent.exists() and all(o.exists() for o in other)
    again = scratch(".tiny-ab12cd34", True)
    assert presets.materialize_preset("tiny") == target and not again.exists()  # the reuse sweeps too
