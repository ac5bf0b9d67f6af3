"""Every difference between the lerobot releases we support (0.4.4 and 0.6.x), in one place.

The rest of the code calls these helpers instead of testing versions itself. What moved (sources in
docs/12-lerobot-versions.md):
- training loop: `lerobot_train.make_dataset` (0.4.4) became `make_train_eval_datasets` returning
  (train, eval) (0.6); `TrainPipelineConfig.eval_freq` became `env_eval_freq`;
- `load_info` moved to `datasets.io_utils` and returns a `DatasetInfo` instead of a dict (0.6);
- dataset reading: `_query_hf_dataset`, `delta_indices` and the absolute->row index map live on the
  dataset (0.4.4) or on its `DatasetReader` (`dataset.reader`, 0.6);
- processor factory: 0.4.4 gives every `SmolVLAConfig` subclass SmolVLA's own pipelines (an isinstance chain),
  0.6 looks up `make_<type>_pre_post_processors` in the plugin's processor module by name;
- the prefix K/V cache contract of `SmolVLMWithExpertModel.forward` changed too, but we do not adapt to
  it: `smolvla_cls/layer_pass.py` computes the passes itself on every version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def train_config_kwargs(env_eval_every: int) -> dict[str, int]:
    """The simulation-evaluation period keyword of `TrainPipelineConfig` (`eval_freq` / `env_eval_freq`)."""
    from lerobot.configs.train import TrainPipelineConfig

    names = {f.name for f in dataclasses.fields(TrainPipelineConfig)}
    for name in ("env_eval_freq", "eval_freq"):
        if name in names:
            return {name: env_eval_every}
    raise RuntimeError("lerobot TrainPipelineConfig has neither env_eval_freq nor eval_freq: unsupported release")


@contextlib.contextmanager
def datasets_transformed(lerobot_train: Any, transform: Callable[[Any], Any]) -> Iterator[None]:
    """While active, the dataset lerobot's training loop trains on passes through `transform` first
    (0.4.4: `make_dataset`; 0.6: the train half of `make_train_eval_datasets`: lerobot builds the eval half
    without image transforms, and it must not see our augmentation either)."""
    if hasattr(lerobot_train, "make_train_eval_datasets"):
        name = "make_train_eval_datasets"
        original = lerobot_train.make_train_eval_datasets

        def patched(cfg):  # type: ignore[no-untyped-def]
            train, evaluation = original(cfg)
            return transform(train), evaluation
    elif hasattr(lerobot_train, "make_dataset"):
        name = "make_dataset"
        original = lerobot_train.make_dataset

        def patched(cfg):  # type: ignore[no-untyped-def]
            return transform(original(cfg))
    else:
        raise RuntimeError("lerobot_train has neither make_train_eval_datasets nor make_dataset: unsupported release")
    setattr(lerobot_train, name, patched)
    try:
        yield
    finally:
        setattr(lerobot_train, name, original)


def dataset_reader(dataset: Any) -> Any:
    """The object that owns `_query_hf_dataset`, `delta_indices` and `_absolute_to_relative_idx`, with
    its hf_dataset loaded: the dataset itself (0.4.4) or its `DatasetReader` (0.6)."""
    if hasattr(dataset, "_ensure_reader"):  # 0.6
        dataset.hf_dataset  # noqa: B018  (the property loads the reader's table)
        return dataset._ensure_reader()
    dataset._ensure_hf_dataset_loaded()
    return dataset


def dataset_info(root: Path) -> dict:
    """A dataset's meta/info.json read by lerobot, as a dict (0.4.4 returns one; 0.6 a `DatasetInfo`)."""
    try:
        from lerobot.datasets.io_utils import load_info  # 0.6
    except ImportError:
        from lerobot.datasets.utils import load_info  # 0.4.4
    info = load_info(Path(root))
    return info if isinstance(info, dict) else info.to_dict()


def unknown_config_fields(config_file: Path, config_cls: type) -> str | None:
    """One line naming the fields of a saved `config.json` of `config_cls`'s type that the class lacks under this
    lerobot (a checkpoint saved by a newer lerobot or smolvla_cls), else None. lerobot's parser would refuse
    the whole file from deep inside draccus instead."""
    import lerobot

    try:
        saved = json.loads(Path(config_file).read_text())
    except (OSError, ValueError):
        return None  # unreadable: the caller's own parse reports it
    if not isinstance(saved, dict) or saved.get("type") != config_cls.get_choice_name(config_cls):
        return None  # another policy type: the caller names it
    unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(config_cls)} - {"type"})
    if not unknown:
        return None
    return (f"{config_file}: field(s) {', '.join(unknown)} unknown to {config_cls.__name__} under lerobot "
            f"{lerobot.__version__}: the checkpoint was saved by another lerobot or smolvla_cls release; load it "
            "with that release, or remove the field(s) if their defaults are what was trained")


def route_smolvla_processors(config_cls: type, factory: Callable[..., Any]) -> Callable[..., Any]:
    """Make lerobot build `config_cls`'s pre/post processors with `factory` on every release, and return SmolVLA's
    own factory for `factory` to call. 0.6 finds `factory` by name already; 0.4.4 calls
    `processor_smolvla.make_smolvla_pre_post_processors` for any SmolVLAConfig subclass, so there that name is
    wrapped to send `config_cls` instances (only) to `factory`. Idempotent."""
    from lerobot.policies.smolvla import processor_smolvla

    current = processor_smolvla.make_smolvla_pre_post_processors
    original = getattr(current, "smolvla_original", current)

    def routed(config, dataset_stats=None, **kwargs):  # type: ignore[no-untyped-def]
        if isinstance(config, config_cls):
            return factory(config, dataset_stats=dataset_stats, **kwargs)
        return original(config, dataset_stats=dataset_stats, **kwargs)

    routed.smolvla_original = original  # type: ignore[attr-defined]
    processor_smolvla.make_smolvla_pre_post_processors = routed
    return original
