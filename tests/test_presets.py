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
