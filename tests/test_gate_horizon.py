"""Gate calibration over the horizon a plan really runs (export side) and what the runtime does with the
manifest's optional `gate.<metric>.horizon` (runtime side: parsed, validated, and a planner whose delay
shortens the compared horizon below the calibrated one warns once)."""

from __future__ import annotations

import numpy as np
import pytest

try:
    from tests.fake_artifacts import build_fake_artifacts, cached_fake_artifacts, make_observation
except ImportError:
    from fake_artifacts import build_fake_artifacts, cached_fake_artifacts, make_observation

from export.graphs.gate_calibration import check_horizon, summarise_pairs
from runtime.async_planner import AsyncChunkPlanner, horizon_mismatch
from runtime.manifest import Manifest, ManifestError
from runtime.policy import EdgePolicy


def _pairs(n: int = 20) -> list[tuple[int, bool, float]]:
    """Unchanged distances grow with k (the agent moves); a jump adds a fixed 0.3."""
    rng = np.random.default_rng(0)
    out = []
    for k in range(1, n):
        for _ in range(20):
            out.append((k, False, 0.05 * k + rng.normal(0, 0.01)))
            out.append((k, True, 0.05 * k + 0.3 + rng.normal(0, 0.01)))
    return out


def test_a_shorter_horizon_lowers_the_threshold_and_separates_better():
    pairs = _pairs()
    full, short = summarise_pairs(pairs, 20), summarise_pairs(pairs, 5)
    assert full["horizon"] == 20 and short["horizon"] == 5
    assert short["n_unchanged"] == 4 * 20 < full["n_unchanged"]
    assert short["default_threshold"] < 0.3 < full["default_threshold"]
    assert short["auroc"] > 0.99 and full["auroc"] < 0.8
    assert list(full["auroc_by_horizon"]) == [str(h) for h in range(2, 21)]
    assert full["auroc_by_horizon"]["5"] == pytest.approx(short["auroc"])


@pytest.mark.parametrize("bad", [1, 0, 11, 2.5, True, "5"])
def test_a_horizon_outside_2_to_n_is_refused_naming_it(bad):
    with pytest.raises(ValueError, match="horizon"):
        check_horizon(bad, 10)
    assert check_horizon(None, 10) == 10 and check_horizon(4, 10) == 4


def test_export_calibrates_on_the_horizon_and_the_runtime_reads_it(tmp_path):
    from export.graphs.onnx_export import ExportInputError, export_artifacts
    from tests.test_export import _loaded

    loaded = _loaded()  # chunk = n_action_steps = 8
    m = export_artifacts(loaded, tmp_path / "h4", calibrate=True, calib_episodes=2, progress=False, gate_horizon=4)
    for metric in ("drift", "consistency"):
        g = m["gate"][metric]
        assert g["horizon"] == 4 and set(g["auroc_by_horizon"]) <= {"2", "3", "4"}
    assert "pairs < 4 ticks apart" in m["gate"]["source"]
    jump = m["gate"]["jump"]  # the per-tick gate: lag-1 pairs whatever the horizon (optional, format 3)
    assert jump["horizon"] == 2 and jump["n_unchanged"] > 0 and 0.0 <= jump["default_threshold"] <= 2.0
    runtime = Manifest.load(tmp_path / "h4")
    assert runtime.gate_calibration["jump"].default_threshold == jump["default_threshold"]
    assert EdgePolicy(tmp_path / "h4", gate="jump").gate.spec == f"jump:{jump['default_threshold']:g}"
    assert runtime.gate_calibration["drift"].horizon == 4
    assert runtime.gate_calibration["drift"].default_threshold == m["gate"]["drift"]["default_threshold"]
    with pytest.raises(ExportInputError, match="--gate-horizon"):
        export_artifacts(loaded, tmp_path / "bad", calibrate=False, progress=False, gate_horizon=9)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("bad", [1, "5", 2.0])
def test_runtime_refuses_a_bad_horizon_and_loads_one_without_it(tmp_path, bad):
    def edit(m):
        m["gate"]["drift"]["horizon"] = bad

    with pytest.raises(ManifestError, match="horizon"):
        Manifest.load(build_fake_artifacts(tmp_path / "bad", edit_manifest=edit))
    assert Manifest.load(cached_fake_artifacts(chunk_size=8)).gate_calibration["drift"].horizon is None


def _policy(tmp_path, horizon, gate="drift"):
    def edit(m):
        if horizon is not None:
            m["gate"]["drift"]["horizon"] = horizon

    art = build_fake_artifacts(tmp_path / f"h{horizon}", chunk_size=8, edit_manifest=edit)
    return EdgePolicy(art, gate=gate, seed=0, backend_options={"intra_op_threads": 1})


def test_horizon_mismatch_names_the_horizon_to_export_with(tmp_path):
    default = _policy(tmp_path, None)  # absent = n_action_steps = 8
    assert horizon_mismatch(default, 0, 0) is None
    assert "--gate-horizon 5" in horizon_mismatch(default, 3, 0)
    assert "--gate-horizon 4" in horizon_mismatch(default, 3, 1)
    assert horizon_mismatch(_policy(tmp_path, 5), 3, 0) is None  # calibrated for exactly this delay
    assert horizon_mismatch(_policy(tmp_path, 5, gate="drift:0.2"), 6, 0) is None  # explicit threshold
    assert horizon_mismatch(_policy(tmp_path, 5, gate="always"), 3, 0) is None


def test_the_planner_warns_once_when_the_delay_shortens_the_calibrated_horizon(tmp_path, caplog):
    planner = AsyncChunkPlanner(_policy(tmp_path, None), seam="none")
    first = planner.plan(make_observation(0), 0, None, 0, 0)
    assert first.chunk is not None
    with caplog.at_level("WARNING", logger="runtime.async_planner"):
        for tick in (1, 2, 3):
            planner.plan(make_observation(tick), tick, first.chunk.actions[tick:], tick, 3)
    assert caplog.text.count("calibrated on observation pairs < 8 ticks apart") == 1
    assert "--gate-horizon 5" in caplog.text


def test_horizon_mismatch_checks_each_part_of_an_any_gate(tmp_path):
    p = _policy(tmp_path, None, gate="any:drift,consistency")
    assert "--gate-horizon 5" in horizon_mismatch(p, 3, 0)
    assert horizon_mismatch(_policy(tmp_path, None, gate="any:drift:0.2,state:0.5"), 3, 0) is None  # explicit
