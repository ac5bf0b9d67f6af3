"""The manifest.json schema (format 3): types, ranges and sizes of every key the runtime reads, as pydantic models.

This module is the contract's source of truth: `python -m runtime.manifest_schema` prints the JSON Schema that
docs/manifest.schema.json holds (a test keeps the two equal). Cross-field rules that need several sections at
once (vector lengths against dims, graph shapes against dims) live in `runtime.manifest` (`Manifest._parse`).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from runtime.default_gate import FIELD as DEFAULT_GATE_FIELD
from runtime.default_gate import PATTERN as DEFAULT_GATE_PATTERN
from runtime.default_gate import check_default_gate

FORMAT_VERSION = 3  # 3: graphs.plan_encoder + act_cls section (act-CLS wiring); 2 had neither
MAX_NUM_STEPS = 1000  # Euler steps; the default task uses 10, SmolVLA 10: 1000 is already 100x a real tick
MAX_DIM = 4096  # any action/state/cls width beyond this is a broken manifest, not a robot
MAX_VECTOR = 4096
MAX_FILES = 256
MAX_TENSOR_ELEMENTS = 1 << 31  # ~8 GiB of float32 in one tensor: anything larger is an allocation attack

# A file the manifest names: a plain name directly inside the artifact folder (no '/', no '..', no leading
# dot, no absolute path, no backslash). Path confinement re-checks the resolved path (symlinks).
FileName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,199}$")]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Key = Annotated[str, StringConstraints(min_length=1, max_length=256)]
FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(float32).max: the runtime computes in float32
# finite and representable in float32: 1e39 is finite JSON but becomes inf in the runtime's arrays
def _fits_float32(value: float) -> float:
    if abs(value) > FLOAT32_MAX:
        raise ValueError(f"{value:g} is outside float32's range (±3.4e38): the runtime computes in float32")
    return value


def _float32_schema(schema: dict[str, Any]) -> None:
    """The float32 range in the JSON Schema, where a field has no tighter bound of its own."""
    schema.setdefault("minimum", -FLOAT32_MAX)
    schema.setdefault("maximum", FLOAT32_MAX)


Finite = Annotated[float, Field(allow_inf_nan=False, json_schema_extra=_float32_schema),
                   AfterValidator(_fits_float32)]
Vector = Annotated[list[Finite], Field(min_length=1, max_length=MAX_VECTOR)]


def _dim(upper: int) -> Any:
    return Field(ge=1, le=upper)


class _Closed(BaseModel):
    """Strict types (no "5" for 5, no true for 1), finite floats, unknown keys refused."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


