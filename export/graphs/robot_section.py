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


def dataset_root_from_checkpoint(checkpoint: Path | None) -> Path | None:
    """`dataset.root` from lerobot's train_config.json next to the weights, if that dataset is here (else None:
    the export then has no robot section, and says so)."""
    if checkpoint is None or not (Path(checkpoint) / "train_config.json").is_file():
        return None
    root = (json.loads((Path(checkpoint) / "train_config.json").read_text()).get("dataset") or {}).get("root")
    if not root:
        return None
    if not (Path(root) / "meta" / "info.json").is_file():
        print(f"[export] train_config's dataset '{root}' is not here: no robot section (pass --dataset-root)",
              file=sys.stderr)
        return None
    return Path(root)


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
