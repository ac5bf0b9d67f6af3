"""Cross-environment check, side two: an artifact folder trained and exported under lerobot 0.6 (Python 3.13,
transformers 5) loads in the runtime of this environment and emits the actions PyTorch computed there.
`make test-lerobot-0.6` produces the folder (tests/cross_env_artifacts.py) and runs this with
SMOLVLA_CLS_LEROBOT06_OUT set; without it (plain `make test`) there is nothing to check and it skips."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.export_reference import runtime_actions

FOLDER = os.environ.get("SMOLVLA_CLS_LEROBOT06_OUT")
pytestmark = pytest.mark.skipif(not FOLDER, reason="SMOLVLA_CLS_LEROBOT06_OUT unset: run `make test-lerobot-0.6`")


def test_the_folder_was_exported_under_lerobot_06():
    manifest = json.loads((Path(FOLDER) / "onnx" / "manifest.json").read_text())
    assert manifest["versions"]["lerobot"].startswith("0.6."), manifest["versions"]


@pytest.mark.parametrize("refine", [False, True])
def test_runtime_here_reproduces_lerobot06_pytorch(refine):
    reference = np.load(Path(FOLDER) / "reference.npz")
    got = runtime_actions(Path(FOLDER) / "onnx", reference["noise"], refine)
    want = reference["refined" if refine else "plain"]
    n = 1 if refine else len(got)  # with refine, kept ticks refine again against new K/V: compare the resample tick
    np.testing.assert_allclose(got[:n], want[:n], atol=1e-3)
    assert np.isfinite(got).all() and np.abs(got[:n]).max() > 0
