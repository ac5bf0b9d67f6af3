"""Pre/post processors of `smolvla_cls`: SmolVLA's (rename, batch, newline, tokenizer, device, normaliser /
unnormaliser), found by lerobot's plugin lookup under this name (0.6) or routed here (0.4.4, `lerobot_compat`).
With an offline VLM preset the tokenizer step saves the preset's name, not this machine's cache path, so a
checkpoint loads on any machine."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lerobot.processor import ProcessorStepRegistry
from lerobot.processor.tokenizer_processor import TokenizerProcessorStep

from smolvla_cls.configuration_smolvla_cls import SmolVLACLSConfig
from smolvla_cls.lerobot_compat import route_smolvla_processors
from smolvla_cls.presets import materialize_preset, preset_dir

PRESET_TOKENIZER = "smolvla_cls_preset_tokenizer"


def _register_step(name: str) -> Any:
    """lerobot's registration decorator, that replaces this module's own earlier class under `name` (a reloaded
    module: lerobot refused it as "already registered") and still refuses another package's step of that name."""
    def decorator(step_class: type) -> type:
        if name in ProcessorStepRegistry.list():
            earlier = ProcessorStepRegistry.get(name)
            if (earlier.__module__, earlier.__qualname__) == (step_class.__module__, step_class.__qualname__):
                ProcessorStepRegistry.unregister(name)
        return ProcessorStepRegistry.register(name=name)(step_class)
    return decorator


@dataclass
@_register_step(PRESET_TOKENIZER)
class PresetTokenizerProcessorStep(TokenizerProcessorStep):
    """lerobot's tokenizer step over an offline VLM preset: saved as the preset's name (`vlm_preset`), loaded from
    wherever this machine keeps that preset (lerobot's own step saved the training machine's absolute path)."""

    vlm_preset: str | None = None

    def __post_init__(self) -> None:
        if self.vlm_preset is not None:
            self.tokenizer_name = str(materialize_preset(self.vlm_preset))
        super().__post_init__()

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        if self.vlm_preset is not None:
            config.pop("tokenizer_name", None)  # a path on the machine that saved it: found again from the preset
            config["vlm_preset"] = self.vlm_preset
        return config


def make_smolvla_cls_pre_post_processors(config, dataset_stats=None):
    """SmolVLA's pipelines; with `config.vlm_preset` its tokenizer step becomes `PresetTokenizerProcessorStep`."""
    pre, post = _smolvla_pre_post_processors(config, dataset_stats=dataset_stats)
    if config.vlm_preset is not None:
        pre.steps = [PresetTokenizerProcessorStep(
            vlm_preset=config.vlm_preset, max_length=step.max_length, task_key=step.task_key,
            padding_side=step.padding_side, padding=step.padding, truncation=step.truncation)
            if type(step) is TokenizerProcessorStep else step for step in pre.steps]
    return pre, post


_smolvla_pre_post_processors = route_smolvla_processors(SmolVLACLSConfig, make_smolvla_cls_pre_post_processors)


def preset_tokenizer_overrides(checkpoint_dir: Path, vlm_preset: str | None) -> dict[str, dict[str, str]]:
    """Processor overrides for a checkpoint saved before `PresetTokenizerProcessorStep`: lerobot's tokenizer step
    with the training machine's preset path, absent here, pointed at this machine's folder of the same preset
    (same name and digest, so the same vocabulary). Empty when nothing needs it."""
    if vlm_preset is None:
        return {}
    try:
        steps = json.loads((Path(checkpoint_dir) / "policy_preprocessor.json").read_text()).get("steps") or []
    except (OSError, ValueError, AttributeError):
        return {}  # lerobot's loader reports an unreadable file itself
    for step in steps:
        name = ((step or {}).get("config") or {}).get("tokenizer_name") if isinstance(step, dict) else None
        if step.get("registry_name") == "tokenizer_processor" and isinstance(name, str) and not Path(name).is_dir() \
                and Path(name).name == preset_dir(vlm_preset).name:
            return {"tokenizer_processor": {"tokenizer_name": str(materialize_preset(vlm_preset))}}
    return {}
