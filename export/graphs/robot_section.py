"""The manifest's optional `robot` section, read from the LeRobotDataset the policy was trained on:
fps, motor names of the action and the state, camera keys and sizes. The runtime maps a robot's
`get_observation()` dict onto the graphs with it and sends named motor values (runtime.robot_interface).
The dataset is `--dataset-root`, else the `dataset.root` in the checkpoint's train_config.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from export.graphs.checkpoint_loading import ExportInputError

IMAGES_PREFIX = "observation.images."


def training_cwd(checkpoint: Path, output_dir: str | None) -> Path | None:
    """The directory lerobot-train ran in, when knowable: the checkpoint lies at
    `<cwd>/<output_dir>/checkpoints/<step>/pretrained_model` for a relative `output_dir` (the path as given, or
    with symlinks such as `checkpoints -> stage_delta/checkpoints` resolved). None when it cannot be told."""
    rel = Path(output_dir) if output_dir else None
    if rel is None or rel.is_absolute() or ".." in rel.parts:
        return None
    for path in (Path(checkpoint).absolute(), Path(checkpoint).resolve()):
        run = path.parent.parent.parent  # pretrained_model -> <step> -> checkpoints -> run folder
        if path.name != "pretrained_model" or path.parent.parent.name != "checkpoints":
            continue
        if run.parts[-len(rel.parts):] == rel.parts:
            return Path(*run.parts[: -len(rel.parts)])
    return None


def dataset_root_from_checkpoint(checkpoint: Path | None) -> Path | None:
    """`dataset.root` from lerobot's train_config.json next to the weights, if that dataset is here (else None:
    the export then has no robot section, and says so). A relative root is resolved against the directory
    training ran in (`training_cwd`) when that is knowable, else against this one; either way the resolved
    path is printed."""
    if checkpoint is None or not (Path(checkpoint) / "train_config.json").is_file():
        return None
    train = json.loads((Path(checkpoint) / "train_config.json").read_text())
    root = (train.get("dataset") or {}).get("root")
    if not root:
        return None
    path, base = Path(root), "as recorded"
    if not path.is_absolute():
        cwd = training_cwd(Path(checkpoint), train.get("output_dir"))
        path, base = ((cwd / path, "against the training directory") if cwd is not None else
                      (Path.cwd() / path, "against this directory (the training directory is unknown)"))
    if not (path / "meta" / "info.json").is_file():
        print(f"[export] train_config's dataset '{root}' ({path}, {base}) is not here: no robot section "
              "(pass --dataset-root)", file=sys.stderr)
        return None
    print(f"[export] robot section from train_config's dataset '{root}': {path} ({base})", file=sys.stderr)
    return path


def robot_section(dataset_root: Path, action_dim: int, state_dim: int, camera_keys: list[str],
                  state_key: str = "observation.state") -> dict:
    """{"fps", "action_names", "state_names", "cameras"} from the dataset's meta/info.json (via lerobot)."""
    from smolvla_cls.lerobot_compat import dataset_info

    if not (Path(dataset_root) / "meta" / "info.json").is_file():
        raise ExportInputError(f"--dataset-root: no LeRobotDataset (meta/info.json) under '{dataset_root}'")
    info = dataset_info(Path(dataset_root))
    feats = info["features"]

    def names(key: str, dim: int) -> list[str]:
        ft = feats.get(key)
        got = list(ft.get("names") or []) if ft else []
        if len(got) != dim or not all(isinstance(n, str) for n in got):
            raise ExportInputError(f"dataset '{dataset_root}': feature '{key}' needs {dim} names, has {got!r}")
        return got

    cams = {}
    for key in camera_keys:
        ft = feats.get(key)
        if ft is None or len(ft["shape"]) != 3:
            raise ExportInputError(f"dataset '{dataset_root}': camera '{key}' missing or not HxWxC")
        h, w, c = (int(v) for v in ft["shape"])
        if c != 3:  # the policy's graphs read RGB; a grayscale / RGBA robot camera could never be served
            raise ExportInputError(f"dataset '{dataset_root}': camera '{key}' has {c} channels, the policy reads RGB (3)")
        cams[key] = {"height": h, "width": w, "channels": c}
    return {"fps": info["fps"], "action_names": names("action", action_dim), "state_names": names(state_key, state_dim),
            "cameras": cams}
