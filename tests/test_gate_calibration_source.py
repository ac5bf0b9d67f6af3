"""The export's gate calibration measures what the runtime will see: the policy's own sampled chunks, executed
open-loop along the policy's own trajectory (`plans="policy"`, the default), not the scripted expert's plans —
whose quiet distances are smaller, so their p95 fired on ~22 % of the runtime's quiet ticks (review of #20)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.graphs.gate_calibration import _Graphs, calibrate_on_simtask
from export.graphs.normalization import Normalizer
from simtask.reach_env import ReachEnv
from tests.test_export import _loaded

HORIZON = 4


def _tokenize(text: str):
    return torch.full((1, 8), 7, dtype=torch.long), torch.ones(1, 8, dtype=torch.bool)


@pytest.fixture(scope="module")
def setup():
    loaded = _loaded()
    cfg = loaded.policy.config
    return loaded, Normalizer(loaded.stats, "observation.state", cfg.max_state_dim, cfg.max_action_dim)


def test_policy_calibration_executes_its_own_sampled_chunks(setup, monkeypatch):
    loaded, norm = setup
    sampled: list[np.ndarray] = []
    events: list[np.ndarray | None] = []  # None: an episode starts; else the action sent to the simulator
    sample, step, reset = _Graphs.sample, ReachEnv.step, ReachEnv.reset

    def spy_sample(self, prefix_out, generator):
        sampled.append(sample(self, prefix_out, generator))
        return sampled[-1]

    def spy_step(self, action):
        events.append(np.asarray(action, dtype=np.float64))
        return step(self, action)

    def spy_reset(self, *args, **kwargs):
        events.append(None)
        return reset(self, *args, **kwargs)

    monkeypatch.setattr(_Graphs, "sample", spy_sample)
    monkeypatch.setattr(ReachEnv, "step", spy_step)
    monkeypatch.setattr(ReachEnv, "reset", spy_reset)
    g = calibrate_on_simtask(loaded.policy.model, norm.state, norm.action, _tokenize, n_episodes=2, progress=False,
                             horizon=HORIZON, unnormalize_action=norm.action_raw)
    assert g["plans"] == "policy" and "policy's own" in g["source"]
    # every executed action is a row of the chunk sampled at the episode's last multiple of H, unnormalised as
    # the runtime unnormalises; a new chunk exactly every H ticks
    chunk_i, t, steps = -1, 0, 0
    for e in events:
        if e is None:
            t = 0
            continue
        if t % HORIZON == 0:
            chunk_i += 1
        act = loaded.stats["action"]
        np.testing.assert_allclose(e, sampled[chunk_i][t % HORIZON, :2] * act["std"] + act["mean"],
                                   rtol=1e-5, atol=1e-7)
        t, steps = t + 1, steps + 1
    assert chunk_i + 1 == len(sampled) and steps >= 2 * HORIZON
    for metric in ("drift", "consistency"):
        assert g[metric]["n_unchanged"] + g[metric]["n_changed"] > 0
        assert g[metric]["default_threshold"] == pytest.approx(g[metric]["stats"]["p95"])


def test_sampling_is_the_runtimes_euler_loop(setup):
    """Same noise, same graphs: `_Graphs.sample` equals the runtime backend's `denoise` on the PyTorch velocity."""
    from runtime.backend import Backend

    loaded, _ = setup
    graphs = _Graphs(loaded.policy.model)
    cfg = loaded.policy.config
    with torch.no_grad():
        out = graphs.prefix(torch.rand(1, 1, 3, *cfg.resize_imgs_with_padding), *_tokenize(""),
                            torch.zeros(1, cfg.max_state_dim))
        mine = graphs.sample(out, torch.Generator().manual_seed(3))
    noise = torch.randn(1, cfg.chunk_size, cfg.max_action_dim, generator=torch.Generator().manual_seed(3)).numpy()

    class TorchVelocity(Backend):
        run_prefix = run_delta_expert = None

        def run_main_expert(self, x, t, prefix):
            with torch.no_grad():
                return graphs.main(torch.from_numpy(x), torch.tensor([t], dtype=torch.float32), *out[:3]).numpy()

    theirs = Backend.denoise(TorchVelocity(), noise, cfg.num_steps, None)
    np.testing.assert_allclose(mine, theirs[0], rtol=1e-5, atol=1e-6)


def test_plan_source_and_its_needs_are_checked(setup):
    loaded, norm = setup
    with pytest.raises(ValueError, match="plans must be one of"):
        calibrate_on_simtask(loaded.policy.model, norm.state, norm.action, _tokenize, 1, progress=False, plans="oracle")
    with pytest.raises(ValueError, match="unnormalize_action"):  # a normaliser that cannot be inverted
        calibrate_on_simtask(loaded.policy.model, norm.state, lambda a: np.tanh(a), _tokenize, 1, progress=False)
    expert = calibrate_on_simtask(loaded.policy.model, norm.state, norm.action, _tokenize, 2, progress=False,
                                  plans="expert", horizon=HORIZON)
    assert expert["plans"] == "expert" and "scripted-expert" in expert["source"]


