"""Load, verify and expose the artifact folder's manifest.json (docs/10-artifact-contract.md, format 3).

The manifest is the runtime's only source of truth: dims, cameras, normalisation, bounds, gate calibration and
graph I/O specs. Loading refuses anything that does not match the contract with one line naming the key path or
file: the schema (`runtime.manifest_schema`: types, ranges, sizes), the cross-field rules below (lengths and
graph shapes against dims), the identity digest and signature (`runtime.artifact_identity`), and path
confinement plus SHA-256 of every file (`runtime.artifact_files`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from runtime.artifact_files import ArtifactFileError, check_external_data, confined_path, verify_file
from runtime.artifact_identity import IdentityError, verify_identity
from runtime.default_gate import check_default_gate_fits
from runtime.fingerprint import sha256_file  # noqa: F401  re-exported: one file-hash function for the contract
from runtime.manifest_schema import FORMAT_VERSION, ManifestModel, NormModel, describe
from runtime.strict_json import strict_loads

GRAPH_NAMES = ("prefix", "main_expert", "delta_expert", "plan_encoder")
REEXPORT_HINT = "re-export the artifacts with `make export`"
TASK_KEY = "task"  # the observation key of the instruction (runtime.observation reads it)
MAX_MANIFEST_BYTES = 16 << 20  # a real manifest is ~100 KB; more is not a manifest
MAX_DEPTH = 32  # JSON nesting; the contract's own keys nest 5 deep
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
    vocab_size: int | None = None  # prefix graph's embedding rows: token ids must be below it (None: unrecorded)


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
    vocab_size: int | None = None  # dims.vocab_size: token ids must be below it (None: unrecorded)


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
    horizon: int | None = None  # pairs < horizon ticks apart; None: n_action_steps (exports before the field)


# Contract I/O names per graph, in the contract's order.
CONTRACT_IO = {
    "prefix": (("images", "lang_tokens", "lang_mask", "state"), ("prefix_k", "prefix_v", "prefix_pad", "obs_cls")),
    "main_expert": (("x_t", "t", "prefix_k", "prefix_v", "prefix_pad"), ("v_t",)),
    "delta_expert": (("actions", "prefix_k", "prefix_v", "prefix_pad"), ("delta", "act_cls")),
    "plan_encoder": (("plan", "plan_valid"), ("act_cls",)),
}


def _depth(value: Any) -> int:
    """Nesting depth of decoded JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(node, dict):
            stack += [(v, d + 1) for v in node.values()]
        elif isinstance(node, list):
            stack += [(v, d + 1) for v in node]
    return deepest


def read_manifest_json(path: Path) -> dict[str, Any]:
    """Decoded manifest.json, bounded in size and depth; ManifestError naming the file otherwise."""
    where = f"manifest.json in '{path.parent}'"
    with open(path, "rb") as fh:  # read once, bounded: a file growing after a size check cannot slip past it
        data = fh.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{where} has more than {MAX_MANIFEST_BYTES} bytes; {REEXPORT_HINT}")
    try:
        raw = strict_loads(data)
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{where} is not UTF-8 text (byte {exc.start}); {REEXPORT_HINT}") from None
    except RecursionError:
        raise ManifestError(f"{where} nests deeper than {MAX_DEPTH} levels; {REEXPORT_HINT}") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity constants, a key twice in one object
        raise ManifestError(f"{where} is not valid JSON ({str(exc)[:200]}); {REEXPORT_HINT}") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{where} must be a JSON object; {REEXPORT_HINT}")
    if _depth(raw) > MAX_DEPTH:
        raise ManifestError(f"{where} nests deeper than {MAX_DEPTH} levels; {REEXPORT_HINT}")
    return raw


def _vector(values: list[float], where: str, length: int) -> np.ndarray:
    if len(values) != length:
        raise ManifestError(f"manifest: '{where}' must have {length} entries, got {len(values)}")
    return np.asarray(values, dtype=np.float32)


