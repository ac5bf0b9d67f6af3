"""The offline VLM preset folder gets a normal folder's mode under the umask (mkdtemp made it owner-only, 0700)."""

from __future__ import annotations

import os
import stat

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