def test_without_unnormalize_the_affine_inverse_of_the_normaliser_is_used(setup):
    from export.graphs.gate_calibration import affine_inverse

    loaded, norm = setup
    inverse = affine_inverse(norm.action, 2)
    row = np.zeros(norm.max_action, dtype=np.float32)
    row[:2] = [0.5, -1.5]
    np.testing.assert_allclose(inverse(row), norm.action_raw(row), rtol=1e-6)
    a = calibrate_on_simtask(loaded.policy.model, norm.state, norm.action, _tokenize, 2, progress=False,
                             horizon=HORIZON)
    b = calibrate_on_simtask(loaded.policy.model, norm.state, norm.action, _tokenize, 2, progress=False,
                             horizon=HORIZON, unnormalize_action=norm.action_raw)
    assert a["consistency"]["stats"] == pytest.approx(b["consistency"]["stats"], rel=1e-4)


def test_action_raw_is_the_runtimes_unnormalisation(setup):
    """The calibration drives the simulator with the same raw actions the runtime would send (its own code)."""
    from runtime.manifest import NormStats
    from runtime.preprocess import ActionUnnormalizer

    loaded, norm = setup
    act = loaded.stats["action"]
    runtime = ActionUnnormalizer(NormStats("mean_std", act["mean"], act["std"], None, None, 1e-8), 2)
    rows = np.random.default_rng(0).normal(size=(5, norm.max_action)).astype(np.float32)
    np.testing.assert_allclose(norm.action_raw(rows), runtime(rows), rtol=1e-6)
    np.testing.assert_allclose(norm.action(norm.action_raw(rows)), rows[:, :2], rtol=1e-4, atol=1e-5)
    cfg = loaded.policy.config  # a MIN_MAX checkpoint: calibration unnormalises as the runtime's min_max
    minmax = Normalizer(loaded.stats, "observation.state", cfg.max_state_dim, cfg.max_action_dim,
                        {"observation.state": "identity", "action": "min_max"})
    runtime = ActionUnnormalizer(NormStats("min_max", None, None, act["min"], act["max"], 1e-8), 2)
    np.testing.assert_allclose(minmax.action_raw(rows), runtime(rows), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(minmax.action(minmax.action_raw(rows)), rows[:, :2], rtol=1e-4, atol=1e-5)
    assert np.array_equal(minmax.state(np.array([0.3, 0.7]))[:3], np.array([0.3, 0.7, 0.0], np.float32))


def test_policy_rollouts_clip_into_the_manifest_bounds_as_the_runtime_guard(setup, monkeypatch):
    loaded, norm = setup
    sent: list[np.ndarray] = []
    step = ReachEnv.step
    monkeypatch.setattr(ReachEnv, "step", lambda self, a: (sent.append(np.asarray(a)), step(self, a))[1])
    low, high = np.array([-0.01, -0.02]), np.array([0.015, 0.01])  # tighter than the random model's actions
    calibrate_on_simtask(loaded.policy.model, norm.state, norm.action, _tokenize, 1, progress=False,
                         horizon=HORIZON, action_bounds=(low, high))
    a = np.stack(sent)
    assert np.all(a >= low - 1e-9) and np.all(a <= high + 1e-9)
    assert np.any(np.isclose(a, low) | np.isclose(a, high))  # the bounds really cut something


def test_the_default_gates_cap_sets_the_calibration_horizon():
    """`any:…,interval:k` lets the CLS part decide only while fewer than k actions of a plan ran: calibrate there."""
    from export.graphs.gate_calibration import capped_horizon

    assert capped_horizon("auto", "auto", 10) == 5  # auto cap round(0.5 n)
    assert capped_horizon("auto", "0", 10) == 10  # no cap: the whole chunk
    assert capped_horizon("auto", "4", 10) == 4 and capped_horizon("auto", "1", 10) == 2  # at least 2
    assert capped_horizon("any:drift,interval:3", "auto", 10) == 3  # the spec's own cap
    assert capped_horizon("consistency", "8", 10) == 8 and capped_horizon("auto", "auto", 25) == 13


def test_a_degenerate_cls_output_in_calibration_is_one_line_naming_the_cause():
    from export.graphs.checkpoint_loading import ExportInputError
    from export.graphs.gate_calibration import cosine_distance

    ok = np.ones((1, 2, 4))
    with pytest.raises(ExportInputError, match="degenerate CLS embedding.*--no-calibration"):
        cosine_distance(np.zeros((1, 2, 4)), ok)
    assert cosine_distance(ok, ok) == pytest.approx(0.0, abs=1e-12)