def _check_version(raw: Mapping[str, Any]) -> None:
    version = raw.get("format_version")
    if version == 1:
        raise ManifestError(f"manifest format_version is 1 (no identity digest, no schema); this runtime reads "
                            f"version {FORMAT_VERSION} only: {REEXPORT_HINT} (or derive it again from a new export)")
    if version == 2:
        raise ManifestError(f"manifest format_version is 2 (no plan_encoder graph, no act_cls section: its "
                            f"consistency gate read act-CLS that sees the observation); this runtime reads version "
                            f"{FORMAT_VERSION} only: {REEXPORT_HINT}")
    if type(version) is int and version > FORMAT_VERSION:  # re-exporting with the same exporter cannot help
        raise ManifestError(f"manifest format_version is {str(version)[:40]}, newer than this runtime reads "
                            f"({FORMAT_VERSION}): update the runtime on the robot to the exporter's version, or "
                            f"export with a version that writes format {FORMAT_VERSION}")
    if type(version) is not int or version != FORMAT_VERSION:
        raise ManifestError(f"manifest format_version is {str(version)[:40]!r}, this runtime reads version "
                            f"{FORMAT_VERSION}; {REEXPORT_HINT}")


class Manifest:
    """A validated manifest.json plus the folder it came from. Construct with `Manifest.load(dir)`."""

    def __init__(self, raw: dict, root: Path):
        self.raw = raw
        self.root = root
        _check_version(raw)
        try:
            model = ManifestModel.model_validate(raw)
        except ValidationError as exc:
            raise ManifestError(f"manifest: {describe(exc)}; {REEXPORT_HINT}") from None
        self._parse(model)
        self.digest = model.identity.digest
        self.signed_by = model.identity.signature.key_id if model.identity.signature else None

    @classmethod
    def load(cls, artifacts_dir: str | Path, verify_hashes: bool = True, *, expected_digest: str | None = None,
             trusted_keys: Iterable[Any] = ()) -> Manifest:
        """Read, validate and verify a folder. `expected_digest` / `trusted_keys` pin which export is accepted."""
        root = Path(artifacts_dir)
        try:
            if not (root / "manifest.json").exists():
                raise ManifestError(f"no manifest.json in '{root}'; {REEXPORT_HINT}")
            raw = read_manifest_json(confined_path(root, "manifest.json"))
            manifest = cls(raw, root)
            manifest.digest = verify_identity(raw, expected_digest=expected_digest, trusted_keys=trusted_keys)
            for fname in manifest.files:
                confined_path(root, fname)
            if verify_hashes:
                manifest.verify_files()
        except (ArtifactFileError, IdentityError) as exc:
            raise ManifestError(str(exc)) from None
        except OSError as exc:  # unreadable file or folder (permissions, I/O error)
            access = (" (give the runtime's user read access: chmod -R a+rX on the folder)"
                      if isinstance(exc, PermissionError) else "")
            raise ManifestError(f"artifact file '{Path(exc.filename or '?').name}' in '{root}' cannot be read "
                                f"({exc.strerror}){access}") from None
        return manifest

    # ---------------------------------------------------------------- parsing
    def _parse(self, m: ManifestModel) -> None:
        d = m.dims
        self.dims = dims = Dims(**{f: getattr(d, f) for f in Dims.__dataclass_fields__})
        self.cameras = tuple(CameraSpec(c.key, c.height, c.width, c.channels) for c in m.cameras)
        if len(set(self.camera_keys)) != len(self.cameras):
            raise ManifestError("manifest: 'cameras' lists a key twice")
        self.state_key = m.state_key
        # one observation dict carries the cameras, the state and the instruction: a shared key could never be fed
        for where, key in [(f"cameras[{i}].key", k) for i, k in enumerate(self.camera_keys)] + [("state_key", m.state_key)]:
            clash = "the instruction's key" if key == TASK_KEY else "the action's key" if key == "action" else (
                "the state key" if where != "state_key" and key == m.state_key else None)
            if clash:
                raise ManifestError(f"manifest: '{where}' is {key!r}, {clash}: an observation could never carry both; "
                                    f"{REEXPORT_HINT}")
        ip = m.image_preprocess
        self.image = ImageSpec(ip.height, ip.width, ip.resize, ip.pad_side, ip.pad_value)
        for key in (self.state_key, "action"):
            if key not in m.normalization:
                raise ManifestError(f"manifest: missing required key 'normalization.{key}'; {REEXPORT_HINT}")
        self.state_norm = self._norm(m.normalization[self.state_key], f"normalization.{self.state_key}", dims.state_dim)
        self.action_norm = self._norm(m.normalization["action"], "normalization.action", dims.action_dim)
        self.action_bounds = Bounds(_vector(m.action_bounds.low, "action_bounds.low", dims.action_dim),
                                    _vector(m.action_bounds.high, "action_bounds.high", dims.action_dim))
        self.state_bounds = Bounds(_vector(m.state_bounds.low, "state_bounds.low", dims.state_dim),
                                   _vector(m.state_bounds.high, "state_bounds.high", dims.state_dim))
        stop = m.safety.stop_action if m.safety is not None else None
        self.stop_action = None if stop is None else _vector(stop, "safety.stop_action", dims.action_dim)
        if self.stop_action is not None and (np.any(self.stop_action < self.action_bounds.low)
                                             or np.any(self.stop_action > self.action_bounds.high)):
            raise ManifestError("manifest: 'safety.stop_action' lies outside 'action_bounds'")
        t = m.tokenizer
        self.tokenizer = TokenizerSpec(t.file, t.max_length, t.pad_token_id, t.padding_side, t.append_newline,
                                       t.truncation, dims.vocab_size)
        if t.max_length != dims.lang_len:
            raise ManifestError("manifest: 'tokenizer.max_length' differs from 'dims.lang_len'")
        if dims.vocab_size is not None and t.pad_token_id >= dims.vocab_size:
            raise ManifestError(f"manifest: 'tokenizer.pad_token_id' is not below 'dims.vocab_size'; {REEXPORT_HINT}")
        self.delta_input = m.delta_input
        self.act_cls_wiring = m.act_cls.wiring  # which graph feeds the consistency gate (seed | plan_only)
        self.graphs = {name: self._graph(name, getattr(m.graphs, name)) for name in GRAPH_NAMES}
        self._check_graph_shapes()
        self.gate_calibration = {
            metric: GateCalibration(stats=dict(g.stats), default_threshold=g.default_threshold,
                                    horizon=g.horizon)
            for metric, g in (("drift", m.gate.drift), ("consistency", m.gate.consistency), ("jump", m.gate.jump))
            if g is not None  # gate.jump is optional
        }
        for metric, cal in self.gate_calibration.items():  # pairs further apart than a plan runs cannot exist
            if cal.horizon is not None and cal.horizon > dims.n_action_steps:
                raise ManifestError(f"manifest: 'gate.{metric}.horizon' is {cal.horizon}, above 'dims.n_action_steps' "
                                    f"({dims.n_action_steps}): a plan runs at most that many ticks; {REEXPORT_HINT}")
        self.default_gate = m.gate.default or "drift"  # a gate spec; thresholds from gate_calibration
        try:  # the cap within the plan, jump with its calibration, a written default's thresholds (runtime.default_gate)
            check_default_gate_fits(self.default_gate, dims.n_action_steps, m.gate.jump is not None,
                                    None if m.gate.default is None else
                                    {k: c.default_threshold for k, c in self.gate_calibration.items()})
        except ValueError as exc:
            raise ManifestError(f"manifest: {exc}") from None
        self.files = {k: v.model_dump() for k, v in m.files.items()}
        # every file the runtime opens must be hash-listed, or tampering would go unnoticed
        needed = [t.file] + [g.file for g in self.graphs.values()] + [g.data_file for g in self.graphs.values()]
        for fname in filter(None, needed):
            if fname not in self.files:
                raise ManifestError(f"manifest: file '{fname}' is used but not listed under 'files'; {REEXPORT_HINT}")
        self.robot = m.robot
        if m.robot is not None:
            self._check_robot(m)

    def _check_robot(self, m: ManifestModel) -> None:
        r, d = m.robot, self.dims
        assert r is not None
        for key, names, dim in (("action_names", r.action_names, d.action_dim), ("state_names", r.state_names,
                                                                               d.state_dim)):
            if len(names) != dim:
                raise ManifestError(f"manifest: 'robot.{key}' has {len(names)} names, dims say {dim}")
            if len(set(names)) != len(names):
                raise ManifestError(f"manifest: 'robot.{key}' must list distinct names, got {names!r}")
        if set(r.cameras) != set(self.camera_keys):
            raise ManifestError(f"manifest: 'robot.cameras' keys {sorted(r.cameras)[:8]} differ from the "
                                f"cameras {list(self.camera_keys)}")

    @staticmethod
    def _norm(entry: NormModel, where: str, dim: int) -> NormStats:
        def vec(key: str) -> np.ndarray | None:
            values = getattr(entry, key)
            return None if values is None or entry.mode == "identity" else _vector(values, f"{where}.{key}", dim)

        return NormStats(entry.mode, vec("mean"), vec("std"), vec("min"), vec("max"), entry.eps)

    @staticmethod
    def _graph(name: str, entry: Any) -> GraphSpec:
        where = f"graphs.{name}"
        spec = GraphSpec(name, entry.file, entry.data_file,
                         tuple(TensorSpec(s.name, tuple(s.shape), s.dtype) for s in entry.inputs),
                         tuple(TensorSpec(s.name, tuple(s.shape), s.dtype) for s in entry.outputs))
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
            ("plan_encoder", "plan"): plan, ("plan_encoder", "plan_valid"): (1, d.chunk_size),
            ("plan_encoder", "act_cls"): (1, d.num_cls_suffix, d.cls_dim),
        }
        dtypes = {"lang_tokens": "int64", "lang_mask": "bool", "prefix_pad": "bool", "plan_valid": "bool"}
        for (graph, tensor), shape in expect.items():
            g = self.graphs[graph]
            spec = next(s for s in g.inputs + g.outputs if s.name == tensor)
            if spec.shape != shape:
                raise ManifestError(f"manifest: graphs.{graph} tensor '{tensor}' has shape {list(spec.shape)}, dims imply {list(shape)}")
            want = dtypes.get(tensor, "float32")
            if spec.dtype != want:
                raise ManifestError(f"manifest: graphs.{graph} tensor '{tensor}' has dtype {spec.dtype}, the contract says {want}")

    # ------------------------------------------------------------ integrity
    def verify_files(self, names: Iterable[str] | None = None) -> None:
        """Confinement, size and SHA-256 of the listed files (all by default) and each graph's external data.

        Called at load, and by a backend again after it opened the files (what ran is what was verified).
        """
        try:
            for fname in self.files if names is None else names:
                verify_file(self.root, fname, self.files[fname])
            for g in self.graphs.values():
                if names is None or g.file in names:
                    check_external_data(self.root, g.name, g.file, g.data_file)
        except ArtifactFileError as exc:
            raise ManifestError(str(exc)) from None

    # ------------------------------------------------------------ accessors
    def path(self, fname: str) -> Path:
        return self.root / fname

    def graph_path(self, name: str) -> Path:
        return self.root / self.graphs[name].file

    @property
    def graph_files(self) -> tuple[str, ...]:
        """Every graph and external-data file (what an ONNX backend opens)."""
        return tuple(f for g in self.graphs.values() for f in (g.file, g.data_file) if f)

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
        cal = self.gate_calibration.get(metric)  # gate.jump is optional
        return cal.default_threshold if cal is not None else None
