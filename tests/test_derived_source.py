"""A derived folder (int8, fp16) is built from one source export: a re-export landing in `--src` while it is
being derived is refused, never mixed into a folder whose fresh hashes would all check out."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

try:
    from tests.fake_artifacts import build_fake_artifacts, cached_fake_artifacts
except ImportError:
    from fake_artifacts import build_fake_artifacts, cached_fake_artifacts

from export.derived_artifacts import DerivationInputError
from export.int8 import quantization
from export.precision import mixed_precision


def _derive(kind: str, src: Path, dst: Path) -> None:
    if kind == "int8":
        quantization.quantize_artifacts(src, dst, progress=False, check_load=False)
    else:
        mixed_precision.lower_artifacts(src, dst, samples=1, trials=1, fallback_rounds=0, progress=False)


@pytest.mark.parametrize("kind,hook", [("int8", "_quantize_graph"), ("fp16", "_lower_folder")])
def test_a_source_replaced_half_way_is_refused(tmp_path, monkeypatch, kind, hook):
    """Before: the int8 folder held the first export's prefix and the second's experts (two models), with
    fresh hashes and the second's source_manifest_sha256, so Manifest.load and make's up-to-date check took it."""
    src = tmp_path / "onnx"
    shutil.copytree(cached_fake_artifacts(), src)
    other = build_fake_artifacts(tmp_path / "other", seed=1)
    module = quantization if kind == "int8" else mixed_precision
    real = getattr(module, hook)
    calls = []

    def racing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            shutil.rmtree(src)  # `make export` swapping a new export into --src
            shutil.copytree(other, src)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, hook, racing)
    dst = tmp_path / f"onnx-{kind}"
    with pytest.raises(DerivationInputError, match=r"--src .* changed while it was being derived"):
        _derive(kind, src, dst)
    assert calls and not dst.exists()
