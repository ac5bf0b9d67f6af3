"""Load, verify and expose the artifact folder's manifest.json (docs/10-artifact-contract.md, format 1).

The manifest is the runtime's only source of truth: dims, cameras, normalisation, bounds, gate
calibration and graph I/O specs. Loading refuses anything that does not match the contract (missing
key, wrong format version, a file whose SHA-256 differs) with a message naming what is wrong, so a
stale or damaged artifact folder never reaches the robot.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.fingerprint import sha256_file  # re-exported: one file-hash function for the contract

FORMAT_VERSION = 1
GRAPH_NAMES = ("prefix", "main_expert", "delta_expert")
REEXPORT_HINT = "re-export the artifacts with `make export`"

# dims the runtime reads; each must be a positive int except delta_time (a float)
_INT_DIMS = (
    "chunk_size", "n_action_steps", "num_steps", "action_dim", "state_dim", "max_action_dim",
    "max_state_dim", "lang_len", "prefix_len", "num_layers", "kv_heads", "head_dim",
    "num_cls_prefix", "num_cls_suffix", "cls_dim",
)
_DTYPES = {"float32": np.float32, "int64": np.int64, "bool": np.bool_, "int32": np.int32, "float16": np.float16}


class ManifestError(ValueError):
    """The artifact folder does not match the contract; the message names the key or file."""


@dataclass(frozen=True)
class Dims:
    chunk_size: int
    n_action_steps: int
    num_steps: int
    action_dim: int
    state_dim: int
    max_action_dim: int
    max_state_dim: int
    lang_len: int
    prefix_len: int
    num_layers: int
    kv_heads: int
    head_dim: int
    num_cls_prefix: int
    num_cls_suffix: int
    cls_dim: int
    delta_time: float


@dataclass(frozen=True)
class CameraSpec:
    key: str
    height: int
    width: int
    channels: int


@dataclass(frozen=True)
class ImageSpec:
    """Model-side image size and the keep-aspect/pad rule the graphs were exported with."""

    height: int
    width: int
    resize: str
    pad_side: str
    pad_value: float


@dataclass(frozen=True)
class NormStats:
    """Per-feature normalisation; arrays cover the real (unpadded) feature dims."""

    mode: str  # "mean_std" | "min_max" | "identity"
    mean: np.ndarray | None
    std: np.ndarray | None
    min: np.ndarray | None
    max: np.ndarray | None
    eps: float


@dataclass(frozen=True)
class Bounds:
    low: np.ndarray
    high: np.ndarray


@dataclass(frozen=True)
class TokenizerSpec:
    file: str
    max_length: int
    pad_token_id: int
    padding_side: str
    append_newline: bool
    truncation: bool


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def np_dtype(self) -> type:
        return _DTYPES[self.dtype]


@dataclass(frozen=True)
class GraphSpec:
    name: str
    file: str
    data_file: str | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        return next(s for s in self.inputs if s.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(s for s in self.outputs if s.name == name)


@dataclass(frozen=True)
class GateCalibration:
    """Distance statistics measured at export time; default_threshold may be None (not calibrated)."""

    stats: Mapping[str, float]
    default_threshold: float | None


# Contract I/O names per graph, in the contract's order.
CONTRACT_IO = {
    "prefix": (("images", "lang_tokens", "lang_mask", "state"), ("prefix_k", "prefix_v", "prefix_pad", "obs_cls")),
    "main_expert": (("x_t", "t", "prefix_k", "prefix_v", "prefix_pad"), ("v_t",)),
    "delta_expert": (("actions", "prefix_k", "prefix_v", "prefix_pad"), ("delta", "act_cls")),
}


def _require(d: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(d, Mapping):
        raise ManifestError(f"manifest: '{where}' must be an object; {REEXPORT_HINT}")
    if key not in d:
        path = f"{where}.{key}" if where else key
        raise ManifestError(f"manifest: missing required key '{path}'; {REEXPORT_HINT}")
    return d[key]


def _vector(value: Any, where: str, length: int) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"manifest: '{where}' must be a list of numbers ({exc})") from None
    if arr.shape != (length,):
        raise ManifestError(f"manifest: '{where}' must have {length} entries, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ManifestError(f"manifest: '{where}' contains non-finite values")
    return arr.astype(np.float32)


class Manifest:
    """A validated manifest.json plus the folder it came from. Construct with `Manifest.load(dir)`."""

    def __init__(self, raw: dict, root: Path):
        self.raw = raw
        self.root = root
        self._parse()

    @classmethod
    def load(cls, artifacts_dir: str | Path, verify_hashes: bool = True) -> Manifest:
        root = Path(artifacts_dir)
        path = root / "manifest.json"
        if not path.is_file():
            raise ManifestError(f"no manifest.json in '{root}'; {REEXPORT_HINT}")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ManifestError(f"manifest.json in '{root}' is not valid JSON ({exc}); {REEXPORT_HINT}") from None
        if not isinstance(raw, dict):
            raise ManifestError(f"manifest.json in '{root}' must be a JSON object; {REEXPORT_HINT}")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise ManifestError(
                f"manifest format_version is {version!r}, this runtime reads version {FORMAT_VERSION}; "
                f"{REEXPORT_HINT}"
            )
        manifest = cls(raw, root)
        if verify_hashes:
            manifest.verify_files()
        return manifest

    # ---------------------------------------------------------------- parsing
    def _parse(self) -> None:
        raw = self.raw
        d = _require(raw, "dims", "")
        vals = {}
        for k in _INT_DIMS:
            v = _require(d, k, "dims")
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ManifestError(f"manifest: 'dims.{k}' must be a positive integer, got {v!r}")
            vals[k] = v
        dt = _require(d, "delta_time", "dims")
        if not isinstance(dt, (int, float)) or isinstance(dt, bool):
            raise ManifestError(f"manifest: 'dims.delta_time' must be a number, got {dt!r}")
        self.dims = Dims(**vals, delta_time=float(dt))
        dims = self.dims
        if dims.action_dim > dims.max_action_dim:
            raise ManifestError("manifest: 'dims.action_dim' exceeds 'dims.max_action_dim'")
        if dims.state_dim > dims.max_state_dim:
            raise ManifestError("manifest: 'dims.state_dim' exceeds 'dims.max_state_dim'")
        if dims.n_action_steps > dims.chunk_size:
            raise ManifestError("manifest: 'dims.n_action_steps' exceeds 'dims.chunk_size'")

        cams = _require(raw, "cameras", "")
        if not isinstance(cams, list) or not cams:
            raise ManifestError("manifest: 'cameras' must be a non-empty list")
        self.cameras = tuple(
            CameraSpec(
                key=str(_require(c, "key", f"cameras[{i}]")),
                height=int(_require(c, "height", f"cameras[{i}]")),
                width=int(_require(c, "width", f"cameras[{i}]")),
                channels=int(_require(c, "channels", f"cameras[{i}]")),
            )
            for i, c in enumerate(cams)
        )
        for cam in self.cameras:
            if cam.channels != 3:
                raise ManifestError(f"manifest: camera '{cam.key}' has {cam.channels} channels; only 3 (RGB) is supported")
        self.state_key = str(_require(raw, "state_key", ""))

        ip = _require(raw, "image_preprocess", "")
        self.image = ImageSpec(
            height=int(_require(ip, "height", "image_preprocess")),
            width=int(_require(ip, "width", "image_preprocess")),
            resize=str(_require(ip, "resize", "image_preprocess")),
            pad_side=str(_require(ip, "pad_side", "image_preprocess")),
            pad_value=float(_require(ip, "pad_value", "image_preprocess")),
        )
        if self.image.resize not in ("keep_aspect_pad", "none"):
            raise ManifestError(f"manifest: 'image_preprocess.resize' {self.image.resize!r} unsupported (keep_aspect_pad, none)")
        if self.image.pad_side not in ("left_top", "right_bottom"):
            raise ManifestError(f"manifest: 'image_preprocess.pad_side' {self.image.pad_side!r} unsupported (left_top, right_bottom)")

        norm = _require(raw, "normalization", "")
        self.state_norm = self._norm(_require(norm, self.state_key, "normalization"), f"normalization.{self.state_key}", dims.state_dim)
        self.action_norm = self._norm(_require(norm, "action", "normalization"), "normalization.action", dims.action_dim)

        ab = _require(raw, "action_bounds", "")
        self.action_bounds = Bounds(
            low=_vector(_require(ab, "low", "action_bounds"), "action_bounds.low", dims.action_dim),
            high=_vector(_require(ab, "high", "action_bounds"), "action_bounds.high", dims.action_dim),
        )
        if np.any(self.action_bounds.low > self.action_bounds.high):
            raise ManifestError("manifest: 'action_bounds.low' exceeds 'action_bounds.high'")
        sb = _require(raw, "state_bounds", "")
        self.state_bounds = Bounds(
            low=_vector(_require(sb, "low", "state_bounds"), "state_bounds.low", dims.state_dim),
            high=_vector(_require(sb, "high", "state_bounds"), "state_bounds.high", dims.state_dim),
        )
        # optional: a designated safe "stop" action in raw units (e.g. zero velocity); default zeros
        safety = raw.get("safety") or {}
        stop = safety.get("stop_action") if isinstance(safety, Mapping) else None
        if stop is None:
            self.stop_action = None
        else:
            self.stop_action = _vector(stop, "safety.stop_action", dims.action_dim)
            if np.any(self.stop_action < self.action_bounds.low) or np.any(self.stop_action > self.action_bounds.high):
                raise ManifestError("manifest: 'safety.stop_action' lies outside 'action_bounds'")

        tk = _require(raw, "tokenizer", "")
        self.tokenizer = TokenizerSpec(
            file=str(_require(tk, "file", "tokenizer")),
            max_length=int(_require(tk, "max_length", "tokenizer")),
            pad_token_id=int(_require(tk, "pad_token_id", "tokenizer")),
            padding_side=str(tk.get("padding_side", "right")),
            append_newline=bool(_require(tk, "append_newline", "tokenizer")),
            truncation=bool(tk.get("truncation", False)),
        )
        if self.tokenizer.max_length != dims.lang_len:
            raise ManifestError("manifest: 'tokenizer.max_length' differs from 'dims.lang_len'")
        if self.tokenizer.padding_side not in ("right", "left"):
            raise ManifestError(f"manifest: 'tokenizer.padding_side' {self.tokenizer.padding_side!r} must be right or left")

        self.delta_input = str(_require(raw, "delta_input", ""))
        if self.delta_input != "shift_remaining_repeat_last":
            raise ManifestError(f"manifest: 'delta_input' {self.delta_input!r} unsupported (shift_remaining_repeat_last)")

        graphs = _require(raw, "graphs", "")
        self.graphs = {name: self._graph(name, _require(graphs, name, "graphs")) for name in GRAPH_NAMES}
        self._check_graph_shapes()

        gate = _require(raw, "gate", "")
        self.gate_calibration = {}
        for metric in ("drift", "consistency"):
            g = _require(gate, metric, "gate")
            thr = g.get("default_threshold") if isinstance(g, Mapping) else None
            if thr is not None and (not isinstance(thr, (int, float)) or not np.isfinite(thr)):
                raise ManifestError(f"manifest: 'gate.{metric}.default_threshold' must be a finite number or null")
            stats = g.get("stats") or {}
            self.gate_calibration[metric] = GateCalibration(
                stats={str(k): float(v) for k, v in stats.items() if isinstance(v, (int, float))},
                default_threshold=None if thr is None else float(thr),
            )

        files = _require(raw, "files", "")
        if not isinstance(files, Mapping) or not files:
            raise ManifestError("manifest: 'files' must be a non-empty object")
        for fname, entry in files.items():
            _require(entry, "sha256", f"files.{fname}")
        # every file the runtime opens must be hash-listed, or tampering would go unnoticed
        needed = [self.tokenizer.file] + [g.file for g in self.graphs.values()]
        needed += [g.data_file for g in self.graphs.values() if g.data_file]
        for fname in needed:
            if fname not in files:
                raise ManifestError(f"manifest: file '{fname}' is used but not listed under 'files'; {REEXPORT_HINT}")
        self.files = {str(k): dict(v) for k, v in files.items()}

    @staticmethod
    def _norm(entry: Any, where: str, dim: int) -> NormStats:
        mode = str(_require(entry, "mode", where)).lower()
        eps = float(entry.get("eps", 1e-8))
        if mode == "mean_std":
            return NormStats(mode, _vector(_require(entry, "mean", where), f"{where}.mean", dim),
                             _vector(_require(entry, "std", where), f"{where}.std", dim), None, None, eps)
        if mode == "min_max":
            return NormStats(mode, None, None, _vector(_require(entry, "min", where), f"{where}.min", dim),
                             _vector(_require(entry, "max", where), f"{where}.max", dim), eps)
        if mode == "identity":
            return NormStats(mode, None, None, None, None, eps)
        raise ManifestError(f"manifest: '{where}.mode' {mode!r} unsupported (mean_std, min_max, identity)")

    @staticmethod
    def _graph(name: str, entry: Any) -> GraphSpec:
        where = f"graphs.{name}"

        def specs(kind: str) -> tuple[TensorSpec, ...]:
            out = []
            for i, s in enumerate(_require(entry, kind, where)):
                w = f"{where}.{kind}[{i}]"
                dtype = str(_require(s, "dtype", w))
                if dtype not in _DTYPES:
                    raise ManifestError(f"manifest: '{w}.dtype' {dtype!r} unsupported ({', '.join(_DTYPES)})")
                shape = _require(s, "shape", w)
                if not isinstance(shape, list) or not all(isinstance(x, int) and x > 0 for x in shape):
                    raise ManifestError(f"manifest: '{w}.shape' must be a list of positive ints (static shapes), got {shape!r}")
                out.append(TensorSpec(str(_require(s, "name", w)), tuple(shape), dtype))
            return tuple(out)

        spec = GraphSpec(name, str(_require(entry, "file", where)), entry.get("data_file"), specs("inputs"), specs("outputs"))
        want_in, want_out = CONTRACT_IO[name]
        for kind, want, have in (("inputs", want_in, spec.inputs), ("outputs", want_out, spec.outputs)):
            names = tuple(s.name for s in have)
            if sorted(names) != sorted(want):
                raise ManifestError(f"manifest: '{where}.{kind}' names {list(names)} differ from the contract {list(want)}")
        return spec

    def _check_graph_shapes(self) -> None:
        """Cross-check graph shapes against dims so a graph/manifest mismatch fails at load, not mid-episode."""
        d = self.dims
        kv = (d.num_layers, 1, d.prefix_len, d.kv_heads, d.head_dim)
        plan = (1, d.chunk_size, d.max_action_dim)
        expect = {
            ("prefix", "images"): (1, len(self.cameras), 3, self.image.height, self.image.width),
            ("prefix", "lang_tokens"): (1, d.lang_len),
            ("prefix", "lang_mask"): (1, d.lang_len),
            ("prefix", "state"): (1, d.max_state_dim),
            ("prefix", "prefix_k"): kv, ("prefix", "prefix_v"): kv,
            ("prefix", "prefix_pad"): (1, d.prefix_len),
            ("prefix", "obs_cls"): (1, d.num_cls_prefix, d.cls_dim),
            ("main_expert", "x_t"): plan, ("main_expert", "t"): (1,), ("main_expert", "v_t"): plan,
            ("main_expert", "prefix_k"): kv, ("main_expert", "prefix_v"): kv,
            ("main_expert", "prefix_pad"): (1, d.prefix_len),
            ("delta_expert", "actions"): plan, ("delta_expert", "delta"): plan,
            ("delta_expert", "act_cls"): (1, d.num_cls_suffix, d.cls_dim),
            ("delta_expert", "prefix_k"): kv, ("delta_expert", "prefix_v"): kv,
            ("delta_expert", "prefix_pad"): (1, d.prefix_len),
        }
        dtypes = {"lang_tokens": "int64", "lang_mask": "bool", "prefix_pad": "bool"}
        for (graph, tensor), shape in expect.items():
            g = self.graphs[graph]
            spec = next(s for s in g.inputs + g.outputs if s.name == tensor)
            if spec.shape != shape:
                raise ManifestError(f"manifest: graphs.{graph} tensor '{tensor}' has shape {list(spec.shape)}, dims imply {list(shape)}")
            want = dtypes.get(tensor, "float32")
            if spec.dtype != want:
                raise ManifestError(f"manifest: graphs.{graph} tensor '{tensor}' has dtype {spec.dtype}, the contract says {want}")

    # ------------------------------------------------------------ integrity
    def verify_files(self) -> None:
        """SHA-256 (and size) of every listed file; a mismatch names the file and says to re-export."""
        for fname, entry in self.files.items():
            path = self.root / fname
            if not path.is_file():
                raise ManifestError(f"artifact file '{fname}' listed in the manifest is missing from '{self.root}'; {REEXPORT_HINT}")
            size = entry.get("bytes")
            if size is not None and path.stat().st_size != size:
                raise ManifestError(f"artifact file '{fname}' has {path.stat().st_size} bytes, the manifest says {size}: "
                                    f"the file is damaged or stale; {REEXPORT_HINT}")
            if sha256_file(path) != str(entry["sha256"]).lower():
                raise ManifestError(f"artifact file '{fname}' fails its SHA-256 check: the file is damaged or stale; {REEXPORT_HINT}")

    # ------------------------------------------------------------ accessors
    def path(self, fname: str) -> Path:
        return self.root / fname

    def graph_path(self, name: str) -> Path:
        return self.root / self.graphs[name].file

    @property
    def tokenizer_path(self) -> Path:
        return self.root / self.tokenizer.file

    @property
    def camera_keys(self) -> tuple[str, ...]:
        return tuple(c.key for c in self.cameras)

    @property
    def plan_shape(self) -> tuple[int, int, int]:
        return (1, self.dims.chunk_size, self.dims.max_action_dim)

    def gate_threshold(self, metric: str) -> float | None:
        return self.gate_calibration[metric].default_threshold
