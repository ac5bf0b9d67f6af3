"""Load what the export needs — a trained checkpoint (lerobot layout) or an offline preset with random
weights — refusing anything else with one clear line (`ExportInputError`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class ExportInputError(RuntimeError):
    """The export cannot start: the message says what is wrong and how to fix it."""


@dataclass
class LoadedPolicy:
    policy: object  # SmolVLACLSPolicy
    source: str  # checkpoint path or "preset:<name>"
    preset: str | None
    stats: dict[str, dict[str, np.ndarray]]  # normalisation stats per feature
    norm_map: dict[str, str] | None = None  # feature type -> lerobot mode of the saved normaliser (None: config's)
    norm_eps: float = 1e-8  # the saved normaliser's eps


def _processor_step(checkpoint: Path, pipeline: str, registry_name: str) -> dict | None:
    """The step `registry_name` of the saved `<pipeline>.json` (None when the file or the step is absent)."""
    path = checkpoint / f"{pipeline}.json"
    if not path.is_file():
        return None
    try:
        steps = json.loads(path.read_text()).get("steps") or []
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ExportInputError(f"{path} is not a lerobot processor file ({exc})") from None
    return next((st for st in steps if isinstance(st, dict) and st.get("registry_name") == registry_name), None)


def _normalizer(checkpoint: Path) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, str] | None, float]:
    """Stats, norm_map and eps of lerobot's saved normaliser step (the exact numbers and modes training used);
    the postprocessor's unnormaliser must agree on the action's mode (it is what lerobot deploys)."""
    from safetensors.numpy import load_file

    step = _processor_step(checkpoint, "policy_preprocessor", "normalizer_processor")
    files = [checkpoint / step["state_file"]] if step and step.get("state_file") else sorted(
        checkpoint.glob("policy_preprocessor_step_*_normalizer_processor.safetensors"))
    if not files or not files[0].is_file():
        raise ExportInputError(f"{checkpoint}: no policy_preprocessor normaliser stats (not a lerobot training checkpoint?)")
    flat = load_file(str(files[0]))
    stats: dict[str, dict[str, np.ndarray]] = {}
    for key, value in flat.items():
        feature, _, stat = key.rpartition(".")
        stats.setdefault(feature, {})[stat] = value.astype(np.float64)
    config = (step or {}).get("config") or {}
    norm_map = config.get("norm_map")
    post = (_processor_step(checkpoint, "policy_postprocessor", "unnormalizer_processor") or {}).get("config") or {}
    post_action = (post.get("norm_map") or {}).get("ACTION")
    if norm_map is not None and post_action is not None and post_action != norm_map.get("ACTION"):
        raise ExportInputError(f"{checkpoint}: 'action' is normalised with {norm_map.get('ACTION')} but unnormalised "
                               f"with {post_action} (policy_pre/postprocessor.json disagree): fix the checkpoint")
    return stats, norm_map, float(config.get("eps", 1e-8))


def load_checkpoint(checkpoint: Path) -> LoadedPolicy:
    checkpoint = Path(checkpoint)
    config_file = checkpoint / "config.json"
    if checkpoint.exists() and not checkpoint.is_dir():
        raise ExportInputError(f"checkpoint {checkpoint} is not a folder: pass --checkpoint a lerobot pretrained_model "
                               "folder (config.json + model.safetensors)")
    if not checkpoint.is_dir():
        raise ExportInputError(f"checkpoint {checkpoint} does not exist (train one with `make train`)")
    if not config_file.is_file() or not (checkpoint / "model.safetensors").is_file():
        raise ExportInputError(f"checkpoint {checkpoint} lacks config.json or model.safetensors")
    try:
        policy_type = json.loads(config_file.read_text()).get("type")
    except json.JSONDecodeError as exc:
        raise ExportInputError(f"checkpoint {config_file} is not valid JSON ({exc.msg})") from exc
    if policy_type != "smolvla_cls":
        raise ExportInputError(f"checkpoint {checkpoint} is a {policy_type!r} policy; export needs 'smolvla_cls'")
    from smolvla_cls.configuration_smolvla_cls import SmolVLACLSConfig
    from smolvla_cls.lerobot_compat import unknown_config_fields
    from smolvla_cls.modeling_smolvla_cls import SmolVLACLSPolicy

    problem = unknown_config_fields(config_file, SmolVLACLSConfig)
    if problem:
        raise ExportInputError(problem)
    try:
        policy = SmolVLACLSPolicy.from_pretrained(str(checkpoint))
    except Exception as exc:  # corrupt safetensors, shape mismatch, ...
        raise ExportInputError(f"checkpoint {checkpoint} could not be loaded: {type(exc).__name__}: {exc}") from exc
    policy.eval()
    stats, norm_map, eps = _normalizer(checkpoint)
    return LoadedPolicy(policy, str(checkpoint), policy.config.vlm_preset, stats, norm_map, eps)


def load_preset(preset: str, seed: int = 0) -> LoadedPolicy:
    """A random-weight policy of the preset at real scale (full: 2 cameras 512², state/action 6, chunk 50)."""
    from lerobot.configs.types import FeatureType, PolicyFeature

    from smolvla_cls.configuration_smolvla_cls import SmolVLACLSConfig
    from smolvla_cls.modeling_smolvla_cls import SmolVLACLSPolicy
    from smolvla_cls.presets import _VISION, POLICY_OVERRIDES

    if preset not in POLICY_OVERRIDES:
        raise ExportInputError(f"--preset {preset!r}: expected one of {sorted(POLICY_OVERRIDES)}")
    size = _VISION[preset]["image_size"]
    cams, dim, chunk = (2, 6, 50) if preset == "full" else (1, 2, 10)
    inputs = {f"observation.images.cam{i}": PolicyFeature(FeatureType.VISUAL, (3, size, size)) for i in range(cams)}
    inputs["observation.state"] = PolicyFeature(FeatureType.STATE, (dim,))
    config = SmolVLACLSConfig(vlm_preset=preset, **POLICY_OVERRIDES[preset], input_features=inputs,
                              output_features={"action": PolicyFeature(FeatureType.ACTION, (dim,))},
                              chunk_size=chunk, n_action_steps=chunk, device="cpu", push_to_hub=False)
    torch.manual_seed(seed)
    policy = SmolVLACLSPolicy(config).eval()
    unit = {"mean": np.zeros(dim), "std": np.ones(dim), "min": -3 * np.ones(dim), "max": 3 * np.ones(dim)}
    return LoadedPolicy(policy, f"preset:{preset}", preset, {"observation.state": dict(unit), "action": dict(unit)})