class _Open(_Closed):
    """As _Closed, but keys the runtime does not read are kept (producers add descriptive keys)."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False, frozen=True)


class DimsModel(_Open):
    chunk_size: int = _dim(1024)
    n_action_steps: int = _dim(1024)
    num_steps: int = _dim(MAX_NUM_STEPS)
    action_dim: int = _dim(MAX_DIM)
    state_dim: int = _dim(MAX_DIM)
    max_action_dim: int = _dim(MAX_DIM)
    max_state_dim: int = _dim(MAX_DIM)
    lang_len: int = _dim(4096)
    prefix_len: int = _dim(65536)
    num_layers: int = _dim(512)
    kv_heads: int = _dim(1024)
    head_dim: int = _dim(4096)
    num_cls_prefix: int = _dim(256)
    num_cls_suffix: int = _dim(256)
    cls_dim: int = _dim(65536)
    delta_time: Finite = Field(ge=0.0, le=1.0)
    # optional (older producers omit it; older runtimes ignore it): rows of the prefix graph's token embedding;
    # an instruction that encodes to an id >= vocab_size is refused (it would index past the table), naming `task`
    vocab_size: int | None = Field(default=None, ge=1, le=10_000_001)

    @model_validator(mode="after")
    def _ordered(self) -> DimsModel:
        for small, big in (("action_dim", "max_action_dim"), ("state_dim", "max_state_dim"),
                           ("n_action_steps", "chunk_size")):
            if getattr(self, small) > getattr(self, big):
                raise ValueError(f"{small}: exceeds 'dims.{big}'")
        return self


class CameraModel(_Closed):
    key: Key
    height: int = _dim(8192)
    width: int = _dim(8192)
    channels: Literal[3]  # RGB only


def _unit_range(value: list[float]) -> list[float]:
    if list(value) != [0.0, 1.0]:
        raise ValueError(f"the runtime feeds pixels in [0, 1] (the graph maps them to [-1, 1]); got {value}")
    return value


class ImagePreprocessModel(_Open):
    height: int = _dim(4096)
    width: int = _dim(4096)
    resize: Literal["keep_aspect_pad", "none"]
    pad_side: Literal["left_top", "right_bottom"]
    pad_value: Finite = Field(ge=-1.0, le=1.0)
    # what the runtime implements; optional (older producers omit them), refused when they say otherwise
    input_range: Annotated[list[Finite], Field(min_length=2, max_length=2), AfterValidator(_unit_range)] | None = None
    interpolation: Literal["bilinear"] | None = None


class NormModel(_Closed):
    mode: Literal["mean_std", "min_max", "identity"]
    mean: Vector | None = None
    std: Vector | None = None
    min: Vector | None = None
    max: Vector | None = None
    eps: Finite = Field(default=1e-8, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _complete(self) -> NormModel:
        need = {"mean_std": ("mean", "std"), "min_max": ("min", "max"), "identity": ()}[self.mode]
        for key in need:
            if getattr(self, key) is None:
                raise ValueError(f"{key}: missing required key for mode {self.mode!r}")
        # checked as the runtime computes, in float32: 1e-50 is a std of 0 there, 1 and 1 + 1e-8 are equal, and a
        # span of 6e38 overflows to inf
        f32 = np.float32
        if self.mode == "mean_std" and min(f32(v) for v in self.std) <= 0.0:  # type: ignore[union-attr]
            raise ValueError("std: must be > 0 everywhere in float32 (a zero or negative std inverts or explodes "
                             "actions)")
        if self.mode == "min_max":
            with np.errstate(over="ignore"):
                spans = [f32(hi) - f32(lo) for lo, hi in zip(self.min, self.max)]  # type: ignore[arg-type]
            if not all(np.isfinite(d) and d > 0 for d in spans):
                raise ValueError("max: must exceed 'min' everywhere, by a span float32 can hold")
        return self


class BoundsModel(_Open):
    low: Vector
    high: Vector

    @model_validator(mode="after")
    def _ordered(self) -> BoundsModel:
        if any(lo > hi for lo, hi in zip(self.low, self.high)):
            raise ValueError("low: exceeds 'high'")
        return self


class SafetyModel(_Open):
    stop_action: Vector | None = None


class TokenizerModel(_Closed):
    file: FileName
    max_length: int = _dim(4096)
    pad_token_id: int = Field(ge=0, le=10_000_000)
    padding_side: Literal["right", "left"] = "right"
    append_newline: bool
    truncation: bool = False


class TensorSpecModel(_Closed):
    name: Key
    shape: list[Annotated[int, Field(ge=1, le=1 << 20)]] = Field(min_length=1, max_length=8)
    dtype: Literal["float32", "int64", "bool", "int32", "float16"]

    @model_validator(mode="after")
    def _bounded(self) -> TensorSpecModel:
        n = 1
        for x in self.shape:
            n *= x
        if n > MAX_TENSOR_ELEMENTS:
            raise ValueError(f"shape: {n} elements, more than {MAX_TENSOR_ELEMENTS}")
        return self


class GraphModel(_Open):
    file: FileName
    data_file: FileName | None = None
    inputs: list[TensorSpecModel] = Field(min_length=1, max_length=16)
    outputs: list[TensorSpecModel] = Field(min_length=1, max_length=16)


class GraphsModel(_Closed):
    prefix: GraphModel
    main_expert: GraphModel
    delta_expert: GraphModel
    plan_encoder: GraphModel  # format 3: act-CLS of a (remaining) plan alone, no observation input


class ActClsModel(_Open):
    """Which graph gives the consistency gate its act-CLS (format 3; docs/10-artifact-contract.md)."""

    # seed: delta_expert's act_cls over the current prefix K/V; plan_only: plan_encoder on the remaining plan
    wiring: Literal["seed", "plan_only"]
    # plan_encoder input: the R not-yet-executed rows at the front of `plan`, `plan_valid` = (index < R)
    plan_input: Literal["remaining_rows_front_valid_mask"]


class GateMetricModel(_Open):
    stats: dict[Key, Finite] = Field(default_factory=dict, max_length=64)
    default_threshold: Annotated[float, Field(allow_inf_nan=False, ge=0.0, lt=2.0)] | None = None  # cosine: [0, 2) (from 2 on never fires)
    # optional: calibrated on observation pairs < horizon ticks apart (the ticks a plan runs; absent = n_action_steps)
    horizon: int | None = Field(default=None, ge=2, le=1024)


def _default_gate(spec: str) -> str:
    try:
        return check_default_gate(spec)
    except ValueError as exc:  # the error location already names gate.default
        raise ValueError(str(exc).removeprefix(f"{DEFAULT_GATE_FIELD}: ")) from None


# the pattern is documented in the JSON Schema; the validator checks it too, with a message a person can read
DefaultGate = Annotated[str, AfterValidator(_default_gate), Field(json_schema_extra={"pattern": DEFAULT_GATE_PATTERN})]


class GateModel(_Open):
    # what the thresholds and stats measure: the runtime's gates compute cosine distance only, so thresholds
    # calibrated on another metric would be misread (absent = cosine_distance, what every export writes)
    metric: Literal["cosine_distance"] = "cosine_distance"
    drift: GateMetricModel
    consistency: GateMetricModel
    # optional (format 3 unchanged): the per-tick jump gate's lag-1 calibration; absent = `jump` needs an
    # explicit threshold (exports before it existed)
    jump: GateMetricModel | None = None
    # the gate the export recommends (optional; absent = "drift", the default before it existed): a CLS gate,
    # optionally plan-age capped (`any:drift,interval:6`; grammar in runtime.default_gate). Thresholds come from
    # the calibration above; `EdgePolicy(gate="default")` and every CLI's `--gate default` use it. The cap's
    # range and jump's calibration are cross-section rules (runtime.manifest).
    default: DefaultGate | None = None


class FileRecordModel(_Closed):
    sha256: Sha256Hex
    bytes: int = Field(ge=0, le=1 << 40)


class SignatureModel(_Closed):
    algorithm: Literal["ed25519"]
    key_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
    value: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{86}==$")]  # 64 bytes, base64


class IdentityModel(_Closed):
    digest: Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]
    signature: SignatureModel | None = None
    # per-section hashes at export: only used to name what changed when the digest does not match
    parts: Annotated[dict[Key, Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]],
                     Field(max_length=1024)] | None = None


class RobotCameraModel(_Closed):
    height: int = _dim(8192)
    width: int = _dim(8192)
    channels: Literal[3]  # RGB, as the graphs read it (robot_interface checks the client's cameras against it)


class RobotModel(_Open):
    """Optional: what the robot itself must provide (written by export from a LeRobotDataset)."""

    fps: int = Field(ge=1, le=1000)
    action_names: list[Key] = Field(min_length=1, max_length=MAX_DIM)
    state_names: list[Key] = Field(min_length=1, max_length=MAX_DIM)
    cameras: dict[Key, RobotCameraModel] = Field(min_length=1, max_length=64)


class ManifestModel(_Open):
    format_version: Literal[3]
    dims: DimsModel
    cameras: list[CameraModel] = Field(min_length=1, max_length=64)
    state_key: Key
    image_preprocess: ImagePreprocessModel
    normalization: dict[Key, NormModel] = Field(max_length=64)
    action_bounds: BoundsModel
    state_bounds: BoundsModel
    safety: SafetyModel | None = None
    tokenizer: TokenizerModel
    delta_input: Literal["shift_remaining_repeat_last"]
    graphs: GraphsModel
    act_cls: ActClsModel
    gate: GateModel
    files: dict[FileName, FileRecordModel] = Field(min_length=1, max_length=MAX_FILES)
    identity: IdentityModel
    robot: RobotModel | None = None


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if not isinstance(part, int):  # a key from the file may hold newlines or control characters: escape them
            part = str(part)[:60].encode("unicode_escape").decode("ascii")
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def describe(error: ValidationError, limit: int = 3) -> str:
    """One line: the first few violations, each as `key.path: what was expected` (bounded length)."""
    parts = []
    for e in error.errors(include_url=False)[:limit]:
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and "[" in p))  # drop union-branch tags
        msg = e["msg"].removeprefix("Value error, ")
        field, sep, rest = msg.partition(": ")
        if e["type"] == "value_error" and sep and field.isidentifier():  # a model rule names its field first
            loc, msg = (*loc, field), rest
        value = repr(e.get("input"))
        got = "" if e["type"] == "missing" or len(value) > 60 else f" (got {value})"
        parts.append(f"'{_where(loc) or '<root>'}': {msg}{got}")
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of manifest.json format 3 (what docs/manifest.schema.json holds)."""
    schema = ManifestModel.model_json_schema()
    schema["$id"] = f"smolvla-cls-edge/manifest/{FORMAT_VERSION}"
    return schema


if __name__ == "__main__":
    print(json.dumps(json_schema(), indent=2))
