"""The manifest's `normalization` section, and the export's own (de)normaliser, from the checkpoint's lerobot
normaliser: each feature's mode (MEAN_STD / MIN_MAX / IDENTITY, what the runtime implements) with its stats,
refused with `ExportInputError` naming the feature when the runtime could not apply it as training did."""

from __future__ import annotations

import numpy as np

from export.graphs.checkpoint_loading import ExportInputError, LoadedPolicy

NORM_EPS = 1e-8  # lerobot's normaliser default: mean_std (x - mean) / (std + eps); min_max eps for max == min
MODES = {"MEAN_STD": "mean_std", "MIN_MAX": "min_max", "IDENTITY": "identity"}  # lerobot name -> manifest mode
NEEDS = {"mean_std": ("mean", "std"), "min_max": ("min", "max"), "identity": ()}
BOUND_STATS = ("min", "max")  # action_bounds / state_bounds come from these in every mode
FEATURE_TYPES = {"STATE": "observation.state", "ACTION": "action"}


def _name(value: object) -> str:
    """A lerobot FeatureType / NormalizationMode (enum or its JSON string) as its upper-case name."""
    return str(getattr(value, "value", value)).upper()


def feature_modes(loaded: LoadedPolicy, state_key: str = "observation.state") -> dict[str, str]:
    """{state_key: mode, "action": mode} as the checkpoint's normaliser applied them (its saved norm_map, else
    the config's normalization_mapping; lerobot's default for an unmapped type is IDENTITY)."""
    cfg = loaded.policy.config
    mapping = {_name(k): _name(v) for k, v in (loaded.norm_map or cfg.normalization_mapping or {}).items()}
    visual = mapping.get("VISUAL", "IDENTITY")
    for camera in cfg.image_features:
        if visual != "IDENTITY" and camera in loaded.stats:  # lerobot skips a feature without stats
            raise ExportInputError(f"'{camera}': VISUAL normalisation {visual} cannot be exported (the graphs read "
                                   "pixels in [0, 1]); retrain with normalization_mapping VISUAL: IDENTITY")
    modes = {}
    for ftype, key in (("STATE", state_key), ("ACTION", "action")):
        name = mapping.get(ftype, "IDENTITY")
        if name not in MODES:
            raise ExportInputError(f"'{key}': normalisation {name} ({ftype}) is not implemented by the runtime "
                                   f"(it applies {', '.join(MODES)}); retrain with one of those")
        modes[key] = MODES[name]
    return modes


def check_stats(stats: dict, key: str, mode: str, dim: int) -> None:
    """Refuse stats the runtime would refuse or misapply: missing, wrong length, non-finite, std <= 0
    (mean_std), max <= min (min_max), min > max (bounds) — naming the feature, the stat and the dimension."""
    if key not in stats:
        raise ExportInputError(f"'{key}': the checkpoint's normaliser has no stats for it (mode {mode})")
    arrays = {}
    for stat in dict.fromkeys((*NEEDS[mode], *BOUND_STATS)):
        if stat not in stats[key]:
            raise ExportInputError(f"'{key}': the checkpoint's normaliser stats lack '{stat}' (needed for {mode} "
                                   "and the manifest's bounds)")
        arr = np.asarray(stats[key][stat], dtype=np.float64).reshape(-1)
        if arr.shape != (dim,):
            raise ExportInputError(f"'{key}': stat '{stat}' has {arr.size} values, the feature has {dim}")
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise ExportInputError(f"'{key}': stat '{stat}' of dimension {bad[0]} is {arr[bad[0]]}: recompute the "
                                   "dataset's stats (meta/stats.json) and retrain")
        arrays[stat] = arr
    hint = ("that dimension never varied in the training data; the runtime refuses such stats: record data where "
            "it moves, or drop it from the dataset, and retrain")
    if mode == "mean_std" and (bad := np.flatnonzero(arrays["std"] <= 0.0)).size:
        raise ExportInputError(f"'{key}': std of dimension {bad[0]} is {arrays['std'][bad[0]]} (mean_std needs "
                               f"std > 0): {hint}")
    if mode == "min_max" and (bad := np.flatnonzero(arrays["max"] <= arrays["min"])).size:
        raise ExportInputError(f"'{key}': max of dimension {bad[0]} ({arrays['max'][bad[0]]}) is not above min "
                               f"({arrays['min'][bad[0]]}) (min_max needs max > min): {hint}")
    if (bad := np.flatnonzero(arrays["max"] < arrays["min"])).size:
        raise ExportInputError(f"'{key}': max of dimension {bad[0]} is below min: the stats are corrupt")


