"""Export normalisation follows the checkpoint's lerobot normaliser: each feature's mode (MEAN_STD / MIN_MAX /
IDENTITY) reaches the manifest, the runtime then (un)normalises exactly as lerobot's pre/postprocessor did;
modes the runtime cannot apply and unusable stats (non-finite, std <= 0, max <= min) are refused by name."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.processor import NormalizerProcessorStep, UnnormalizerProcessorStep
from lerobot.processor.converters import create_transition
from lerobot.processor.core import TransitionKey

from export.graphs.checkpoint_loading import ExportInputError, LoadedPolicy, load_checkpoint
from export.graphs.normalization import Normalizer, normalization_section
from runtime.manifest import Manifest
from runtime.preprocess import ActionUnnormalizer, StateNormalizer
from tests.fake_artifacts import cached_fake_artifacts, load_manifest_dict, write_manifest_dict
from tests.model_fixtures import tiny_config

STATE, ACTION = "observation.state", "action"
LEROBOT_MODES = ("MEAN_STD", "MIN_MAX", "IDENTITY")
FEATURES = {STATE: PolicyFeature(FeatureType.STATE, (2,)), ACTION: PolicyFeature(FeatureType.ACTION, (2,))}


@pytest.fixture(scope="module")
def config():
    return tiny_config(chunk=8)


def _stats(rng: np.random.Generator) -> dict:
    out = {}
    for key in (STATE, ACTION):
        mean = rng.uniform(-2, 2, 2)
        low, high = mean - rng.uniform(0.01, 3, 2), mean + rng.uniform(0.01, 3, 2)
        out[key] = {"mean": mean, "std": rng.uniform(0.01, 2, 2), "min": low, "max": high}
    return out


def _loaded(config, stats, state_mode="MEAN_STD", action_mode="MEAN_STD", visual="IDENTITY") -> LoadedPolicy:
    norm_map = {"VISUAL": visual, "STATE": state_mode, "ACTION": action_mode}
    return LoadedPolicy(SimpleNamespace(config=config), "test", "tiny", stats, norm_map)


def _runtime_manifest(section: dict, folder: Path) -> Manifest:
    raw = load_manifest_dict(folder)
    raw["normalization"] = section
    write_manifest_dict(folder, raw)
    return Manifest.load(folder)


@settings(max_examples=30, deadline=None)
@given(state_mode=st.sampled_from(LEROBOT_MODES), action_mode=st.sampled_from(LEROBOT_MODES),
       seed=st.integers(0, 2**31 - 1))
def test_runtime_matches_lerobots_processors_in_every_mode(config, state_mode, action_mode, seed):
    """The exported section, loaded by the runtime: its unnormalised actions are lerobot's postprocessor output
    for random model outputs, its normalised state the preprocessor's normaliser output."""
    rng = np.random.default_rng(seed)
    stats = _stats(rng)
    section = normalization_section(_loaded(config, stats, state_mode, action_mode))
    assert section[ACTION]["mode"] == action_mode.lower() and section[STATE]["mode"] == state_mode.lower()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(shutil.copytree(cached_fake_artifacts(), Path(tmp) / "a"))
        m = _runtime_manifest(section, folder)
    norm_map = {FeatureType.STATE: state_mode, FeatureType.ACTION: action_mode}
    outputs = rng.uniform(-1.5, 1.5, (5, m.dims.max_action_dim)).astype(np.float32)
    post = UnnormalizerProcessorStep(features={ACTION: FEATURES[ACTION]}, norm_map=norm_map, stats=stats)
    want = post(create_transition(action=torch.from_numpy(outputs[:, :2].copy())))[TransitionKey.ACTION].numpy()
    got = ActionUnnormalizer(m.action_norm, 2)(outputs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(Normalizer.of(_loaded(config, stats, state_mode, action_mode)).action_raw(outputs),
                               want, rtol=1e-5, atol=1e-5)  # what gate calibration executes
    raw_state = (stats[STATE]["mean"] + rng.normal(0, 1, 2)).astype(np.float32)
    pre = NormalizerProcessorStep(features={STATE: FEATURES[STATE]}, norm_map=norm_map, stats=stats)
    want_state = pre(create_transition(observation={STATE: torch.from_numpy(raw_state)}))[TransitionKey.OBSERVATION]
    got_state = StateNormalizer(m.state_norm, m.dims.max_state_dim)(raw_state)[0, :2]
    np.testing.assert_allclose(got_state, want_state[STATE].numpy(), rtol=1e-5, atol=1e-5)


def test_modes_come_from_the_saved_normaliser_else_the_config(config):
    stats = _stats(np.random.default_rng(0))
    assert normalization_section(LoadedPolicy(SimpleNamespace(config=config), "t", "tiny", stats))[ACTION]["mode"] \
        == "mean_std"  # lerobot's SmolVLA default normalization_mapping
    minmax = tiny_config(chunk=8, normalization_mapping={"VISUAL": "IDENTITY", "STATE": "MIN_MAX", "ACTION": "MIN_MAX"})
    section = normalization_section(LoadedPolicy(SimpleNamespace(config=minmax), "t", "tiny", stats))
    assert section[ACTION] == {"mode": "min_max", "min": stats[ACTION]["min"].tolist(),
                               "max": stats[ACTION]["max"].tolist(), "eps": 1e-8}
    only_action = LoadedPolicy(SimpleNamespace(config=config), "t", "tiny", stats, {"ACTION": "IDENTITY"})
    section = normalization_section(only_action)  # lerobot: a feature type missing from the map is IDENTITY
    assert section[STATE] == {"mode": "identity", "eps": 1e-8} and section[ACTION]["mode"] == "identity"


@pytest.mark.parametrize(("state_mode", "action_mode", "visual", "named"), [
    ("MEAN_STD", "QUANTILES", "IDENTITY", ACTION),
    ("QUANTILE10", "MEAN_STD", "IDENTITY", STATE),
    ("MEAN_STD", "MEAN_STD", "MEAN_STD", "observation.images.top"),
    ("MEAN_STD", "MEAN_STD", "MIN_MAX", "observation.images.top"),
])
def test_modes_the_runtime_cannot_apply_are_refused_by_feature(config, state_mode, action_mode, visual, named):
    stats = {**_stats(np.random.default_rng(1)), "observation.images.top": {"mean": np.zeros((3, 1, 1))}}
    with pytest.raises(ExportInputError, match=f"^'{named}'"):
        normalization_section(_loaded(config, stats, state_mode, action_mode, visual))


def test_visual_mode_without_camera_stats_is_identity_as_in_lerobot(config):
    normalization_section(_loaded(config, _stats(np.random.default_rng(2)), visual="MEAN_STD"))


CASES = [(key, mode, stat, dim, bad) for key in (STATE, ACTION) for mode in ("MEAN_STD", "MIN_MAX", "IDENTITY")
         for stat in dict.fromkeys({"MEAN_STD": ("mean", "std"), "MIN_MAX": (), "IDENTITY": ()}[mode] + ("min", "max"))
         for dim in (0, 1) for bad in (float("nan"), float("inf"), float("-inf"))]


@pytest.mark.parametrize(("key", "mode", "stat", "dim", "bad"), CASES)
def test_non_finite_stats_are_refused_naming_feature_stat_and_dimension(config, key, mode, stat, dim, bad):
    stats = _stats(np.random.default_rng(3))
    stats[key][stat][dim] = bad
    modes = {"state_mode": mode} if key == STATE else {"action_mode": mode}
    with pytest.raises(ExportInputError, match=f"^'{key}': stat '{stat}' of dimension {dim} is"):
        normalization_section(_loaded(config, stats, **modes))


@pytest.mark.parametrize("key", [STATE, ACTION])
@pytest.mark.parametrize("dim", [0, 1])
def test_unusable_spreads_are_refused_with_a_hint(config, key, dim):
    modes = (lambda mode: {"state_mode": mode} if key == STATE else {"action_mode": mode})
    for std in (0.0, -0.1):  # a motor that never moved: runtime would divide by ~1e-8
        stats = _stats(np.random.default_rng(4))
        stats[key]["std"][dim] = std
        with pytest.raises(ExportInputError, match=f"'{key}': std of dimension {dim}.*never varied"):
            normalization_section(_loaded(config, stats, **modes("MEAN_STD")))
    stats = _stats(np.random.default_rng(5))
    stats[key]["max"][dim] = stats[key]["min"][dim]
    with pytest.raises(ExportInputError, match=f"'{key}': max of dimension {dim}.*not above min"):
        normalization_section(_loaded(config, stats, **modes("MIN_MAX")))
    normalization_section(_loaded(config, stats, **modes("MEAN_STD")))  # max == min: fine for bounds
    stats[key]["max"][dim] = stats[key]["min"][dim] - 1.0
    with pytest.raises(ExportInputError, match=f"'{key}': max of dimension {dim} is below min"):
        normalization_section(_loaded(config, stats, **modes("IDENTITY")))


def test_missing_or_misshapen_stats_are_refused(config):
    stats = _stats(np.random.default_rng(6))
    del stats[ACTION]["std"]
    with pytest.raises(ExportInputError, match="'action': the checkpoint's normaliser stats lack 'std'"):
        normalization_section(_loaded(config, stats))
    normalization_section(_loaded(config, stats, action_mode="MIN_MAX"))  # std unused there
    stats[STATE]["mean"] = np.zeros(3)
    with pytest.raises(ExportInputError, match="'observation.state': stat 'mean' has 3 values"):
        normalization_section(_loaded(config, stats))
    with pytest.raises(ExportInputError, match="no stats for it"):
        normalization_section(_loaded(config, {ACTION: stats[ACTION]}, action_mode="MIN_MAX"))


# --- a real checkpoint folder (lerobot's saved processors), exported and run by the runtime ----------------------

@pytest.fixture(scope="module")
def minmax_checkpoint(tmp_path_factory):
    from lerobot.configs.types import NormalizationMode

    from smolvla_cls.processor_smolvla_cls import make_smolvla_cls_pre_post_processors
    from tests.model_fixtures import tiny_policy

    folder = tmp_path_factory.mktemp("ckpt") / "pretrained_model"
    policy = tiny_policy(chunk=8, normalization_mapping={"VISUAL": NormalizationMode.IDENTITY,
                                                         "STATE": NormalizationMode.IDENTITY,
                                                         "ACTION": NormalizationMode.MIN_MAX})
    stats = {STATE: {"mean": np.array([0.5, 0.5]), "std": np.array([0.2, 0.2]), "min": np.zeros(2), "max": np.ones(2)},
             ACTION: {"mean": np.array([0.0, 0.001]), "std": np.array([0.04, 0.03]),
                      "min": np.array([-0.06, -0.05]), "max": np.array([0.06, 0.07])}}
    policy.save_pretrained(folder)
    for pipeline in make_smolvla_cls_pre_post_processors(policy.config, dataset_stats=stats):
        pipeline.save_pretrained(folder)
    return folder


def test_min_max_checkpoint_exports_min_max_and_the_runtime_matches_lerobot(minmax_checkpoint, tmp_path):
    from lerobot.processor import PolicyProcessorPipeline
    from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action

    from export.graphs.onnx_export import export_artifacts
    from runtime.policy import EdgePolicy

    loaded = load_checkpoint(minmax_checkpoint)
    manifest = export_artifacts(loaded, tmp_path / "onnx", calibrate=False, progress=False)
    assert manifest["normalization"][ACTION]["mode"] == "min_max"
    assert manifest["normalization"][STATE] == {"mode": "identity", "eps": 1e-8}
    assert manifest["dims"]["vocab_size"] == 128  # the tiny VLM's embedding rows
    policy = EdgePolicy(tmp_path / "onnx", backend="onnxruntime")
    assert policy.manifest.tokenizer.vocab_size == 128
    post = PolicyProcessorPipeline.from_pretrained(minmax_checkpoint, config_filename="policy_postprocessor.json",
                                                   to_transition=policy_action_to_transition,
                                                   to_output=transition_to_policy_action)
    outputs = np.random.default_rng().uniform(-1.2, 1.2, (6, policy.manifest.dims.max_action_dim)).astype(np.float32)
    want = post(torch.from_numpy(outputs[:, :2].copy())).numpy()
    np.testing.assert_allclose(ActionUnnormalizer(policy.manifest.action_norm, 2)(outputs), want, rtol=1e-5, atol=1e-6)
    # what the mean_std export wrote before: visibly different actions
    assert not np.allclose(outputs[:, :2] * loaded.stats[ACTION]["std"] + loaded.stats[ACTION]["mean"], want, atol=1e-3)


def test_pre_and_postprocessor_disagreeing_on_the_action_is_refused(minmax_checkpoint, tmp_path):
    folder = Path(shutil.copytree(minmax_checkpoint, tmp_path / "pretrained_model"))
    post = json.loads((folder / "policy_postprocessor.json").read_text())
    post["steps"][0]["config"]["norm_map"]["ACTION"] = "MEAN_STD"
    (folder / "policy_postprocessor.json").write_text(json.dumps(post))
    with pytest.raises(ExportInputError, match="'action' is normalised with MIN_MAX but unnormalised with MEAN_STD"):
        load_checkpoint(folder)


def test_zero_std_checkpoint_is_refused_before_anything_is_written(minmax_checkpoint, tmp_path):
    from export.graphs.onnx_export import export_artifacts

    loaded = load_checkpoint(minmax_checkpoint)
    stats = {k: {s: np.array(v, dtype=np.float64) for s, v in d.items()} for k, d in loaded.stats.items()}
    stats[STATE]["std"][1] = 0.0
    zero = LoadedPolicy(loaded.policy, loaded.source, loaded.preset, stats, {"STATE": "MEAN_STD", "ACTION": "MIN_MAX"})
    with pytest.raises(ExportInputError, match="'observation.state': std of dimension 1"):
        export_artifacts(zero, tmp_path / "out", calibrate=False, progress=False)
    assert not (tmp_path / "out").exists()