def normalization_section(loaded: LoadedPolicy, state_key: str = "observation.state") -> dict:
    """The manifest's `normalization` entries, each checked with `check_stats`."""
    cfg = loaded.policy.config
    dims = {state_key: cfg.robot_state_feature.shape[0], "action": cfg.action_feature.shape[0]}
    section = {}
    for key, mode in feature_modes(loaded, state_key).items():
        check_stats(loaded.stats, key, mode, dims[key])
        entry: dict = {"mode": mode}
        entry.update({s: np.asarray(loaded.stats[key][s], dtype=np.float64).reshape(-1).tolist() for s in NEEDS[mode]})
        section[key] = {**entry, "eps": loaded.norm_eps}
    return section


class _Feature:
    """One feature's lerobot (un)normalisation in float64: normalise / unnormalise as training did."""

    def __init__(self, stats: dict, mode: str, eps: float):
        self.mode = mode

        def get(stat: str) -> np.ndarray:
            return np.asarray(stats[stat], dtype=np.float64).reshape(-1)

        if mode == "mean_std":
            self.mean, self.std, self.eps = get("mean"), get("std"), eps
        elif mode == "min_max":
            self.low = get("min")
            span = get("max") - self.low
            self.span = np.where(span == 0.0, eps, span)  # lerobot's guard

    def normalise(self, x: np.ndarray) -> np.ndarray:
        if self.mode == "mean_std":
            return (x - self.mean) / (self.std + self.eps)
        if self.mode == "min_max":
            return 2.0 * (x - self.low) / self.span - 1.0
        return np.asarray(x, dtype=np.float64)

    def unnormalise(self, y: np.ndarray) -> np.ndarray:
        if self.mode == "mean_std":  # lerobot: std alone, not std + eps
            return y * self.std + self.mean
        if self.mode == "min_max":
            return (y + 1.0) / 2.0 * self.span + self.low
        return np.asarray(y, dtype=np.float64)

    def scale(self, dim: int) -> np.ndarray:
        """Raw units per normalised unit (for errors in action units)."""
        if self.mode == "mean_std":
            return self.std
        return self.span / 2.0 if self.mode == "min_max" else np.ones(dim)


class Normalizer:
    """The checkpoint's state normalisation (zero-padded to max_state) and action (un)normalisation, per mode
    (default mean_std for both); what gate calibration feeds the model, as the runtime will."""

    def __init__(self, stats: dict, state_key: str, max_state: int, max_action: int, modes: dict | None = None,
                 eps: float = NORM_EPS):
        modes = modes or {state_key: "mean_std", "action": "mean_std"}
        self._state = _Feature(stats.get(state_key, {}), modes[state_key], eps)
        self._action = _Feature(stats.get("action", {}), modes["action"], eps)
        self.state_dim = len(np.asarray(stats[state_key]["min"]).reshape(-1))
        self.action_dim = len(np.asarray(stats["action"]["min"]).reshape(-1))
        self.max_state, self.max_action = max_state, max_action

    @classmethod
    def of(cls, loaded: LoadedPolicy, state_key: str = "observation.state") -> Normalizer:
        cfg = loaded.policy.config
        return cls(loaded.stats, state_key, cfg.max_state_dim, cfg.max_action_dim, feature_modes(loaded, state_key),
                   loaded.norm_eps)

    def state(self, raw: np.ndarray) -> np.ndarray:
        out = np.zeros(self.max_state, dtype=np.float32)
        out[: self.state_dim] = self._state.normalise(np.asarray(raw, dtype=np.float64))
        return out

    def action(self, raw: np.ndarray) -> np.ndarray:
        return self._action.normalise(np.asarray(raw, dtype=np.float64)).astype(np.float32)

    def action_raw(self, normalised: np.ndarray) -> np.ndarray:
        """One normalised row [max_action_dim] → raw action [action_dim], as the runtime unnormalises."""
        row = np.asarray(normalised, dtype=np.float64)[..., : self.action_dim]
        return self._action.unnormalise(row).astype(np.float32)

    @property
    def action_scale(self) -> np.ndarray:
        """Raw action units per normalised unit, per dimension (parity errors in action units)."""
        return np.asarray(self._action.scale(self.action_dim), dtype=np.float64)
